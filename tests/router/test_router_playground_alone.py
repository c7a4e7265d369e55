"""The playground's baseline and timeline, over real loopback sockets: `moa_alone` asks one of the pipeline's
models on its own (only the models the pipeline calls, within its limits, with none of the MoA prompts); every
call in the trace says when it started on the run's clock; the spec's token prices reach the page."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from moa_stub import Behavior, StubBackend
from playground_fixtures import endpoint, playground_config, post, question
from router_harness import RouterFactory, make_config

CHAT = "/v1/chat/completions"


async def test_one_model_alone_gets_the_conversation_without_the_moa_prompts(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    base = await start_router(playground_config(stub.url))
    alone = {"name": "b-alone", "temperature": 0.1, "maxTokens": 64, **endpoint(stub.url, "b")}
    status, body = await post(base, CHAT, question(moa_alone=alone, moa_trace=True))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "stub answer"
    trace = body["moa_trace"]
    assert trace["layers"] == []
    assert trace["aggregator"]["agent"] == "b-alone"
    assert trace["aggregator"]["model"] == "b"
    assert trace["aggregator"]["usage"]["completion_tokens"] == 7
    assert [c.model for c in stub.received] == ["b"]  # one call, to that model only
    (call,) = stub.calls("b")
    assert call.body["messages"] == [
        {"role": "user", "content": "Capital of France?"}
    ]  # no system prompt of ours
    assert call.body["temperature"] == 0.1
    assert call.body["max_tokens"] == 64

    # Its own system prompt (a template, sandboxed like every prompt), streamed like any run.
    alone["systemPrompt"] = "You are {{ agent }}."
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}{CHAT}", json=question(moa_alone=alone, stream=True, moa_trace=True)) as resp,
    ):
        assert resp.status == 200
        events = [line[6:] for line in (await resp.text()).splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    traced = [json.loads(e)["moa_trace"] for e in events[:-1] if "moa_trace" in json.loads(e)]
    assert traced
    assert traced[-1]["aggregator"]["agent"] == "b-alone"
    assert stub.calls("b")[-1].system_prompt == "You are b-alone."


B = "stub:b"  # replaced by the stand-in's own model b (a model the pipeline calls)


@pytest.mark.parametrize(
    ("alone", "status", "param", "says"),
    [
        ({"name": "x", **endpoint("http://127.0.0.1:9/v1", "b")}, 403, "moa_alone", "does not call"),
        ({"name": "x", "moeModelRef": {"name": "elsewhere"}}, 403, "moa_alone", "does not call"),
        ({"name": "x", "seed": 1, "model": B}, 400, "moa_alone.seed", "unknown field"),
        ({"name": "x", "maxTokens": 4096, "model": B}, 400, "moa_alone.maxTokens", "spec.playground.maxTokens"),
        ({"name": "x", "systemPrompt": "{{ oops", "model": B}, 400, "moa_alone.systemPrompt", "does not parse"),
        ({"name": "Not A Label", "model": B}, 400, "moa_alone.name", "invalid"),
        ("b", 400, "moa_alone", "should be an object"),
    ],
    ids=["other-url", "other-moemodel", "extra-field", "over-max-tokens", "bad-template", "bad-name",
         "not-an-object"],
)  # fmt: skip
async def test_one_model_alone_is_refused_outside_the_pipelines_models_and_limits(
    stub: StubBackend, start_router: RouterFactory, alone: Any, status: int, param: str, says: str
) -> None:
    base = await start_router(playground_config(stub.url))
    if isinstance(alone, dict) and alone.get("model") == B:
        alone = {**{k: v for k, v in alone.items() if k != "model"}, **endpoint(stub.url, "b")}
    got, body = await post(base, CHAT, question(moa_alone=alone))
    assert got == status, body
    err = body["error"]
    assert err["param"] == param, err
    assert says in err["message"], err
    assert stub.received == []


async def test_one_model_alone_is_refused_unless_the_pipeline_allows_edits_and_never_with_an_edit(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    alone = {"name": "x", **endpoint(stub.url, "b")}
    for config in (playground_config(stub.url, allow=False), make_config(stub.url)):
        base = await start_router(config)
        status, body = await post(base, CHAT, question(moa_alone=alone))
        assert status == 403, body
        assert "spec.playground.allowOverrides" in body["error"]["message"]
        assert body["error"]["param"] == "moa_alone"
    base = await start_router(playground_config(stub.url))
    edit = {
        "layers": [{"agents": [{"name": "a", **endpoint(stub.url, "a")}]}],
        "aggregator": endpoint(stub.url, "c"),
    }
    status, body = await post(base, CHAT, question(moa_alone=alone, moa_pipeline=edit))
    assert status == 400, body
    assert body["error"]["param"] == "moa_alone"
    assert stub.received == []


async def test_every_call_in_the_trace_says_when_it_started_on_the_runs_clock(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(a=Behavior(latency=0.2), b=Behavior(latency=0.05), c=Behavior(latency=0.1))
    base = await start_router(playground_config(stub.url))
    status, body = await post(base, CHAT, question(moa_trace=True))
    assert status == 200, body
    first, second = body["moa_trace"]["layers"]
    starts = {a["agent"]: a["start_ms"] for a in first["agents"]}
    assert max(starts.values()) - min(starts.values()) < 50  # a layer's calls start together
    assert min(starts.values()) < 100
    (c,) = second["agents"]
    assert c["start_ms"] >= min(starts.values()) + 200  # after layer 1's slowest call (a: 200 ms)
    agg = body["moa_trace"]["aggregator"]
    assert agg["start_ms"] >= c["start_ms"] + 100  # after layer 2 (c: 100 ms)


async def test_the_specs_token_prices_reach_the_page(stub: StubBackend, start_router: RouterFactory) -> None:
    prices = {"a": {"inputUsdPerMillionTokens": 0.5, "outputUsdPerMillionTokens": 1.5}}
    base = await start_router(playground_config(stub.url, prices=prices))
    async with aiohttp.ClientSession() as http, http.get(f"{base}/v1/playground") as resp:
        body = await resp.json()
    assert body["limits"]["prices"] == prices
