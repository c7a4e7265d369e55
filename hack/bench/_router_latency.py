"""The router benchmark's latency part: overhead over the critical path, measured fairly.

The critical path (one proposer call, then the aggregator's stream, made directly by the load generator) is
measured in the same interleaved rounds as the servers, at the same concurrency, with as many samples: on a
shared 2-core machine whose load drifts, a p99 of 30 samples taken at another time (the max) measures the
neighbours, not the router. Each batch is preceded by an unmeasured warm-up of as many requests as the
concurrency on the same client session, so no subject pays connection set-up in its figures (the router's
upstream pool drops connections idle over 4 s, `http1.IDLE_SECONDS`, so a burst after a pause opens them).

At concurrency 64 the critical path is also made 64 at a time: then the stand-in backend, the load generator
and (for the servers) the server share two cores, and by Little's law latency = 64 / throughput. The figures
say how busy each process was (share of one core), so a reader can tell CPU queueing from overhead. At
concurrency 256 (the throughput runs' concurrency) the same holds more so: its figures carry no goal (the
router issue's goals are for concurrency 1 and 64), only what explains them; its rounds are few and short.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from hack.bench._router_load import Call, chat_call, cpu_seconds, critical_call, drive, listen_overflows, pct
from hack.bench.common import Figure

CRITICAL = "critical path"
CONCURRENCIES = (1, 64, 256)
#: (p50, p99) goals in ms for the router's overhead over the critical path, at these concurrencies only.
GOALS_MS = {"p50": 2.0, "p99": 10.0}
GOAL_CONCURRENCIES = (1, 64)


def _sizes(quick: bool, concurrency: int) -> tuple[int, int]:
    """(rounds, requests per round and subject)."""
    if concurrency == 1:  # short rounds: a router sample and a critical-path one are seconds apart
        return (8, 10) if quick else (18, 20)
    if concurrency <= 64:
        return (3, 200) if quick else (8, 500)
    return (2, 384) if quick else (3, 1024)


def measure(
    servers: dict[str, tuple[str, int]], backend: str, backend_pid: int, *, concurrency: int, quick: bool
) -> dict[str, dict[str, Any]]:
    """Latency and CPU of the critical path and every server at `concurrency`, in alternating rounds."""
    rounds, per_round = _sizes(quick, concurrency)
    calls: dict[str, tuple[Call, int | None]] = {CRITICAL: (critical_call(backend), None)}
    calls.update({name: (chat_call(url), pid) for name, (url, pid) in servers.items()})
    acc: dict[str, dict[str, Any]] = {
        name: {"lat": [], "failures": 0, "wall": 0.0, "measured_wall": 0.0, "cpu": 0.0, "backend": 0.0}
        | {"load": 0.0, "overflows": 0}
        for name in calls
    }
    load_before = os.getloadavg()[0]
    for i in range(rounds):
        names = list(calls) if i % 2 == 0 else list(calls)[::-1]
        for name in names:
            call, pid = calls[name]
            a = acc[name]
            cpu0 = cpu_seconds(pid) if pid else 0.0
            backend0, load0, over0 = cpu_seconds(backend_pid), time.process_time(), listen_overflows()
            t0 = time.perf_counter()
            lat, failures, wall = asyncio.run(
                drive(call, concurrency=concurrency, requests=per_round, timeout_s=120, warmup=concurrency)
            )
            # CPU is read around the whole call (warm-up included) and divided by its wall time: a busy share.
            whole = time.perf_counter() - t0
            a["lat"] += lat
            a["failures"] += failures
            a["wall"] += whole
            a["cpu"] += (cpu_seconds(pid) - cpu0) if pid else 0.0
            a["backend"] += cpu_seconds(backend_pid) - backend0
            a["load"] += time.process_time() - load0
            a["overflows"] += listen_overflows() - over0
            a["measured_wall"] += wall
    out: dict[str, dict[str, Any]] = {}
    for name, a in acc.items():
        out[name] = {
            "n": len(a["lat"]),
            "failures": a["failures"],
            "p50_ms": 1000 * pct(a["lat"], 0.5),
            "p99_ms": 1000 * pct(a["lat"], 0.99),
            "max_ms": 1000 * max(a["lat"], default=float("nan")),
            "rps": len(a["lat"]) / a["measured_wall"],
            "server_busy": a["cpu"] / a["wall"],
            "backend_busy": a["backend"] / a["wall"],
            "load_generator_busy": a["load"] / a["wall"],
            "listen_overflows": a["overflows"],
        }
    out["_machine"] = {"loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0]}
    return out


def figures(subject: str, raw: dict[str, Any], *, workers: int) -> list[Figure]:
    """The goals on the single-process router against the critical path at the same concurrency, and what
    explains them: the other subjects, throughput and how busy each process was."""
    out: list[Figure] = []
    measured = [conc for conc in CONCURRENCIES if f"latency_c{conc}" in raw]
    for conc in measured:
        m = raw[f"latency_c{conc}"]
        crit, router, base = m[CRITICAL], m["router"], m["baseline"]
        for q, goal in GOALS_MS.items():
            extra = router[f"{q}_ms"] - crit[f"{q}_ms"]
            held = conc in GOAL_CONCURRENCIES
            out.append(
                Figure(
                    subject,
                    f"overhead over the critical path, {q} at concurrency {conc}",
                    round(extra, 2),
                    "ms",
                    f"<= {goal:g}" if held else "",
                    (extra <= goal) if held else None,
                )
            )
        for q in GOALS_MS:
            out += [
                Figure(subject, f"critical path {q} at concurrency {conc}", round(crit[f"{q}_ms"], 2), "ms"),
                Figure(
                    subject,
                    f"router {q} minus baseline {q} at concurrency {conc}",
                    round(router[f"{q}_ms"] - base[f"{q}_ms"], 2),
                    "ms",
                ),
                Figure(
                    subject,
                    f"router ({workers} workers) overhead over the critical path, {q} at concurrency {conc}",
                    round(m["router-2w"][f"{q}_ms"] - crit[f"{q}_ms"], 2),
                    "ms",
                ),
            ]
        if conc == 1:
            continue
        # A closed loop of `conc` clients on one process that spends c ms of CPU per request cannot answer
        # faster than conc x c (Little's law with the process as the server): the floor a single process
        # has at this concurrency even with a core of its own, whatever the backends' latency.
        tput = raw["throughput_256"]
        for name, cores in (("router", 1), ("router-2w", workers)):
            floor = conc * tput[name]["cpu_ms_per_request"] / cores
            out.append(
                Figure(
                    subject,
                    f"{name} CPU floor at concurrency {conc}: {conc} x CPU per request / {cores} core(s)",
                    round(floor, 1),
                    "ms",
                )
            )
        alone = raw["latency_c1"][CRITICAL]
        for q in GOALS_MS:
            out.append(
                Figure(
                    subject,
                    f"router {q} at concurrency {conc} minus the critical path {q} at concurrency 1",
                    round(router[f"{q}_ms"] - alone[f"{q}_ms"], 2),
                    "ms",
                )
            )
        for name in (CRITICAL, "baseline", "router", "router-2w"):
            s = m[name]
            out.append(
                Figure(subject, f"{name} requests/s at concurrency {conc}", round(s["rps"], 1), "req/s")
            )
            busy = [f"backend {s['backend_busy']:.2f}", f"load generator {s['load_generator_busy']:.2f}"]
            if name != CRITICAL:
                busy.insert(0, f"server {s['server_busy']:.2f}")
            out.append(
                Figure(
                    subject,
                    f"{name} at concurrency {conc}: busy (share of one core): {', '.join(busy)}",
                    round(s["server_busy"] + s["backend_busy"] + s["load_generator_busy"], 2),
                    "cores",
                )
            )
        machine = m["_machine"]
        out.append(
            Figure(
                subject,
                f"machine load average (1 min) around the concurrency-{conc} rounds",
                round(max(machine["loadavg_1m_before"], machine["loadavg_1m_after"]), 2),
            )
        )
    for conc in measured:
        m = raw[f"latency_c{conc}"]
        overflows = sum(m[n]["listen_overflows"] for n in m if not n.startswith("_"))
        out.append(
            Figure(subject, f"listen-queue overflows during the concurrency-{conc} rounds", overflows, "")
        )
        for name in m:
            if not name.startswith("_") and m[name]["failures"]:
                out.append(
                    Figure(
                        subject,
                        f"{name} failures at concurrency {conc}",
                        m[name]["failures"],
                        "",
                        "== 0",
                        False,
                    )
                )
    return out
