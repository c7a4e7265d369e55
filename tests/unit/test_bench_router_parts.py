"""The router benchmark's pure parts (hack/bench/_router_*.py): the stand-in backend's canned stream, the
SSE and /metrics parsing, the pipeline config, self-timed samples in `drive`, and the figures of the
straggler, TTFT and concurrency-256 parts. The numbers come from `python -m hack.bench.router`, never here."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from hack.bench import _router_latency as latency
from hack.bench import _router_straggler as straggler
from hack.bench import _router_ttft as ttft
from hack.bench._router_backend import canned
from hack.bench._router_load import drive, interleaved, router_config, summary
from kubemoe.router.config import RouterConfig


def test_the_streamed_answer_splits_after_its_first_content_token() -> None:
    _, head, tail = canned()
    headers, body_head = head.split(b"\r\n\r\n", 1)
    length = int(headers.lower().split(b"content-length: ")[1])
    assert length == len(body_head) + len(tail)  # one Content-Length over both writes
    events = [e for e in body_head.split(b"\n\n") if e]
    assert [ttft.first_content(e) for e in events] == [False, True]  # the role chunk, then " word0"
    assert sum(ttft.first_content(e) for e in tail.split(b"\n\n")) == 7  # " word1" to " word7", later
    assert tail.endswith(b"data: [DONE]\n\n")


def test_first_content_skips_empty_deltas_usage_and_done() -> None:
    def line(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n"

    assert not ttft.first_content(line({"choices": [{"delta": {"role": "assistant", "content": ""}}]}))
    assert not ttft.first_content(line({"choices": [], "usage": {"total_tokens": 3}}))
    assert not ttft.first_content(b"data: [DONE]\n")
    assert not ttft.first_content(b": keep-alive\n")
    assert ttft.first_content(line({"choices": [{"delta": {"content": "hi"}}]}))


def test_metric_total_sums_every_label_of_one_counter_only() -> None:
    text = "\n".join(
        [
            "# HELP kubemoe_router_layer_deadlines_total Layers that reached their deadline.",
            'kubemoe_router_layer_deadlines_total{layer="1"} 40.0',
            'kubemoe_router_layer_deadlines_total{layer="2"} 2.0',
            "kubemoe_router_layer_deadlines_total_created 1.7e9",
        ]
    )
    assert straggler.metric_total(text, straggler.DEADLINES_METRIC) == 42.0


def test_the_benchmark_pipeline_is_a_valid_router_config() -> None:
    config = router_config(
        "http://127.0.0.1:1/v1",
        proposers=["http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"],
        aggregator="http://127.0.0.1:3/v1",
        policy={"layerTimeoutSeconds": straggler.DEADLINE_S},
    )
    parsed = RouterConfig.model_validate(config)
    assert [a.url for a in parsed.layers[0].agents][-1] == "http://127.0.0.1:2/v1"
    assert parsed.aggregator.url == "http://127.0.0.1:3/v1"
    assert parsed.policy.layer_timeout_seconds == straggler.DEADLINE_S
    assert len(RouterConfig.model_validate(router_config("http://127.0.0.1:1/v1")).layers[0].agents) == 3


def test_drive_records_the_sample_a_call_measured_itself() -> None:
    outcomes = iter([0.5, False, True, 0.25])

    async def call(http: aiohttp.ClientSession) -> bool | float:
        return next(outcomes)

    samples, failures, _ = asyncio.run(drive(call, concurrency=1, requests=4, timeout_s=10))
    assert failures == 1
    assert samples[0] == 0.5
    assert samples[2] == 0.25
    assert samples[1] < 0.1  # True: the call's own latency


def test_straggler_figures_compare_with_the_deadline_plus_the_aggregator() -> None:
    raw = {
        straggler.ROUTER: summary([0.125] * 98 + [0.131, 0.140], 0),
        straggler.AGGREGATOR: summary([0.022] * 99 + [0.024], 0),
        "concurrency": 8,
        "deadline_s": 0.1,
        "stall_s": 5.0,
        "layer_deadlines": 108.0,
        "router_requests_sent": 108,
    }
    got = {f.figure: f for f in straggler.figures("router", raw)}
    p99 = got["straggler: router p99 minus (layer deadline + aggregator p99) at concurrency 8"]
    assert (round(p99.value, 2), p99.passed, p99.bound_passed) == (16.0, False, True)
    assert (
        round(got["straggler: router p50 minus (layer deadline + aggregator p50) at concurrency 8"].value, 2)
        == 3.0
    )
    assert got["straggler: layer deadlines per request (router's /metrics)"].passed is True
    waited = dict(raw, router=summary([5.1] * 100, 0))  # a router that waited for the straggler
    assert not {f.figure: f for f in straggler.figures("router", waited)}[p99.figure].bound_passed


def test_ttft_figures_hold_the_p50_overhead_to_its_goal_and_bound() -> None:
    raw = {
        ttft.ROUTER: summary([0.0450] * 100, 0),
        ttft.CRITICAL: summary([0.0433] * 100, 0),
        "gap_s": ttft.GAP_S,
        "concurrency": 1,
    }
    got = {f.figure: f for f in ttft.figures("router", raw)}
    p50 = got["TTFT overhead over the critical path's, p50 at concurrency 1"]
    assert (round(p50.value, 2), p50.passed, p50.bound_passed) == (1.7, True, True)
    buffered = dict(
        raw, router=summary([0.0433 + ttft.GAP_S] * 100, 0)
    )  # forwards the stream only at its end
    assert not {f.figure: f for f in ttft.figures("router", buffered)}[p50.figure].bound_passed


def _subject(p50: float, p99: float) -> dict[str, Any]:
    return summary([p50 / 1000] * 98 + [p99 / 1000] * 2, 0) | {
        "rps": 1000.0,
        "server_busy": 0.8,
        "backend_busy": 0.2,
        "load_generator_busy": 0.3,
        "listen_overflows": 0,
    }


def test_concurrency_256_is_reported_without_goals_and_a_missing_one_is_skipped() -> None:
    machine = {"loadavg_1m_before": 1.0, "loadavg_1m_after": 1.5}
    names = (latency.CRITICAL, "baseline", "router", "router-2w")
    raw: dict[str, Any] = {
        f"latency_c{conc}": {name: _subject(40.0 + conc, 50.0 + conc) for name in names}
        | {"_machine": machine}
        for conc in (1, 256)
    }
    raw["latency_c256"]["router"] = _subject(300.0, 400.0)
    raw["throughput_256"] = {"router": {"cpu_ms_per_request": 0.6}, "router-2w": {"cpu_ms_per_request": 0.7}}
    got = {f.figure: f for f in latency.figures("router", raw, workers=2)}
    at_256 = got["overhead over the critical path, p50 at concurrency 256"]
    assert (at_256.value, at_256.goal, at_256.passed) == (4.0, "", None)
    assert got["overhead over the critical path, p50 at concurrency 1"].passed is True
    assert (
        round(got["router CPU floor at concurrency 256: 256 x CPU per request / 1 core(s)"].value, 1) == 153.6
    )
    assert "machine load average (1 min) around the concurrency-256 rounds" in got
    assert not any("concurrency 64" in name for name in got)  # not measured: no figures, no KeyError


def test_interleaved_rounds_stagger_the_workers_starts() -> None:
    """`interleaved` hands its `stagger_s` on to every batch: the straggler part's requests must not all
    start at once (it once dropped it, and the straggler measured a convoy instead)."""
    starts: list[float] = []

    async def call(_: aiohttp.ClientSession) -> bool:
        starts.append(time.perf_counter())
        await asyncio.sleep(0.3)
        return True

    for stagger in (0.0, 0.2):
        starts.clear()
        interleaved({"slow": call}, concurrency=2, rounds=1, per_round=2, stagger_s=stagger)
        # The warm-up's two calls, then the measured batch's: each pair one per worker.
        gaps = [starts[i + 1] - starts[i] for i in (0, 2)]
        if stagger:
            assert all(g >= 0.15 for g in gaps), gaps
        else:
            assert all(g < 0.1 for g in gaps), gaps
