"""Stand-in LLM servers and peer processes for the decentralised MoA tests and the stability benchmark.

A stand-in speaks `POST /v1/chat/completions` (JSON and SSE) like vLLM, which cannot run here (no GPU, no
weights). Each model name it serves takes `service_time` seconds per call; with `serial=True` it serves one
call at a time, so calls queue exactly like the single-server queue of the stability condition. It keeps
the time integral of its queue length (waiting + in service) to report the mean.

Everything listens on 127.0.0.1 with ephemeral ports.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from kubemoe.peer.config import PeerConfig
from kubemoe.peer.server import build_app


@dataclass
class QueueStats:
    """Time-weighted queue length of one model: integral of n(t) dt over the observed span."""

    length: int = 0
    area: float = 0.0
    since: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)
    peak: int = 0
    calls: int = 0
    #: Seconds spent serving (the service time actually achieved, event-loop lag included).
    busy: float = 0.0
    served: int = 0
    #: Seconds answers were late against the schedule (event-loop lag): the run's timing noise.
    lag: float = 0.0

    def _advance(self) -> None:
        now = time.monotonic()
        self.area += self.length * (now - self.last)
        self.last = now

    def change(self, delta: int) -> None:
        self._advance()
        self.length += delta
        self.peak = max(self.peak, self.length)

    def reset(self) -> None:
        self._advance()
        self.area, self.since, self.peak = 0.0, self.last, self.length
        self.busy, self.calls, self.served, self.lag = 0.0, 0, 0, 0.0

    def mean(self) -> float:
        self._advance()
        span = self.last - self.since
        return self.area / span if span > 0 else 0.0


@dataclass
class StandIn:
    """One stand-in server for many model names; `reply(model, body)` makes the answer text."""

    service_time: float = 0.0
    serial: bool = False
    reply: Callable[[str, dict[str, Any]], str] = lambda model, body: f"{model} says hi"
    url: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    down: set[str] = field(default_factory=set)
    queues: dict[str, QueueStats] = field(default_factory=dict)
    _free_at: dict[str, float] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/v1"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def count(self, model: str) -> int:
        return sum(1 for m, _ in self.calls if m == model)

    async def _serve(self, model: str) -> None:
        if self.service_time:
            start = time.monotonic()
            await asyncio.sleep(self.service_time)
            self.queues[model].busy += time.monotonic() - start
            self.queues[model].served += 1

    async def _serve_serial(self, model: str) -> None:
        """One call at a time on a fixed schedule: done at max(arrival, previous done) + service_time.

        The schedule, not `sleep` after `sleep`, sets the pace, so event-loop lag on a loaded machine
        delays answers (recorded as `lag`) without slowing the server down.
        """
        q = self.queues[model]
        now = time.monotonic()
        done = max(now, self._free_at.get(model, 0.0)) + self.service_time
        self._free_at[model] = done
        await asyncio.sleep(max(0.0, done - time.monotonic()))
        q.busy += self.service_time
        q.served += 1
        q.lag += max(0.0, time.monotonic() - done)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body["model"])
        self.calls.append((model, body))
        if model in self.down:
            return web.json_response({"error": {"message": f"{model} is down"}}, status=503)
        queue = self.queues.setdefault(model, QueueStats())
        queue.change(+1)
        queue.calls += 1
        try:
            if self.serial:
                await self._serve_serial(model)
            else:
                await self._serve(model)
        finally:
            queue.change(-1)
        text = self.reply(model, body)
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "standin",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
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
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = {"id": "standin", "object": "chat.completion.chunk", "model": model, "choices": choices}
            return f"data: {json.dumps({**data, **extra})}\n\n".encode()

        for i, word in enumerate(text.split(" ")):
            piece = word if i == 0 else " " + word
            await resp.write(chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}]))
        await resp.write(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        await resp.write(chunk([], usage=usage))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@dataclass
class PeerProcess:
    """A peer on its own loopback socket: an app in this process, or a `kubemoe peer` child process."""

    name: str
    runner: web.AppRunner | None
    url: str
    process: asyncio.subprocess.Process | None = None

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL the child process: its open connections drop, nothing is finished gracefully."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()


async def _spawn(name: str, config: PeerConfig, port: int, workdir: Path) -> PeerProcess:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config.to_file_dict()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubemoe.peer",
        "--config",
        str(path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):  # bounded: 10 s
            try:
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return PeerProcess(name, None, url, proc)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"peer {name} did not become ready")


def bound_socket() -> socket.socket:
    """A listening loopback socket on an ephemeral port, kept open so no other socket can take the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


async def start_peers(
    backend_url: str,
    names: list[str],
    *,
    topology: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    seed: int = 7,
    processes: tuple[str, ...] = (),
    workdir: Path | None = None,
) -> list[PeerProcess]:
    """One peer per name, each fronting model `name` on `backend_url`, all knowing each other.

    Names in `processes` run as `python -m kubemoe.peer` child processes (config files in `workdir`).
    """
    socks = [bound_socket() for _ in names]
    ports = [int(s.getsockname()[1]) for s in socks]
    urls = {n: f"http://127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)}
    peers: list[PeerProcess] = []
    for i, (name, sock) in enumerate(zip(names, socks, strict=True)):
        ring = names[i + 1 :] + names[:i]  # ring order after this peer, as render.peers writes it
        config = PeerConfig.model_validate(
            {
                "pipeline": "moa-peers",
                "model": {"name": name, "url": backend_url, "model": name, "maxTokens": 64},
                "peers": [{"name": n, "url": urls[n]} for n in ring],
                "topology": {"mode": "decentralised", **(topology or {})},
                "policy": policy or {"layerTimeoutSeconds": 5},
                "seed": seed + i,
                "auth": {"enabled": False},  # tests that check keys pass their own `auth` in `extra`
                **(extra or {}),
            }
        )
        if name in processes:
            assert workdir is not None
            # The child binds the port itself; released just before it starts (SO_REUSEADDR on both sides).
            port = int(sock.getsockname()[1])
            sock.close()
            peers.append(await _spawn(name, config, port, workdir))
            continue
        runner = web.AppRunner(build_app(config), handler_cancellation=True, shutdown_timeout=0.2)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        peers.append(PeerProcess(name, runner, urls[name]))
    return peers
