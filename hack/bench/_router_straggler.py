"""The router benchmark's straggler: one proposer's backend stalls, and the layer deadline cuts it off.

A router whose pipeline has 3 proposers, two at the 20 ms stand-in backend and one at a backend that answers
after `STALL_S` (5 s), far past the layer deadline `policy.layerTimeoutSeconds` = `DEADLINE_S` (100 ms); the
aggregator at the 20 ms backend. Every request then waits for the deadline (no quorum is set: the layer waits
for all its agents, or the deadline), cancels the straggler's call and runs the aggregator with the two
answers it has. So no router can answer sooner than the deadline plus the aggregator's own latency, which the
load generator measures directly (its streamed call, read to the end) in the same interleaved rounds at the
same concurrency (`CONCURRENCY`, 8: enough requests for a p99 in seconds, little CPU queueing on 2 cores),
the workers' starts staggered over one request's time (`STAGGER_S`).

Figure: router p99 minus (deadline + the aggregator's p99), goal <= 10 ms, the router issue's p99 overhead
goal over the critical path: here the deadline stands in for the proposers' call, and the router's work is
the same plus a timer and a cancelled call. The router's own count of layer deadlines (/metrics) must be one
per request: each was cut off by the deadline, not answered by the straggler.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from hack.bench._figures import figure
from hack.bench._router_load import (
    MESSAGES,
    PROPOSERS,
    Call,
    backend_process,
    chat_call,
    interleaved,
    router_config,
    router_process,
)
from hack.bench.common import Figure

CONCURRENCY = 8
DEADLINE_S = 0.1
STALL_S = 5.0
#: The load generator's workers start this far apart, a router request's time over the concurrency: requests
#: that all take the deadline would otherwise run in lockstep, each waiting for the CPU of the other 7.
STAGGER_S = (DEADLINE_S + 0.02) / CONCURRENCY
ROUTER, AGGREGATOR = "router", "aggregator alone"
GOAL_MS = 10.0
#: CI bound: generous for a shared machine, and far under the straggler (a router that waited for it).
BOUND_MS = 100.0
DEADLINES_METRIC = "kubemoe_router_layer_deadlines_total"


def sizes(quick: bool) -> tuple[int, int]:
    """(rounds, requests per round and subject): about 125 ms a request through the router."""
    return (3, 24) if quick else (6, 60)


def aggregator_call(backend: str) -> Call:
    """The aggregator's own call: streamed, read to its end."""
    target = f"{backend}/chat/completions"
    payload = {"model": "agg", "messages": MESSAGES, "stream": True}

    async def call(http: aiohttp.ClientSession) -> bool:
        async with http.post(target, json=payload) as r:
            await r.read()
            return r.status == 200

    return call


def metric_total(text: str, name: str) -> float:
    """The sum of a counter's samples over all its labels in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def measure(backend: str, quick: bool, tmp: Path) -> dict[str, Any]:
    """The stalling backend and the router with the deadline, against the aggregator's call at `backend`."""
    rounds, per_round = sizes(quick)
    with backend_process(STALL_S) as (stall, _):
        config = router_config(
            backend,
            proposers=[backend] * (PROPOSERS - 1) + [stall],
            policy={"layerTimeoutSeconds": DEADLINE_S},
        )
        with router_process(config, tmp / "router-straggler.json") as (url, _):
            calls = {AGGREGATOR: aggregator_call(backend), ROUTER: chat_call(url)}
            out = interleaved(
                calls, concurrency=CONCURRENCY, rounds=rounds, per_round=per_round, stagger_s=STAGGER_S
            )
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
                deadlines = metric_total(resp.read().decode(), DEADLINES_METRIC)
    sent = rounds * (per_round + CONCURRENCY)  # the warm-ups too
    return out | {
        "concurrency": CONCURRENCY,
        "deadline_s": DEADLINE_S,
        "stall_s": STALL_S,
        "layer_deadlines": deadlines,
        "router_requests_sent": sent,
    }


def figures(subject: str, raw: dict[str, Any]) -> list[Figure]:
    router, agg, deadline_ms = raw[ROUTER], raw[AGGREGATOR], 1000 * raw["deadline_s"]
    at = f"at concurrency {raw['concurrency']}"
    extra = {q: router[f"{q}_ms"] - (deadline_ms + agg[f"{q}_ms"]) for q in ("p50", "p99")}
    per_request = raw["layer_deadlines"] / raw["router_requests_sent"]
    return [
        figure(
            subject,
            f"straggler: router p99 minus (layer deadline + aggregator p99) {at}",
            round(extra["p99"], 2),
            "ms",
            goal=("<=", GOAL_MS),
            bound=("<=", BOUND_MS),
        ),
        figure(
            subject,
            f"straggler: router p50 minus (layer deadline + aggregator p50) {at}",
            round(extra["p50"], 2),
            "ms",
        ),
        *(
            figure(
                subject,
                f"straggler: router {q} (a proposer {raw['stall_s']:g} s late) {at}",
                round(router[f"{q}_ms"], 2),
                "ms",
            )
            for q in ("p50", "p99")
        ),
        figure(subject, "straggler: the layer deadline (layerTimeoutSeconds)", deadline_ms, "ms"),
        *(
            figure(
                subject, f"straggler: the aggregator's own latency, {q} {at}", round(agg[f"{q}_ms"], 2), "ms"
            )
            for q in ("p50", "p99")
        ),
        figure(
            subject,
            "straggler: layer deadlines per request (router's /metrics)",
            round(per_request, 3),
            goal=("==", 1),
            bound=("==", 1),
        ),
        figure(
            subject,
            f"straggler: failures, router and aggregator alone, {at}",
            router["failures"] + agg["failures"],
            goal=("==", 0),
            bound=("==", 0),
        ),
    ]
