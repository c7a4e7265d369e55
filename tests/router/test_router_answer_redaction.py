"""An upstream key quoted in a model's own answer (not in an error) reaches neither the client, nor the trace,
nor the next model's prompt, whole or streamed, even when the stream splits the key over several chunks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from moa_stub import Behavior, StubBackend
from router_harness import RouterFactory, make_config

from kubemoe.router.redact import StreamRedactor, redact

KEY = "sk-LEAK-7f3a9c2e5b1d4086aa"
PREFIX = KEY[:7]


def _clean(text: str) -> bool:
    return KEY not in text and PREFIX not in text


def test_a_key_split_at_any_point_is_redacted() -> None:
    text = f"the key is {KEY}, twice: {KEY}!"
    expected = redact(text, [KEY])
    for cut in range(1, len(text)):
        for second in range(cut, len(text)):
            r = StreamRedactor([KEY])
            parts = [r.feed(text[:cut]), r.feed(text[cut:second]), r.feed(text[second:]), r.flush()]
            assert "".join(parts) == expected, (cut, second)
            assert all(_clean(p) for p in parts)


def test_text_without_a_key_prefix_passes_at_once() -> None:
    r = StreamRedactor([KEY])
    assert r.feed("hello world") == "hello world"
    assert r.feed(" and s") == " and "  # "s" might start the key: held until the next chunk
    assert r.feed("o on") == "so on"
    assert r.flush() == ""


def _sse(*pieces: str) -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


async def _post(base: str, body: dict[str, Any]) -> str:
    payload = {"model": "moa-test", "messages": [{"role": "user", "content": "Hi"}], **body}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/chat/completions", json=payload) as resp,
    ):
        assert resp.status == 200
        return (await resp.read()).decode()


async def test_a_key_in_answers_is_redacted_everywhere(
    stub: StubBackend, start_router: RouterFactory, tmp_path: Path
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    stub.behaviors["a"] = Behavior(reply=f"my key is {KEY} ok")
    stub.behaviors["agg"] = Behavior(raw_sse=_sse("final: sk-", "LEAK-7f3a", "9c2e5b1d4086aa", " done"))
    config = make_config(stub.url, [("a",)], agent_extra={"a": {"apiKeyFile": str(key_file)}})
    base = await start_router(config)
    for body in ({}, {"stream": True}, {"moa_trace": True}, {"stream": True, "moa_trace": True}):
        text = await _post(base, body)
        assert _clean(text), (body, text)
        assert "***" in text  # the final answer's key, masked (its exact text: the next test)
        if body.get("moa_trace"):
            assert "my key is *** ok" in text  # the proposer's answer, in the trace, redacted
    # The aggregator's prompt carried the proposer's answer redacted: the key never went to another upstream.
    prompts = [json.dumps(r.body) for r in stub.received if r.model == "agg"]
    assert prompts
    assert all(_clean(p) and "my key is *** ok" in p for p in prompts)


async def test_non_streamed_final_answer_is_whole_and_redacted(
    stub: StubBackend, start_router: RouterFactory, tmp_path: Path
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY)
    stub.behaviors["agg"] = Behavior(raw_sse=_sse("final: sk-", "LEAK-7f3a", "9c2e5b1d4086aa", " done"))
    config = make_config(stub.url, [("a",)], aggregator_extra={"apiKeyFile": str(key_file)})
    base = await start_router(config)
    body = json.loads(await _post(base, {}))
    assert body["choices"][0]["message"]["content"] == "final: *** done"
