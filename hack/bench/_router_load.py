"""The router benchmark's plumbing: free ports, processes and their CPU (/proc), and closed-loop load.

Load is closed-loop: `concurrency` workers, each sending its next request when the last one is answered, so
by Little's law the mean latency is `concurrency / throughput`; at a concurrency the machine cannot serve at
the unloaded latency, latency is the queue, whatever the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
#: Proposers of the benchmark's pipeline (`router_config`), and of the baseline.
PROPOSERS = 3
MESSAGES = [{"role": "user", "content": "What is a Mixture of Agents?"}]
_TICKS = os.sysconf("SC_CLK_TCK")

#: One exchange on a session: True if it succeeded (its sample is then its latency), False if it failed, or
#: the sample it measured itself in seconds (a time to first token).
Call = Callable[[aiohttp.ClientSession], Awaitable[bool | float]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [c for child in children for c in (int(child), *descendants(int(child)))]


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its live descendants (the router's workers)."""
    total = 0.0
    for p in (pid, *descendants(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (TcpExt ListenOverflows):
    each one costs its client a 1 s SYN retransmit. Counted for this network namespace, neighbours included."""
    rows = [
        line.split()
        for line in Path("/proc/net/netstat").read_text().splitlines()
        if line.startswith("TcpExt:")
    ]
    return int(rows[1][rows[0].index("ListenOverflows")]) if len(rows) == 2 else 0


@contextmanager
def process(argv: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[:4]} exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"{argv[:4]} did not listen on {port} within 30 s")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chat_call(url: str) -> Call:
    """One non-streaming chat completion through the server at `url`."""
    target = f"{url}/v1/chat/completions"
    payload = {"model": "bench", "messages": MESSAGES}

    async def call(http: aiohttp.ClientSession) -> bool:
        async with http.post(target, json=payload) as resp:
            await resp.read()
            return resp.status == 200

    return call


def critical_call(backend: str) -> Call:
    """One proposer call, then the aggregator's stream, made directly: what no MoA server can beat."""
    target = f"{backend}/chat/completions"
    proposer = {"model": "p0", "messages": MESSAGES}
    aggregator = {"model": "agg", "messages": MESSAGES, "stream": True}

    async def call(http: aiohttp.ClientSession) -> bool:
        async with http.post(target, json=proposer) as r:
            await r.read()
            ok = r.status == 200
        async with http.post(target, json=aggregator) as r:
            await r.read()
            return ok and r.status == 200

    return call


async def drive(
    call: Call,
    *,
    concurrency: int,
    requests: int,
    timeout_s: float,
    warmup: int = 0,
    done_at: list[float] | None = None,
    stagger_s: float = 0.0,
) -> tuple[list[float], int, float]:
    """`requests` calls at `concurrency` on one session, after `warmup` unmeasured ones on the same session
    (its connections, and the server's upstream pool, are then open); latencies of the successes, the count
    of failures, and the measured wall time (`done_at`, if given, gets every answer's perf_counter time).

    With `stagger_s`, worker k starts k x `stagger_s` after the first in each phase: requests that all take
    the same time would otherwise stay in lockstep (all in the server at once, then none), a convoy that
    measures how the batch queues for the CPU rather than what one request costs."""
    latencies: list[float] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def phase(count: int, record: bool) -> None:
            nonlocal failures
            sent = 0
            stop_at = time.monotonic() + timeout_s

            async def worker(k: int) -> None:
                nonlocal sent, failures
                if stagger_s:
                    await asyncio.sleep(k * stagger_s)
                while sent < count and time.monotonic() < stop_at:
                    sent += 1
                    t0 = time.perf_counter()
                    ok = await call(http)
                    if not record:
                        continue
                    if ok is False:
                        failures += 1
                    else:
                        latencies.append(time.perf_counter() - t0 if ok is True else ok)
                    if done_at is not None:
                        done_at.append(time.perf_counter())

            await asyncio.gather(*(worker(k) for k in range(concurrency)))

        if warmup:
            await phase(warmup, record=False)
        start = time.perf_counter()
        await phase(requests, record=True)
        wall = time.perf_counter() - start
    return latencies, failures, wall


async def load(
    url: str, *, concurrency: int, requests: int, timeout_s: float, done_at: list[float] | None = None
) -> tuple[list[float], int, float]:
    """Chat completions through the server at `url` (see `drive`)."""
    return await drive(
        chat_call(url), concurrency=concurrency, requests=requests, timeout_s=timeout_s, done_at=done_at
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summary(samples: list[float], failures: int) -> dict[str, Any]:
    """Count, failures and p50/p99/max in ms of `samples` (seconds)."""
    return {
        "n": len(samples),
        "failures": failures,
        "p50_ms": 1000 * pct(samples, 0.5),
        "p99_ms": 1000 * pct(samples, 0.99),
        "max_ms": 1000 * max(samples, default=float("nan")),
    }


def interleaved(
    calls: dict[str, Call], *, concurrency: int, rounds: int, per_round: int, stagger_s: float = 0.0
) -> dict[str, dict[str, Any]]:
    """`rounds` batches of `per_round` calls of each kind at `concurrency`, in alternating order (the load of a
    shared machine drifts: each kind sees the same), each batch after a warm-up of `concurrency` calls on its
    session (`stagger_s`: see `drive`); the `summary` of each kind."""
    acc: dict[str, tuple[list[float], list[int]]] = {name: ([], []) for name in calls}
    for i in range(rounds):
        for name in list(calls) if i % 2 == 0 else list(calls)[::-1]:
            lat, failures, _ = asyncio.run(
                drive(
                    calls[name],
                    concurrency=concurrency,
                    requests=per_round,
                    timeout_s=120,
                    warmup=concurrency,
                    stagger_s=stagger_s,
                )
            )
            acc[name][0].extend(lat)
            acc[name][1].append(failures)
    return {name: summary(lat, sum(failed)) for name, (lat, failed) in acc.items()}


@contextmanager
def timed(seconds: dict[str, float], part: str) -> Iterator[None]:
    """Adds the wall time of the block to `seconds[part]` (how long each part of a benchmark took)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[part] = round(seconds.get(part, 0.0) + time.perf_counter() - t0, 1)


@contextmanager
def backend_process(delay: float, gap: float = 0.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The stand-in backend (`_router_backend`) in its own process: its base URL (up to /v1) and process."""
    port = free_port()
    argv = ["-m", "hack.bench.router", "--backend", str(port), f"{delay:g}", f"{gap:g}"]
    with process([sys.executable, *argv], port) as proc:
        yield f"http://127.0.0.1:{port}/v1", proc


@contextmanager
def router_process(
    config: dict[str, Any],
    path: Path,
    *,
    module: Sequence[str] = ("kubemoe.router",),
    extra: Sequence[str] = (),
) -> Iterator[tuple[str, int]]:
    """`kubemoe router` (or `module`, which takes its arguments) serving `config`, written to `path`: its URL
    and pid."""
    path.write_text(json.dumps(config))
    port = free_port()
    argv = [sys.executable, "-m", *module, "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    with process([*argv, "--log-level", "WARNING", *extra], port) as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


def memory_run(url: str, pid: int, requests: int) -> dict[str, Any]:
    """RSS every `requests / 40` requests at concurrency 64; slope over the second half (KiB per 10k)."""
    step = max(50, requests // 40)
    samples: list[tuple[int, int]] = [(0, rss_kib(pid))]
    done = 0
    failures = 0
    while done < requests:
        latencies, failed, _ = asyncio.run(load(url, concurrency=64, requests=step, timeout_s=120))
        done += len(latencies) + failed
        failures += failed
        samples.append((done, rss_kib(pid)))
    tail = samples[len(samples) // 2 :]
    n = len(tail)
    mean_x = sum(x for x, _ in tail) / n
    mean_y = sum(y for _, y in tail) / n
    var = sum((x - mean_x) ** 2 for x, _ in tail) or 1.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in tail) / var
    return {
        "requests": done,
        "failures": failures,
        "samples": samples,
        "slope_kib_per_10k": slope * 10_000,
        "second_half_growth_kib": tail[-1][1] - tail[0][1],
        "rss_first_kib": samples[0][1],
        "rss_last_kib": samples[-1][1],
    }


def router_config(
    backend: str, *, aggregator: str | None = None, proposers: Sequence[str] = (), **extra: Any
) -> dict[str, Any]:
    """The benchmark's pipeline: `PROPOSERS` proposers at `backend` (or one at each of `proposers`), the
    aggregator at `aggregator` (default: `backend`), client auth off (the baseline has none); `extra` adds
    top-level fields (a `policy`)."""
    urls = list(proposers) or [backend] * PROPOSERS
    agents = [{"name": f"p{i}", "model": f"p{i}", "url": url, "maxTokens": 64} for i, url in enumerate(urls)]
    return {
        "name": "bench",
        "layers": [{"agents": agents}],
        "aggregator": {"name": "agg", "model": "agg", "url": aggregator or backend, "maxTokens": 64},
        "auth": {"enabled": False},
        **extra,
    }
