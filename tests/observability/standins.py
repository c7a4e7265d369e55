"""Stand-ins that Prometheus scrapes over loopback: a vLLM 0.33 metrics endpoint and an OpenAI-compatible stub.

`VllmStandin` exports the series vLLM 0.33's V1 engine exports (names and types from vllm/v1/metrics/loggers.py,
as listed in shared/reference/tech-facts.md section 2: gauges, `_total` counters, histograms with `_bucket`),
labelled `model_name` and `engine` as vLLM labels them. The test sets the gauges and the request shape; a ticker
records one finished request per tick with that shape, so the counters and histograms move like a server's.

`OpenAIStub` answers `POST /v1/chat/completions` for the router with per-model latency, status or a hang.

Both run on an event loop in a background thread (`LoopThread`), so the tests that read Prometheus stay
synchronous while the servers keep answering scrapes. Everything listens on 127.0.0.1, ephemeral ports.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

T = TypeVar("T")

# vLLM's own bucket boundaries (loggers.py); the alerts only need boundaries around their thresholds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TICK_SECONDS = 0.25


class LoopThread:
    """An asyncio loop in a daemon thread; `run()` executes a coroutine there and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


async def _serve(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, int(runner.addresses[0][1])


@dataclass
class RequestShape:
    """What each finished request of the ticker looks like."""

    e2e_seconds: float = 2.0
    ttft_seconds: float = 0.2
    prompt_tokens: int = 200
    generation_tokens: int = 100


class VllmStandin:
    """One model server's /metrics with vLLM 0.33's metric names; values set by the test."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.shape = RequestShape()
        r = self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name", "engine"]
        self.running = Gauge("vllm:num_requests_running", "Running requests.", labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Waiting requests.", labels, registry=r)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = 100%.", labels, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens.", labels, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens.", labels, registry=r)
        self.preemptions = Counter("vllm:num_preemptions", "Preemptions.", labels, registry=r)
        self.prefix_queries = Counter(
            "vllm:prefix_cache_queries", "Prefix-cache queries.", labels, registry=r
        )
        self.prefix_hits = Counter("vllm:prefix_cache_hits", "Prefix-cache hits.", labels, registry=r)
        self.success = Counter(
            "vllm:request_success", "Finished requests.", [*labels, "finished_reason"], registry=r
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "TTFT.", labels, buckets=TTFT_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "ITL.", labels, buckets=ITL_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "E2E latency.", labels, buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds", "Queue time.", labels, buckets=LATENCY_BUCKETS, registry=r
        )
        self.set_load(kv_usage=0.3, waiting=0, running=4)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None

    def set_load(self, *, kv_usage: float, waiting: int, running: int = 4) -> None:
        lv = {"model_name": self.model_name, "engine": "0"}
        self.kv_usage.labels(**lv).set(kv_usage)
        self.waiting.labels(**lv).set(waiting)
        self.running.labels(**lv).set(running)

    def _finish_one(self) -> None:
        s, lv = self.shape, {"model_name": self.model_name, "engine": "0"}
        self.ttft.labels(**lv).observe(s.ttft_seconds)
        self.e2e.labels(**lv).observe(s.e2e_seconds)
        self.itl.labels(**lv).observe(max(0.01, (s.e2e_seconds - s.ttft_seconds) / s.generation_tokens))
        self.queue_time.labels(**lv).observe(s.ttft_seconds / 2)
        self.prompt_tokens.labels(**lv).inc(s.prompt_tokens)
        self.generation_tokens.labels(**lv).inc(s.generation_tokens)
        self.prefix_queries.labels(**lv).inc(s.prompt_tokens)
        self.prefix_hits.labels(**lv).inc(s.prompt_tokens // 2)
        self.preemptions.labels(**lv).inc(0)
        self.success.labels(**lv, finished_reason="stop").inc()

    async def _tick(self) -> None:
        while True:
            self._finish_one()
            await asyncio.sleep(TICK_SECONDS)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def start(self) -> int:
        """Serve /metrics (on the previous port when restarted) and start the request ticker."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner, self.port = await _serve(app, self.port)
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return self.port

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class Reply:
    latency: float = 0.0
    #: Answer with this status every `fail_every`-th call (1: always).
    status: int | None = None
    fail_every: int = 1
    hang: bool = False
    calls: int = 0


@dataclass
class OpenAIStub:
    """`POST /v1/chat/completions`; `replies` is keyed by the request's model."""

    replies: dict[str, Reply] = field(default_factory=dict)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply = self.replies.get(body["model"], Reply())
        reply.calls += 1
        await asyncio.sleep(reply.latency + (10.0 if reply.hang else 0.0))
        if reply.status is not None and reply.calls % reply.fail_every == 0:
            err = {"message": "stand-in failure", "type": "server_error", "param": None, "code": None}
            return web.json_response({"error": err}, status=reply.status)
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        text = f"answer from {body['model']}"
        if body.get("stream"):
            return await self._stream(request, body["model"], text, usage)
        message = {"role": "assistant", "content": text}
        return web.json_response(
            {
                "id": "stub",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
        )

    @staticmethod
    async def _stream(
        request: web.Request, model: str, text: str, usage: dict[str, int]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "stub", "object": "chat.completion.chunk", "model": model}
        for delta, finish in (
            ({"role": "assistant", "content": ""}, None),
            ({"content": text}, None),
            ({}, "stop"),
        ):
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            await resp.write(f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode())
        await resp.write(f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def start(self) -> int:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner, self.port = await _serve(app)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
