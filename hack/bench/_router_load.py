"""The router benchmark's plumbing: free ports, processes and their CPU (/proc), and closed-loop load.

Load is closed-loop: `concurrency` workers, each sending its next request when the last one is answered, so
by Little's law the mean latency is `concurrency / throughput`; at a concurrency the machine cannot serve at
the unloaded latency, latency is the queue, whatever the server.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "What is a Mixture of Agents?"}]
_TICKS = os.sysconf("SC_CLK_TCK")

#: One exchange on a session; True if it succeeded.
Call = Callable[[aiohttp.ClientSession], Awaitable[bool]]


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
) -> tuple[list[float], int, float]:
    """`requests` calls at `concurrency` on one session, after `warmup` unmeasured ones on the same session
    (its connections, and the server's upstream pool, are then open); latencies of the successes, the count
    of failures, and the measured wall time (`done_at`, if given, gets every answer's perf_counter time)."""
    latencies: list[float] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def phase(count: int, record: bool) -> None:
            nonlocal failures
            sent = 0
            stop_at = time.monotonic() + timeout_s

            async def worker() -> None:
                nonlocal sent, failures
                while sent < count and time.monotonic() < stop_at:
                    sent += 1
                    t0 = time.perf_counter()
                    ok = await call(http)
                    if not record:
                        continue
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        failures += 1
                    if done_at is not None:
                        done_at.append(time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(concurrency)))

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
