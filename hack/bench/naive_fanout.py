"""The baseline the router is measured against: a naive Mixture-of-Agents fan-out on the same aiohttp stack.

POST /v1/chat/completions: `asyncio.gather` the proposers (non-streaming), then stream the aggregator and answer
one chat.completion. No validation, templates, trace, limits, deadlines, auth or metrics: the floor of what an
MoA server on aiohttp costs. `python hack/bench/naive_fanout.py --port P --backend URL --proposers 3`.
"""

import argparse
import asyncio
import json
from collections.abc import AsyncIterator

from aiohttp import ClientSession, TCPConnector, web


async def chat(request: web.Request) -> web.Response:
    body, http, args = await request.json(), request.app["http"], request.app["args"]
    url = f"{args.backend}/chat/completions"

    async def propose(i: int) -> str:
        payload = {"model": f"p{i}", "messages": body["messages"], "stream": False}
        async with http.post(url, json=payload) as resp:
            return str((await resp.json())["choices"][0]["message"]["content"])

    answers = await asyncio.gather(*(propose(i) for i in range(args.proposers)))
    system = {"role": "system", "content": "Synthesize:\n" + "\n".join(answers)}
    payload = {"model": "agg", "messages": [system, *body["messages"]], "stream": True}
    parts: list[str] = []
    async with http.post(url, json=payload) as resp:
        async for line in resp.content:
            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                choices = json.loads(line[6:])["choices"]
                parts.append((choices[0]["delta"].get("content") or "") if choices else "")
    message = {"role": "assistant", "content": "".join(parts)}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return web.json_response({"object": "chat.completion", "model": body["model"], "choices": [choice]})


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    async with ClientSession(connector=TCPConnector(limit=0)) as app["http"]:
        yield


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="base URL up to /v1")
    parser.add_argument("--proposers", type=int, default=3)
    app = web.Application()
    app["args"] = parser.parse_args()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=app["args"].port, print=None, access_log=None)
