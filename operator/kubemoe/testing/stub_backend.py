"""An OpenAI-compatible stand-in backend for the router's tests and demos.

It stands in for an LLM server such as vLLM, which cannot run here (no GPU, no weights). The stub speaks the
same `POST /v1/chat/completions` protocol, JSON and SSE, and each model name gets a scripted `Behavior`:
latency, HTTP 500s, hanging (to exercise timeouts), connection resets, malformed SSE and slow streaming. It
records every request it receives, so tests can assert on the prompts the router built. It also records which
calls were cancelled: it runs with `handler_cancellation=True`, so a call the router abandons shows up here as
a cancelled handler.

Everything listens on 127.0.0.1 with an ephemeral port, unless `start` is given another address (the gateway
e2e test runs it inside a network namespace of its own).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

#: Longest a "hanging" call waits; tests never need more, and it bounds a broken test's runtime.
HANG_SECONDS = 10.0


@dataclass
class Behavior:
    """How the stub answers one model."""

    reply: str | Callable[[dict[str, Any]], str] = "stub answer"
    latency: float = 0.0
    status: int | None = None
    error_message: str = "stub failure"
    #: Quote the request's Authorization header in the error body, like a careless backend would.
    echo_auth_in_error: bool = False
    hang: bool = False
    reset: bool = False
    malformed_sse: bool = False
    #: Stream the first word, then drop the connection.
    reset_mid_stream: bool = False
    chunk_delay: float = 0.0
    #: Answer HTTP 200 with exactly these bytes as application/json, even when asked to stream (a 200 with an
    #: error, a body that is not JSON).
    raw_body: bytes | None = None
    #: Streaming: after the role chunk and `raw_sse_after_words` words of content, write these bytes as they
    #: are (a malformed `data:` line, a mid-stream error event), then end the stream, or reset it with
    #: `reset_after_raw`.
    raw_sse: bytes | None = None
    raw_sse_after_words: int = 0
    reset_after_raw: bool = False
    #: Streaming: after this many words, stop sending chunks but keep the connection busy with an SSE comment
    #: every `keepalive_every` seconds (so only an idle timeout that ignores comments can end it).
    stall_after_words: int | None = None
    keepalive_every: float = 0.05
    #: Streaming: report cumulative usage on every chunk (vLLM's `continuous_usage_stats`).
    usage_every_chunk: bool = False
    prompt_tokens: int = 11
    completion_tokens: int = 7


@dataclass
class Received:
    model: str
    body: dict[str, Any]
    authorization: str | None
    at: float

    @property
    def system_prompt(self) -> str:
        msgs = self.body["messages"]
        return str(msgs[0]["content"]) if msgs and msgs[0]["role"] == "system" else ""


@dataclass
class StubBackend:
    """One stub server; `behaviors` is keyed by the `model` field of the request."""

    behaviors: dict[str, Behavior] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    #: Calls being answered now, and the most at any one time (shows whether a pool queued them).
    in_flight: int = 0
    peak_in_flight: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Listen (over TLS with `ssl_context`: the URL is then https://) and return the base URL."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"{'https' if ssl_context else 'http'}://{host}:{port}/v1"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def calls(self, model: str) -> list[Received]:
        return [r for r in self.received if r.model == model]

    async def wait_cancelled(self, model: str, timeout: float = 2.0) -> bool:
        """Whether the stub saw `model`'s call cancelled within `timeout` (cancellation is asynchronous)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if model in self.cancelled:
                return True
            await asyncio.sleep(0.01)
        return model in self.cancelled

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        self.received.append(Received(model, body, request.headers.get("Authorization"), time.monotonic()))
        b = self.behaviors.get(model, Behavior())
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            resp = await self._answer(request, body, b)
        except asyncio.CancelledError:
            self.cancelled.append(model)
            raise
        finally:
            self.in_flight -= 1
        self.completed.append(model)
        return resp

    async def _answer(self, request: web.Request, body: dict[str, Any], b: Behavior) -> web.StreamResponse:
        if b.latency:
            await asyncio.sleep(b.latency)
        if b.hang:
            await asyncio.sleep(HANG_SECONDS)
        if b.reset:
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(HANG_SECONDS)  # cancelled as the connection drops
        if b.status is not None:
            message = b.error_message
            if b.echo_auth_in_error:
                message += f" (got Authorization: {request.headers.get('Authorization')})"
            err = {"message": message, "type": "server_error", "param": None, "code": None}
            return web.json_response({"error": err}, status=b.status)
        if b.raw_body is not None:  # streaming or not, as a backend that ignores `stream` would
            return web.Response(body=b.raw_body, content_type="application/json")
        text = b.reply(body) if callable(b.reply) else b.reply
        usage = {
            "prompt_tokens": b.prompt_tokens,
            "completion_tokens": b.completion_tokens,
            "total_tokens": b.prompt_tokens + b.completion_tokens,
        }
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "stub",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        return await self._stream(request, body, b, text, usage)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], b: Behavior, text: str, usage: dict[str, int]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
            data = {
                "id": "stub",
                "object": "chat.completion.chunk",
                "model": body["model"],
                "choices": choices,
            }
            return f"data: {json.dumps({**data, **extra})}\n\n".encode()

        await resp.write(chunk({"role": "assistant", "content": ""}))
        if b.malformed_sse:
            await resp.write(b"data: {this is not json\n\n")
            await resp.write_eof()
            return resp
        words = text.split(" ")
        if b.raw_sse is not None:
            for i, word in enumerate(words[: b.raw_sse_after_words]):
                await resp.write(chunk({"content": word if i == 0 else " " + word}))
            await resp.write(b.raw_sse)
            if b.reset_after_raw:
                assert request.transport is not None
                request.transport.abort()
                await asyncio.sleep(HANG_SECONDS)
            await resp.write_eof()
            return resp
        for i, word in enumerate(words):
            if b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            so_far = {
                "prompt_tokens": b.prompt_tokens,
                "completion_tokens": i + 1,
                "total_tokens": b.prompt_tokens + i + 1,
            }
            extra: dict[str, Any] = {"usage": so_far} if b.usage_every_chunk else {}
            await resp.write(chunk({"content": word if i == 0 else " " + word}, **extra))
            if b.stall_after_words is not None and i + 1 >= b.stall_after_words:
                stalled_until = time.monotonic() + HANG_SECONDS
                while time.monotonic() < stalled_until:
                    await asyncio.sleep(b.keepalive_every)
                    await resp.write(b": keep-alive\n\n")
            if b.reset_mid_stream:
                assert request.transport is not None
                request.transport.abort()
                await asyncio.sleep(HANG_SECONDS)
        await resp.write(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(chunk(None, usage=usage))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
