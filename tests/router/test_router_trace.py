"""The trace extension with streaming proposers: their tokens arrive as `agent_delta` events, each agent's trace
has its outcome, latency, time to first token and tokens, and usage stays exact when a quorum cancels a call
mid-stream (what the upstream had reported is counted, once)."""

from __future__ import annotations

from typing import Any

from moa_stub import Behavior, StubBackend
from router_harness import RouterFactory, make_config
from test_router_pipeline import _post, _sse_events


def _moa(events: list[Any], kind: str) -> list[dict[str, Any]]:
    return [e["moa"] for e in events if isinstance(e, dict) and e.get("moa", {}).get("type") == kind]


async def test_proposer_tokens_stream_into_the_trace(stub: StubBackend, start_router: RouterFactory) -> None:
    stub.behaviors.update(
        a=Behavior(reply="alpha beta gamma", chunk_delay=0.02), b=Behavior(reply="one two", chunk_delay=0.02)
    )
    base = await start_router(make_config(stub.url, [("a", "b")]))
    status, raw = await _post(base, {"stream": True, "moa_trace": True})
    assert status == 200
    events = _sse_events(raw)
    deltas = _moa(events, "agent_delta")
    assert "".join(d["content"] for d in deltas if d["agent"] == "a") == "alpha beta gamma"
    assert "".join(d["content"] for d in deltas if d["agent"] == "b") == "one two"
    assert len([d for d in deltas if d["agent"] == "a"]) == 3  # token by token, not one block
    # Every delta of an agent comes before that agent's final event.
    index = {id(e): i for i, e in enumerate(events)}
    moa_events = [e for e in events if isinstance(e, dict) and "moa" in e]
    for agent in ("a", "b"):
        last_delta = max(
            index[id(e)]
            for e in moa_events
            if e["moa"]["type"] == "agent_delta" and e["moa"]["agent"] == agent
        )
        final = next(
            index[id(e)] for e in moa_events if e["moa"]["type"] == "agent" and e["moa"]["agent"] == agent
        )
        assert last_delta < final
    # The proposers were asked to stream, with usage.
    assert stub.calls("a")[0].body["stream"] is True
    assert stub.calls("a")[0].body["stream_options"] == {"include_usage": True}

    trace = events[-2]["moa_trace"]
    a = trace["layers"][0]["agents"][0]
    assert a["status"] == "ok"
    assert a["content"] == "alpha beta gamma"
    assert 0 < a["time_to_first_token_ms"] <= a["latency_ms"]
    assert a["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


async def test_a_non_streamed_trace_has_ttft_too(stub: StubBackend, start_router: RouterFactory) -> None:
    base = await start_router(make_config(stub.url, [("a",)]))
    status, body = await _post(base, {"moa_trace": True})
    assert status == 200
    agent = body["moa_trace"]["layers"][0]["agents"][0]
    assert agent["time_to_first_token_ms"] >= 0
    assert body["moa_trace"]["aggregator"]["time_to_first_token_ms"] >= 0


async def test_quorum_cancellation_keeps_partial_answers_and_exact_usage(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    # `fast` answers at 0.5 s; `slow` streams a word every 0.1 s, reporting usage with each one, and is cut off
    # by the quorum of 1 after a few words.
    stub.behaviors.update(
        fast=Behavior(latency=0.5, reply="done"),
        slow=Behavior(reply=" ".join(f"w{i}" for i in range(50)), chunk_delay=0.1, usage_every_chunk=True),
    )
    base = await start_router(make_config(stub.url, [("fast", "slow")], policy={"minResponses": 1}))
    status, raw = await _post(base, {"stream": True, "moa_trace": True})
    assert status == 200
    events = _sse_events(raw)
    trace = events[-2]["moa_trace"]
    fast, slow = trace["layers"][0]["agents"]
    assert trace["layers"][0]["outcome"] == "quorum"
    assert fast["status"] == "ok"
    assert slow["status"] == "cancelled"
    assert "quorum" in slow["error"]
    streamed = slow["content"].split()
    assert 1 <= len(streamed) < 50, slow
    # Usage of the cancelled call: what the upstream had reported for the words the router had received.
    assert slow["usage"]["completion_tokens"] == len(streamed)
    assert slow["time_to_first_token_ms"] > 0
    assert await stub.wait_cancelled("slow")
    # The request's usage is every call's, each counted once.
    calls = [fast, slow, trace["aggregator"]]
    for kind in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert trace["usage"][kind] == sum(c["usage"][kind] for c in calls), kind
    assert events[-2]["usage"] == trace["usage"]
