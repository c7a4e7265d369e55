"""The router with an event-loop probe, for the benchmark's concurrency-1 rounds: where the tail comes from.

`python -m hack.bench._router_probe OUT ROUTER-ARGS...` serves like `kubemoe router ROUTER-ARGS`, plus a task
that sleeps 2 ms at a time. A sleep that ends over 10 ms late, with at most one request in flight, is a stall
of every request in flight, and it is one of two kinds: the process spent most of it on the CPU (its own work:
a GC pass, a slow handler, logging) or it did not (it was runnable or asleep while the machine ran others).
Only the first is the router's to fix. At exit the counts go to OUT as JSON, with every GC pass over 2 ms.

This is a separate subject from `router`: its timer costs CPU, so its latency is not the router's.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import resource
import sys
import time
from typing import Any

from aiohttp import web

STALL_S = 0.010
TICK_S = 0.002
_PROBE = web.AppKey("bench_probe", asyncio.Task)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str]) -> int:
    from kubemoe.router import process, server
    from kubemoe.router.__main__ import main as router_main

    out, router_args = argv[0], argv[1:]
    stalls: list[tuple[float, float]] = []
    own_at: list[tuple[float, float, float]] = []  # (seconds since start, stall ms, CPU ms) of own-CPU stalls
    t0 = time.perf_counter()
    collections: list[tuple[int, float]] = []  # (generation, seconds) of every GC pass over 2 ms
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif (took := time.perf_counter() - gc_started[0]) > 0.002:
            collections.append((info["generation"], took))

    gc.callbacks.append(on_gc)

    async def probe(app: web.Application) -> None:
        state = app[server.STATE]

        async def run() -> None:
            while True:
                w0, c0, busy = time.perf_counter(), _cpu(), state.in_flight
                await asyncio.sleep(TICK_S)
                late = time.perf_counter() - w0
                if late > STALL_S and busy <= 1 and state.in_flight <= 1:
                    cpu = _cpu() - c0
                    stalls.append((late, cpu))
                    if cpu >= 0.5 * late:
                        own_at.append((round(w0 - t0, 2), round(1000 * late, 1), round(1000 * cpu, 1)))

        app[_PROBE] = asyncio.get_running_loop().create_task(run())

    build = server.build_app

    def build_app(*args: Any, **kwargs: Any) -> web.Application:
        app = build(*args, **kwargs)
        app.on_startup.append(probe)
        return app

    process.build_app = build_app  # type: ignore[attr-defined]  # serve_one builds the app through it

    def report() -> None:
        own = [s for s, cpu in stalls if cpu >= 0.5 * s]
        off = [s for s, cpu in stalls if cpu < 0.5 * s]
        summary = {
            "own_cpu": len(own),
            "own_cpu_max_ms": 1000 * max(own, default=0.0),
            "off_cpu": len(off),
            "off_cpu_max_ms": 1000 * max(off, default=0.0),
            # GC passes over 2 ms anywhere in the run (start-up and the 256-concurrent warm-up included).
            "own_cpu_stalls": own_at,
            "gc_over_2ms": [(gen, round(1000 * took, 1)) for gen, took in collections],
        }
        with open(out, "w") as f:
            json.dump(summary, f)

    atexit.register(report)
    return router_main(router_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
