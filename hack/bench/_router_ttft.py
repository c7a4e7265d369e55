"""The router benchmark's time to first token: streamed requests through the router against the critical path.

TTFT is the time from sending the request to the first non-empty content delta at the client. Through the
router: one `"stream": true` chat completion. The critical path, made directly by the load generator: one
proposer call (read whole), then the aggregator's streamed call, to its first content token; the same SSE
reading on both sides, and both read their stream to the end (the connection is then reused).

The aggregator's backend streams for real (`_router_backend` with a gap): its first content token comes
20 ms after the request and the rest `GAP_S` later, so a router that buffered the aggregator's stream instead
of forwarding its first token would be `GAP_S` late, far past the CI bound. Measured at concurrency 1, in the
same interleaved rounds as `_router_latency` (`_router_load.interleaved`).

Goal: TTFT overhead p50 <= 2 ms, as the latency overhead's at concurrency 1: before its first token the
router does the same work as for a whole answer (admission, the proposers, the aggregator's prompt) less the
tail, which here is forwarded one chunk per token. The router issue measured "TTFT through it +7 ms" before.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from hack.bench._figures import figure
from hack.bench._router_load import (
    MESSAGES,
    Call,
    backend_process,
    interleaved,
    router_config,
    router_process,
)
from hack.bench.common import Figure

CONCURRENCY = 1
#: Seconds between the aggregator's first content token and the rest of its stream.
GAP_S = 0.02
ROUTER, CRITICAL = "router", "critical path"
GOAL_MS = 2.0
#: CI bound on the p50 overhead: generous for a shared machine, under the gap a buffering router would add.
BOUND_MS = 15.0


def sizes(quick: bool) -> tuple[int, int]:
    """(rounds, requests per round and subject): about 60 ms a request at concurrency 1."""
    return (4, 8) if quick else (10, 12)


def first_content(line: bytes) -> bool:
    """Whether an SSE line is a chunk with a non-empty content delta."""
    if not line.startswith(b"data: ") or line[6:].strip() == b"[DONE]":
        return False
    choices = json.loads(line[6:]).get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


async def _stream(resp: aiohttp.ClientResponse, t0: float) -> float | None:
    """TTFT (s) of a streamed answer, read to its end; None without a content token or on a non-200."""
    at: float | None = None
    async for line in resp.content:
        if first_content(line):
            at = time.perf_counter() - t0
            break
    await resp.read()
    return at if resp.status == 200 else None


def router_call(url: str) -> Call:
    target = f"{url}/v1/chat/completions"
    payload = {"model": "bench", "messages": MESSAGES, "stream": True}

    async def call(http: aiohttp.ClientSession) -> bool | float:
        t0 = time.perf_counter()
        async with http.post(target, json=payload) as resp:
            ttft = await _stream(resp, t0)
        return False if ttft is None else ttft

    return call


def critical_call(backend: str, aggregator: str) -> Call:
    proposer = {"model": "p0", "messages": MESSAGES}
    streamed = {"model": "agg", "messages": MESSAGES, "stream": True}

    async def call(http: aiohttp.ClientSession) -> bool | float:
        t0 = time.perf_counter()
        async with http.post(f"{backend}/chat/completions", json=proposer) as r:
            await r.read()
            ok = r.status == 200
        async with http.post(f"{aggregator}/chat/completions", json=streamed) as r:
            ttft = await _stream(r, t0)
        return False if ttft is None or not ok else ttft

    return call


def measure(backend: str, quick: bool, tmp: Path) -> dict[str, Any]:
    """A streaming backend for the aggregator and a router in front of it and `backend` (the proposers')."""
    rounds, per_round = sizes(quick)
    with (
        backend_process(0.02, GAP_S) as (aggregator, _),
        router_process(router_config(backend, aggregator=aggregator), tmp / "router-ttft.json") as (url, _),
    ):
        calls = {CRITICAL: critical_call(backend, aggregator), ROUTER: router_call(url)}
        out = interleaved(calls, concurrency=CONCURRENCY, rounds=rounds, per_round=per_round)
    return out | {"gap_s": GAP_S, "concurrency": CONCURRENCY}


def figures(subject: str, raw: dict[str, Any]) -> list[Figure]:
    router, crit, conc = raw[ROUTER], raw[CRITICAL], raw["concurrency"]
    at = f"at concurrency {conc}"
    out = [
        figure(
            subject,
            f"TTFT overhead over the critical path's, p50 {at}",
            round(router["p50_ms"] - crit["p50_ms"], 2),
            "ms",
            goal=("<=", GOAL_MS),
            bound=("<=", BOUND_MS),
        ),
        figure(
            subject,
            f"TTFT overhead over the critical path's, p99 {at}",
            round(router["p99_ms"] - crit["p99_ms"], 2),
            "ms",
        ),
    ]
    for name, label in ((ROUTER, "TTFT through the router"), (CRITICAL, "critical path TTFT")):
        out += [
            figure(subject, f"{label}, {q} {at}", round(raw[name][f"{q}_ms"], 2), "ms")
            for q in ("p50", "p99")
        ]
        out.append(
            figure(
                subject,
                f"{label}: failures {at}",
                raw[name]["failures"],
                goal=("==", 0),
                bound=("==", 0),
            )
        )
    return out
