"""The router benchmark's parts work (its numbers live in `hack/bench/router.py`, never in a test): the
stand-in backend, the naive baseline and the router answer the same load over loopback, and CPU is read."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hack.bench import _router_load as load  # noqa: E402
from hack.bench import router as bench  # noqa: E402


def test_baseline_and_router_serve_the_benchmark_load(tmp_path: Path) -> None:
    port = load.free_port()
    backend = f"http://127.0.0.1:{port}/v1"
    with (
        load.process([sys.executable, "-m", "hack.bench.router", "--backend", str(port), "0"], port),
        bench._subject("baseline", backend, tmp_path) as (base_url, base_pid),
        bench._subject("router", backend, tmp_path) as (router_url, router_pid),
    ):
        for url, pid in ((base_url, base_pid), (router_url, router_pid)):
            before = load.cpu_seconds(pid)
            latencies, failures, _ = asyncio.run(load.load(url, concurrency=8, requests=40, timeout_s=30))
            assert (len(latencies), failures) == (40, 0), url
            assert load.cpu_seconds(pid) > before
        critical, failures, _ = asyncio.run(
            load.drive(load.critical_call(backend), concurrency=2, requests=6, warmup=2, timeout_s=30)
        )
        assert (len(critical), failures) == (6, 0)


def _subject(p50: float, p99: float, failures: int = 0) -> dict[str, float | int]:
    return {
        "n": 100,
        "failures": failures,
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": p99,
        "rps": 100.0,
        "server_busy": 0.5,
        "backend_busy": 0.1,
        "load_generator_busy": 0.2,
        "listen_overflows": 0,
    }


def test_latency_goals_compare_with_the_critical_path_at_the_same_concurrency() -> None:
    from hack.bench import _router_latency as latency

    machine = {"loadavg_1m_before": 1.0, "loadavg_1m_after": 2.0}
    raw = {
        "latency_c1": {
            latency.CRITICAL: _subject(40.0, 50.0),
            "baseline": _subject(44.0, 70.0),
            "router": _subject(41.5, 61.0),
            "router-2w": _subject(42.0, 58.0),
            "_machine": machine,
        },
        "latency_c64": {
            latency.CRITICAL: _subject(50.0, 120.0),
            "baseline": _subject(150.0, 200.0),
            "router": _subject(90.0, 125.0),
            "router-2w": _subject(80.0, 110.0, failures=3),
            "_machine": machine,
        },
        "throughput_256": {"router": {"cpu_ms_per_request": 1.0}, "router-2w": {"cpu_ms_per_request": 1.2}},
    }
    got = {f.figure: f for f in latency.figures("router", raw, workers=2)}
    p50_1 = got["overhead over the critical path, p50 at concurrency 1"]
    p99_1 = got["overhead over the critical path, p99 at concurrency 1"]
    assert (p50_1.value, p50_1.passed, p99_1.value, p99_1.passed) == (1.5, True, 11.0, False)
    p50_64 = got["overhead over the critical path, p50 at concurrency 64"]
    assert (p50_64.value, p50_64.passed) == (40.0, False)  # against the critical path at 64, not at 1
    assert got["router p50 at concurrency 64 minus the critical path p50 at concurrency 1"].value == 50.0
    assert got["router p99 minus baseline p99 at concurrency 64"].value == -75.0
    assert got["router CPU floor at concurrency 64: 64 x CPU per request / 1 core(s)"].value == 64.0
    assert got["router-2w CPU floor at concurrency 64: 64 x CPU per request / 2 core(s)"].value == 38.4
    failed = got["router-2w failures at concurrency 64"]
    assert (failed.value, failed.passed) == (3, False)
    assert got["machine load average (1 min) around the concurrency-64 rounds"].value == 2.0


def test_the_probed_router_serves_and_reports_its_loop_stalls_at_exit(tmp_path: Path) -> None:
    port = load.free_port()
    backend = f"http://127.0.0.1:{port}/v1"
    with (
        load.process([sys.executable, "-m", "hack.bench.router", "--backend", str(port), "0"], port),
        bench._subject(bench.PROBED, backend, tmp_path) as (url, pid),
    ):
        latencies, failures, _ = asyncio.run(load.load(url, concurrency=1, requests=20, timeout_s=30))
        assert (len(latencies), failures) == (20, 0)
        os.kill(pid, signal.SIGSTOP)  # 300 ms off the CPU: a stall that is not the router's own work
        time.sleep(0.3)
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    report = json.loads((tmp_path / bench.PROBE_FILE).read_text())
    assert report["off_cpu"] >= 1
    assert report["off_cpu_max_ms"] >= 290
    assert report["own_cpu_max_ms"] < 290
