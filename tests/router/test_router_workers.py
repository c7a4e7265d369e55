"""Several router processes on one port: limits split among them (per-key rates shared, not split), /metrics
summed over them, SIGTERM stops them all cleanly, and the death of one worker takes the pod down (exit 1)
instead of serving with fewer."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from moa_stub import StubBackend
from router_harness import make_config

from kubemoe.router.workers import split_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hack.bench import _router_load as bench  # noqa: E402


def test_split_config_shares_every_per_process_limit() -> None:
    config = make_config(
        "http://127.0.0.1:9/v1",
        [("a", "b")],
        limits={"maxConcurrentRequests": 101, "upstream": {"poolSize": 9}},
        auth={"enabled": True, "keysDir": "/keys", "requestsPerSecond": 10.0, "burst": 5},
    )
    share = split_config(config, 4)
    assert share.limits.max_concurrent_requests == 26
    assert share.pool_size == 3
    # Not split: the workers share one bucket per key (test_a_key_gets_its_burst_over_all_the_workers).
    assert (share.auth.requests_per_second, share.auth.burst) == (10.0, 5)
    assert split_config(config, 1) is config
    derived = split_config(
        make_config("http://127.0.0.1:9/v1", [("a",)], limits={"maxConcurrentRequests": 10}), 2
    )
    assert derived.pool_size == 5 * derived.calls_per_host()


def _workers(pid: int) -> list[int]:
    """The serving processes (multiprocessing's resource tracker is a child too, and not one of them)."""
    out = []
    for child in bench.descendants(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(child)
        except OSError:
            pass
    return out


async def _traffic(base: str, n: int) -> None:
    payload = {"model": "moa-test", "messages": [{"role": "user", "content": "Hi"}]}
    # A fresh connection per request, so that the kernel spreads them over the workers.
    for _ in range(n):
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{base}/v1/chat/completions", json=payload) as r,
        ):
            assert r.status == 200, await r.text()


async def _metrics(base: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
        return await r.text()


@pytest.fixture
def config_file(stub: StubBackend, tmp_path: Path) -> Path:
    path = tmp_path / "router.json"
    path.write_text(json.dumps(make_config(stub.url, [("a",)], auth={"enabled": False}).to_file_dict()))
    return path


def _start(config_file: Path, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "kubemoe.router", "--config", str(config_file), "--host", "127.0.0.1"]
    return subprocess.Popen(
        [*argv, "--port", str(port), "--workers", "2", "--log-level", "WARNING"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )


async def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("router workers did not listen within 60 s")


async def test_workers_share_the_port_and_sum_their_metrics(config_file: Path) -> None:
    port = bench.free_port()
    proc = _start(config_file, port)
    try:
        await _wait_listening(port, proc)
        workers = _workers(proc.pid)
        assert len(workers) == 2
        base = f"http://127.0.0.1:{port}"
        await asyncio.sleep(2)  # both workers listening (the first may have been ready alone)
        await _traffic(base, 30)
        # Any worker answers /metrics with the sum over both.
        for _ in range(4):
            text = await _metrics(base)
            match = re.search(
                r'^kubemoe_router_requests_total\{code="200",stream="false"\} (\S+)$', text, re.M
            )
            assert match, text
            assert float(match.group(1)) == 30.0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not [p for p in workers if Path(f"/proc/{p}").exists()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_dead_worker_stops_the_pod(config_file: Path) -> None:
    port = bench.free_port()
    proc = _start(config_file, port)
    try:
        await _wait_listening(port, proc)
        await asyncio.sleep(1)
        victim = _workers(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(30) == 1
        assert proc.stderr is not None
        assert "stopping the others" in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_key_gets_its_burst_over_all_the_workers(stub: StubBackend, tmp_path: Path) -> None:
    """Burst 4, a rate too slow to refill during the test: exactly 4 requests pass, whether they come on one
    keep-alive connection (one worker: split buckets would pass 2) or on 16 fresh connections spread over
    both workers (per-worker buckets would pass 8)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "alice").write_text("sk-alice-1\n")
    (keys / "bob").write_text("sk-bob-1\n")
    auth = {"enabled": True, "keysDir": str(keys), "requestsPerSecond": 0.001, "burst": 4}
    config_file = tmp_path / "router.json"
    config_file.write_text(json.dumps(make_config(stub.url, [("a",)], auth=auth).to_file_dict()))
    port = bench.free_port()
    proc = _start(config_file, port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    payload = {"model": "moa-test", "messages": [{"role": "user", "content": "Hi"}]}
    try:
        await _wait_listening(port, proc)
        await asyncio.sleep(2)  # both workers listening
        codes: dict[str, list[int]] = {"alice": [], "bob": []}
        async with aiohttp.ClientSession() as one_connection:
            for _ in range(6):
                headers = {"Authorization": "Bearer sk-alice-1"}
                async with one_connection.post(url, json=payload, headers=headers) as r:
                    codes["alice"].append(r.status)
        for _ in range(16):
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, json=payload, headers={"Authorization": "Bearer sk-bob-1"}) as r,
            ):
                codes["bob"].append(r.status)
                if r.status == 429:
                    assert (
                        "over its limit of 0.001 requests per second" in (await r.json())["error"]["message"]
                    )
        assert codes["alice"] == [200] * 4 + [429] * 2
        assert codes["bob"] == [200] * 4 + [429] * 12
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
