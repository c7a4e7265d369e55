"""Deadlines over real sockets: the whole request, the aggregator's call and its stream's idle time.

Each one ends the request with an OpenAI-style error (504 before the first byte; once a stream has started, an
`error` event and then the end of the stream, without `[DONE]`) and the stand-in backend sees the upstream call
cancelled. The backends used here would otherwise hold the request for 10 s (`HANG_SECONDS`): a dripping
aggregator, one that stalls but keeps its connection alive with SSE comments, and slow proposer layers.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from moa_stub import Behavior, StubBackend
from router_harness import RouterFactory, make_config
from test_router_pipeline import _post, _sse_events

from kubemoe.api.moapipeline import Policy

#: Tokens every 0.1 s for 20 s: the read timeout never fires, because every chunk resets it.
DRIP = Behavior(reply=" ".join(["tok"] * 200), chunk_delay=0.1)
#: One token, then only keep-alive comments: the connection is never silent.
STALL = Behavior(reply="first second third", stall_after_words=1)


def _stream_error(raw: str) -> dict[str, Any]:
    """The last event of an SSE body, which must be an error (and the stream must not say [DONE])."""
    events = _sse_events(raw)
    assert "[DONE]" not in events, raw
    last = events[-1]
    assert isinstance(last, dict)
    assert "error" in last, raw
    return dict(last["error"])


async def test_a_dripping_aggregator_ends_at_the_aggregator_deadline(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors["agg"] = DRIP
    policy = {"aggregatorTimeoutSeconds": 0.6, "streamIdleTimeoutSeconds": 0.5}
    base = await start_router(make_config(stub.url, [("a",)], policy=policy))

    started = time.monotonic()
    status, raw = await _post(base, {"stream": True})
    assert time.monotonic() - started < 3
    assert status == 200
    err = _stream_error(raw)
    assert "agent 'agg'" in err["message"]
    assert "aggregatorTimeoutSeconds (0.6s)" in err["message"]
    assert err["code"] == "upstream_timeout"
    # Tokens arrived before the deadline, and the upstream call was cancelled by it.
    assert any(
        isinstance(e, dict) and e.get("choices") and e["choices"][0]["delta"].get("content")
        for e in _sse_events(raw)
    )
    assert await stub.wait_cancelled("agg")

    # Without streaming nothing was sent yet: a real 504.
    status, body = await _post(base, {})
    assert status == 504
    assert body["error"]["code"] == "upstream_timeout"
    assert stub.cancelled.count("agg") >= 1


async def test_a_stalled_stream_that_keeps_alive_ends_at_the_idle_timeout(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors["agg"] = STALL
    policy = {"aggregatorTimeoutSeconds": 8, "streamIdleTimeoutSeconds": 0.3}
    base = await start_router(make_config(stub.url, [("a",)], policy=policy))
    started = time.monotonic()
    status, raw = await _post(base, {"stream": True, "moa_trace": True})
    elapsed = time.monotonic() - started
    assert status == 200
    assert elapsed < 3  # well before the 8 s aggregator deadline and the 10 s stall
    err = _stream_error(raw)
    assert "streamIdleTimeoutSeconds (0.3s)" in err["message"]
    # The error event carries the trace; the aggregator is recorded as timed out with the token it gave.
    trace = json.loads(raw.strip().split("\n\n")[-1].removeprefix("data: "))["moa_trace"]
    assert trace["aggregator"]["status"] == "timeout"
    assert await stub.wait_cancelled("agg")


async def test_the_request_deadline_cuts_a_layer_and_cancels_its_calls(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    # Each layer alone is within its 0.4 s deadline; both together are not within the 0.6 s request deadline.
    stub.behaviors.update(a=Behavior(latency=0.35), c=Behavior(latency=0.35))
    policy = {
        "layerTimeoutSeconds": 0.4,
        "requestTimeoutSeconds": 0.6,
        "aggregatorTimeoutSeconds": 0.5,
        "streamIdleTimeoutSeconds": 0.5,
    }
    base = await start_router(make_config(stub.url, [("a",), ("c",)], policy=policy))

    started = time.monotonic()
    status, body = await _post(base, {})
    assert time.monotonic() - started < 3
    assert status == 504
    assert body["error"]["code"] == "request_timeout"
    assert "requestTimeoutSeconds (0.6s)" in body["error"]["message"]
    assert await stub.wait_cancelled("c")
    assert stub.calls("agg") == []

    # Streaming with the trace: headers are out, so the error is the last event, with layer 2 cut off.
    status, raw = await _post(base, {"stream": True, "moa_trace": True})
    assert status == 200
    assert _stream_error(raw)["code"] == "request_timeout"
    trace = json.loads(raw.strip().split("\n\n")[-1].removeprefix("data: "))["moa_trace"]
    assert [layer["outcome"] for layer in trace["layers"]] == ["all", "cancelled"]
    assert trace["layers"][1]["agents"][0]["status"] == "cancelled"
    assert stub.cancelled.count("c") == 2


async def test_the_request_deadline_ends_an_aggregator_stream(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    # The aggregator starts ~0.5 s in; its own 1.2 s deadline would end it ~1.7 s in, the request's at 1.2 s.
    stub.behaviors.update(a=Behavior(latency=0.5), agg=DRIP)
    policy = {
        "requestTimeoutSeconds": 1.2,
        "layerTimeoutSeconds": 1.0,
        "aggregatorTimeoutSeconds": 1.2,
        "streamIdleTimeoutSeconds": 1.0,
    }
    base = await start_router(make_config(stub.url, [("a",)], policy=policy))
    status, raw = await _post(base, {"stream": True})
    assert status == 200
    err = _stream_error(raw)
    assert err["code"] == "request_timeout", err
    assert await stub.wait_cancelled("agg")


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"layerTimeoutSeconds": 90, "requestTimeoutSeconds": 60}, "layerTimeoutSeconds must not exceed"),
        ({"aggregatorTimeoutSeconds": 400}, "aggregatorTimeoutSeconds must not exceed"),
        ({"streamIdleTimeoutSeconds": 200}, "streamIdleTimeoutSeconds must not exceed"),
    ],
)
def test_deadlines_must_nest(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Policy.model_validate(policy)


def test_deadline_defaults_are_documented_values() -> None:
    p = Policy()
    assert (p.request_timeout_seconds, p.layer_timeout_seconds) == (300, 60)
    assert (p.aggregator_timeout_seconds, p.stream_idle_timeout_seconds) == (120, 30)
