"""Benchmark: the MoA router against the naive fan-out baseline (`naive_fanout.py`), side by side in one run.

Setup, all on 127.0.0.1: one stand-in backend process (`_router_backend`: a bare asyncio protocol with canned
OpenAI answers, so that it is never the bottleneck), and the server under test in its own process (`kubemoe
router` with 3 proposers + aggregator, client auth off as the baseline has none; or the baseline). The load
generator (aiohttp, in this process) sends non-streaming chat completions, streamed ones for the TTFT.

Subjects: the baseline (one process, as written), the router in one process (`router`), and the router with
`--workers 2` (`router-2w`, SO_REUSEPORT). Their ratios to the baseline are reported separately: only the
single-process ones carry the goals, as the baseline itself is one process.

Figures:
- throughput at 256 concurrent (requests/s in steady state: without the first and last 256 answers of each
  batch, the ramp and the drain; ratio router / baseline; goal >= 1.5);
- CPU per request of the server (/proc utime + stime of the process and its children over the measured
  window; goal ratio <= 0.8);
- the stand-in backend's CPU per request and how busy it was (share of one core) while serving the router:
  it must not be what limits the throughput;
- overhead over the critical path at concurrency 1 and 64 (goals 2 ms p50, 10 ms p99) and 256 (no goal):
  p50/p99 latency minus that of the same two upstream calls (one proposer, then the aggregator's stream)
  made directly, with backends answering after 20 ms, measured in the same interleaved rounds at the same
  concurrency (`_router_latency`), with what explains them: throughput, how busy each process was, the
  load average, the CPU floor (concurrency x CPU per request);
- the router's event-loop stalls over 10 ms at concurrency 1, seen by a probe in a separate router process
  (`_router_probe`): those on its own CPU (its work: GC, a slow handler; goal none) and those off the CPU
  (the machine ran something else: not the router's to fix);
- memory: the router's RSS sampled while it serves 50k requests (3k quick) at concurrency 64; the slope of
  a least-squares line over the second half (after pools and caches have filled), in KiB per 10k requests,
  and the growth from the first sample of that half to the last (goal: flat, <= 256 KiB per 10k);
- a straggler (`_router_straggler`): one proposer's backend answers after 5 s, the layer deadline is 100 ms;
  the router's p99 at concurrency 8 minus (the deadline + the aggregator's own p99, measured directly in
  the same rounds), goal <= 10 ms; the raw p50/p99, the deadline, the aggregator's latency and the router's
  own count of layer deadlines (one per request);
- time to first token (`_router_ttft`): streamed requests through a router whose aggregator's backend
  streams (first token at 20 ms, the rest 20 ms later) against the critical path's TTFT (one proposer call,
  then the aggregator's stream to its first token), at concurrency 1 in interleaved rounds; the p50 overhead
  has the goal <= 2 ms, and p50/p99 of both are reported.

How long each part took goes to the raw JSON (`bench-results/router.json`, `seconds`) and, run alone, to the
last line printed. `python -m hack.bench.router [--quick]` runs it alone; `--backend PORT DELAY [GAP]` is
the stand-in backend itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hack.bench import _router_straggler as straggler
from hack.bench import _router_ttft as ttft
from hack.bench._router_backend import serve as serve_backend
from hack.bench._router_latency import CONCURRENCIES
from hack.bench._router_latency import figures as latency_figures
from hack.bench._router_latency import measure as measure_latency
from hack.bench._router_load import (
    PROPOSERS,
    ROOT,
    cpu_seconds,
    free_port,
    load,
    memory_run,
    pct,
    process,
    router_config,
    router_process,
    timed,
)
from hack.bench.common import Context, Figure

SUBJECT = "router"
SUBJECTS = ("baseline", "router", "router-2w")
#: The router with an event-loop probe (`_router_probe`), in the concurrency-1 rounds only.
PROBED = "router-probed"
PROBE_FILE = "probe.json"
#: Processes of the multi-process subject.
WORKERS = 2
#: (quick, full) seconds the runner allows; on 2 cores it took 52 s and 215 s (each part's in `seconds`).
BUDGET_S = (180.0, 1500.0)


# --- processes -------------------------------------------------------------------------------------------------


@contextmanager
def _subject(name: str, backend: str, tmp: Path) -> Iterator[tuple[str, int]]:
    if name.startswith("router"):
        workers = ["--workers", str(WORKERS)] if name == "router-2w" else []
        module = ["hack.bench._router_probe", str(tmp / PROBE_FILE)] if name == PROBED else ["kubemoe.router"]
        with router_process(
            router_config(backend), tmp / f"{name}.json", module=module, extra=workers
        ) as served:
            yield served
        return
    port = free_port()
    argv = [
        sys.executable,
        str(ROOT / "hack" / "bench" / "naive_fanout.py"),
        "--port",
        str(port),
        "--backend",
        backend,
        "--proposers",
        str(PROPOSERS),
    ]
    with process(argv, port) as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


def _throughput(
    servers: dict[str, tuple[str, int]], backend_pid: int, requests: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """All servers up at once, measured in alternating batches: on a shared machine whose load drifts, each
    subject sees the same conditions (a ratio of two runs minutes apart would measure the neighbours)."""
    totals: dict[str, dict[str, Any]] = {
        name: {
            "requests": 0,
            "failures": 0,
            "wall": 0.0,
            "cpu": 0.0,
            "backend_cpu": 0.0,
            "load_cpu": 0.0,
            "window_n": 0,
            "window_s": 0.0,
            "p50": [],
        }
        for name in SUBJECTS
    }
    for i in range(rounds):
        order = SUBJECTS if i % 2 == 0 else SUBJECTS[::-1]
        for name in order:
            url, pid = servers[name]
            cpu0, backend0, load0 = cpu_seconds(pid), cpu_seconds(backend_pid), time.process_time()
            done_at: list[float] = []
            latencies, failures, wall = asyncio.run(
                load(url, concurrency=256, requests=requests // rounds, timeout_s=120, done_at=done_at)
            )
            t = totals[name]
            # Steady state: the first and the last 256 answers are the ramp (connects, the first wave) and the
            # drain (fewer than 256 in flight); the rate between them is the throughput at 256 concurrent.
            n, edge = len(done_at), 256
            done_at.sort()
            if n > 3 * edge:
                t["window_n"] += n - 2 * edge
                t["window_s"] += done_at[n - edge - 1] - done_at[edge - 1]
            else:
                t["window_n"] += n
                t["window_s"] += wall
            t["cpu"] += cpu_seconds(pid) - cpu0
            t["backend_cpu"] += cpu_seconds(backend_pid) - backend0
            t["load_cpu"] += time.process_time() - load0
            t["requests"] += len(latencies)
            t["failures"] += failures
            t["wall"] += wall
            t["p50"].append(1000 * pct(latencies, 0.5))
    return {
        name: {
            "requests": t["requests"],
            "failures": t["failures"],
            "rps": t["window_n"] / t["window_s"],
            "rps_whole_run": t["requests"] / t["wall"],
            "cpu_ms_per_request": 1000 * t["cpu"] / max(1, t["requests"]),
            "backend_cpu_ms_per_request": 1000 * t["backend_cpu"] / max(1, t["requests"]),
            "backend_busy": t["backend_cpu"] / t["wall"],
            # The load generator shares the machine: how busy it was says whether it, not the server, limited.
            "load_generator_busy": t["load_cpu"] / t["wall"],
            "p50_ms_per_round": t["p50"],
        }
        for name, t in totals.items()
    }


def run(ctx: Context) -> list[Figure]:
    requests = 2000 if ctx.quick else 12000
    seconds: dict[str, float] = {}
    raw: dict[str, Any] = {"quick": ctx.quick, "cpus": os.cpu_count(), "seconds": seconds}
    figures: list[Figure] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kubemoe-bench-") as tmpdir:
        tmp = Path(tmpdir)
        port = free_port()
        backend = f"http://127.0.0.1:{port}/v1"
        # One stand-in backend answering after 20 ms: the critical path is two such calls, and at 256
        # concurrent both servers are bound by their own CPU long before the backend's latency.
        with (
            process(
                [sys.executable, "-m", "hack.bench.router", "--backend", str(port), "0.02"], port
            ) as backend_proc,
            _subject("baseline", backend, tmp) as base,
            _subject("router", backend, tmp) as router,
            _subject("router-2w", backend, tmp) as multi,
            _subject(PROBED, backend, tmp) as probed,
        ):
            servers = {"baseline": base, "router": router, "router-2w": multi}
            for url, _ in servers.values():
                asyncio.run(load(url, concurrency=256, requests=512, timeout_s=60))  # warm up: pools filled
            seconds["start-up and warm-up"] = round(time.perf_counter() - started, 1)
            with timed(seconds, "throughput_256"):
                raw["throughput_256"] = tput = _throughput(
                    servers, backend_proc.pid, requests, rounds=2 if ctx.quick else 4
                )
            for conc in CONCURRENCIES:
                subjects = {**servers, PROBED: probed} if conc == 1 else servers
                with timed(seconds, f"latency_c{conc}"):
                    raw[f"latency_c{conc}"] = measure_latency(
                        subjects, backend, backend_proc.pid, concurrency=conc, quick=ctx.quick
                    )
            with timed(seconds, "memory"):
                raw["memory"] = mem = memory_run(router[0], router[1], 3_000 if ctx.quick else 50_000)
            with timed(seconds, "straggler"):
                raw["straggler"] = straggler.measure(backend, ctx.quick, tmp)
            with timed(seconds, "ttft"):
                raw["ttft"] = ttft.measure(backend, ctx.quick, tmp)
        raw["loop_stalls_c1"] = stalls = json.loads((tmp / PROBE_FILE).read_text())  # written at its exit
    seconds["total"] = round(time.perf_counter() - started, 1)
    ctx.save_json("router", raw)

    b = tput["baseline"]
    for name, label, goals in (
        ("router", "router (1 process)", True),
        ("router-2w", f"router ({WORKERS} workers)", False),
    ):
        r = tput[name]
        ratio = r["rps"] / b["rps"]
        cpu_ratio = r["cpu_ms_per_request"] / b["cpu_ms_per_request"]
        # Goals and CI bounds on the single process only: the baseline is one process. The bounds sit between
        # the noise of a shared 2-core machine and the router before its lean hot path (0.72-0.79x
        # throughput, 1.29-1.46x CPU), so that a return of the old per-request cost fails the quick run.
        figures += [
            Figure(
                SUBJECT,
                f"throughput at 256 concurrent, {label} / baseline",
                round(ratio, 3),
                "x",
                ">= 1.5" if goals else "",
                (ratio >= 1.5) if goals else None,
                ">= 0.6" if goals else "",
                (ratio >= 0.6) if goals else None,
            ),
            Figure(
                SUBJECT,
                f"CPU per request, {label} / baseline",
                round(cpu_ratio, 3),
                "x",
                "<= 0.8" if goals else "",
                (cpu_ratio <= 0.8) if goals else None,
                "<= 1.1" if goals else "",
                (cpu_ratio <= 1.1) if goals else None,
            ),
            Figure(SUBJECT, f"{label} requests/s at 256 concurrent", round(r["rps"], 1), "req/s"),
            Figure(
                SUBJECT,
                f"{label} failures (non-200) at 256 concurrent",
                r["failures"],
                "",
                "== 0",
                r["failures"] == 0,
                "== 0",
                r["failures"] == 0,
            ),
            Figure(
                SUBJECT,
                f"stand-in backend busy while serving {label} (share of one core)",
                round(r["backend_busy"], 3),
                "",
                "< 0.5",
                r["backend_busy"] < 0.5,
            ),
            Figure(
                SUBJECT,
                f"load generator busy while loading {label} (share of one core)",
                round(r["load_generator_busy"], 3),
            ),
        ]
    figures += [
        Figure(SUBJECT, "baseline requests/s at 256 concurrent", round(b["rps"], 1), "req/s"),
        Figure(SUBJECT, "baseline CPU per request", round(b["cpu_ms_per_request"], 3), "ms"),
        Figure(
            SUBJECT,
            "router (1 process) CPU per request",
            round(tput["router"]["cpu_ms_per_request"], 3),
            "ms",
        ),
    ]
    mem = raw["memory"]
    figures += [
        Figure(
            SUBJECT,
            f"router RSS slope over the second half of {mem['requests']} requests",
            round(mem["slope_kib_per_10k"], 1),
            "KiB/10k",
            "<= 256",
            mem["slope_kib_per_10k"] <= 256,
            "<= 4096",
            mem["slope_kib_per_10k"] <= 4096,
        ),
        Figure(
            SUBJECT, "router RSS at the end of the memory run", round(mem["rss_last_kib"] / 1024, 1), "MiB"
        ),
    ]
    figures += latency_figures(SUBJECT, raw, workers=WORKERS)
    figures += straggler.figures(SUBJECT, raw["straggler"])
    figures += ttft.figures(SUBJECT, raw["ttft"])
    figures += [
        Figure(
            SUBJECT,
            "router event-loop stalls > 10 ms at concurrency 1 on its own CPU (probe)",
            stalls["own_cpu"],
            "",
            "== 0",
            stalls["own_cpu"] == 0,
        ),
        Figure(
            SUBJECT,
            "router event-loop stalls > 10 ms at concurrency 1 off the CPU (probe)",
            stalls["off_cpu"],
        ),
        Figure(
            SUBJECT,
            "the longest of those stalls off the CPU",
            round(stalls["off_cpu_max_ms"], 1),
            "ms",
        ),
    ]
    return figures


def main(argv: list[str]) -> int:
    if argv[:1] == ["--backend"]:
        serve_backend(int(argv[1]), float(argv[2]), float(argv[3]) if len(argv) > 3 else 0.0)
        return 0
    ctx = Context(quick="--quick" in argv, results_dir=ROOT / "bench-results")
    for f in run(ctx):
        verdict = "" if f.passed is None else (" ok" if f.passed else " MISSED")
        bound = (
            "" if f.bound_passed is None else (" (CI bound ok)" if f.bound_passed else " (CI bound MISSED)")
        )
        print(f"{f.figure:<60} {f.value:>10} {f.unit:<6} {f.goal}{verdict}{bound}")
    seconds = json.loads((ctx.results_dir / f"{SUBJECT}.json").read_text())["seconds"]
    print("seconds per part:", ", ".join(f"{part} {s:g}" for part, s in seconds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
