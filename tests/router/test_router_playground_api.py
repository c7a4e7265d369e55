"""Playground edits over real loopback sockets: an edited run uses the edit, every refusal is an OpenAI-style
400/403 before any upstream is called, and the export is a MoAPipeline manifest the CRD models accept."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from moa_stub import Behavior, StubBackend
from playground_fixtures import endpoint, playground_config, post, question, spec_dict
from router_harness import RouterFactory, make_config

from kubemoe.api.moapipeline import MoAPipeline

CHAT = "/v1/chat/completions"


def edit(url: str) -> dict[str, Any]:
    """The deployed layers with a's temperature and prompt changed, a third layer, and another aggregator."""
    return {
        "layers": [
            {
                "agents": [
                    {"name": "a", "temperature": 1.3, "systemPrompt": "Be brief, a.", **endpoint(url, "a")},
                    {"name": "b", **endpoint(url, "b")},
                ]
            },
            {"agents": [{"name": "c", **endpoint(url, "c")}]},
            {"agents": [{"name": "b2", "topP": 0.5, "maxTokens": 99, **endpoint(url, "b")}]},
        ],
        "aggregator": {"promptTemplate": "Merge {{ responses | length }} answers.", **endpoint(url, "c")},
    }


async def _get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}{path}", headers=headers or {}) as resp:
        return resp.status, await resp.json()


def _error(body: Any, type_: str) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == type_, err
    return err


async def test_an_edited_run_uses_the_edit(stub: StubBackend, start_router: RouterFactory) -> None:
    base = await start_router(playground_config(stub.url))
    status, body = await post(base, CHAT, question(moa_pipeline=edit(stub.url), moa_trace=True))
    assert status == 200, body
    trace = body["moa_trace"]
    assert [[a["agent"] for a in layer["agents"]] for layer in trace["layers"]] == [["a", "b"], ["c"], ["b2"]]
    assert trace["aggregator"]["model"] == "c"  # the edited aggregator's model
    (a_call,) = stub.calls("a")
    assert a_call.body["temperature"] == 1.3
    assert a_call.system_prompt.strip() == "Be brief, a."
    b2 = [c for c in stub.calls("b") if c.body.get("top_p") == 0.5]
    assert len(b2) == 1
    assert b2[0].body["max_tokens"] == 99
    agg_call = stub.calls("c")[-1]
    assert agg_call.body["stream"] is True
    assert agg_call.system_prompt.strip() == "Merge 1 answers."
    assert stub.calls("agg") == []  # the deployed aggregator was replaced
    # Edited agents count under one label: client-chosen names never become metrics labels.
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        metrics = await resp.text()
    assert 'agent="(playground)"' in metrics
    assert 'agent="b2"' not in metrics

    # Without an edit the deployed pipeline still runs as deployed.
    status, body = await post(base, CHAT, question(moa_trace=True))
    assert status == 200
    assert body["moa_trace"]["aggregator"]["model"] == "agg"
    assert len(body["moa_trace"]["layers"]) == 2


async def test_the_edit_is_described_to_authenticated_clients(
    stub: StubBackend, start_router: RouterFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "alice").write_text("sk-client-alice")
    base = await start_router(playground_config(stub.url, keys_dir=str(keys)))
    status, body = await _get(base, "/v1/playground")
    assert status == 401
    assert _error(body, "invalid_request_error")["code"] == "missing_api_key"
    status, body = await post(base, CHAT, question(moa_pipeline=edit(stub.url)))
    assert status == 401
    status, body = await post(base, "/v1/playground/export", {"moa_pipeline": edit(stub.url)})
    assert status == 401
    assert stub.received == []

    alice = {"Authorization": "Bearer sk-client-alice"}
    status, body = await _get(base, "/v1/playground", alice)
    assert status == 200
    assert body["pipeline"] == "moa-test"
    assert body["allowOverrides"] is True
    assert body["limits"] == {"maxLayers": 3, "maxAgents": 8, "maxTokens": 2048, "prices": {}}
    assert [m["key"] for m in body["models"]] == [f"endpoint:{stub.url}#{m}" for m in ("a", "b", "c", "agg")]
    assert [a["name"] for a in body["edit"]["layers"][0]["agents"]] == ["a", "b"]
    assert body["edit"]["layers"][1]["agents"][0]["systemPrompt"] == "You are c."
    assert body["edit"]["aggregator"]["temperature"] == 0.2
    status, body = await post(base, CHAT, question(moa_pipeline=edit(stub.url)), alice)
    assert status == 200, body


async def test_edits_are_refused_unless_the_pipeline_allows_them(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    for config in (playground_config(stub.url, allow=False), make_config(stub.url)):
        assert config.playground is None
        base = await start_router(config)
        # The page asks first: a 200 that says edits are off, and shows none of the spec.
        status, body = await _get(base, "/v1/playground")
        assert status == 200
        assert body == {
            "pipeline": "moa-test",
            "allowOverrides": False,
            "message": "edited runs are off for this pipeline (spec.playground.allowOverrides is false)",
        }
        for status, body in (
            await post(base, CHAT, question(moa_pipeline=edit(stub.url))),
            await post(base, "/v1/playground/export", {"moa_pipeline": edit(stub.url)}),
        ):
            assert status == 403
            err = _error(body, "permission_error")
            assert "spec.playground.allowOverrides" in err["message"]
    assert stub.received == []


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *head, last = path.split(".")
    node: Any = doc
    for key in head:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


ATTACKER = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        # Another address: the router would send the request (and a key) somewhere the pipeline never named.
        (
            ("layers.0.agents.0.endpoint", {"url": ATTACKER, "model": "a"}),
            "moa_pipeline.layers.0.agents.0",
            "does not call",
        ),
        (
            ("aggregator.endpoint", {"url": ATTACKER, "model": "agg"}),
            "moa_pipeline.aggregator",
            "does not call",
        ),
        # A known URL with another model name is another model too.
        (("layers.1.agents.0.endpoint.model", "gpt-9"), "moa_pipeline.layers.1.agents.0", "does not call"),
        (("aggregator", {"moeModelRef": {"name": "elsewhere"}}), "moa_pipeline.aggregator", "does not call"),
        # The deployed model, but with another Secret's key.
        (
            ("layers.0.agents.1.endpoint.apiKeySecretRef", {"name": "other", "key": "k"}),
            "moa_pipeline.layers.0.agents.1.endpoint.apiKeySecretRef",
            "differs",
        ),
    ],
)
async def test_an_edit_may_only_use_the_pipelines_models(
    stub: StubBackend, start_router: RouterFactory, change: tuple[str, Any], param: str, says: str
) -> None:
    base = await start_router(playground_config(stub.url))
    bad = _set(edit(stub.url), *change)
    for path, body in ((CHAT, question(moa_pipeline=bad)), ("/v1/playground/export", {"moa_pipeline": bad})):
        status, answer = await post(base, path, body)
        assert status == 403, answer
        err = _error(answer, "permission_error")
        assert err["param"] == param
        assert says in err["message"]
    assert stub.received == []


def _many_agents(url: str, n: int) -> dict[str, Any]:
    return {
        "layers": [{"agents": [{"name": f"x{i}", **endpoint(url, "a")} for i in range(n)]}],
        "aggregator": endpoint(url, "agg"),
    }


@pytest.mark.parametrize(
    ("make", "param", "says"),
    [
        (lambda u: {**edit(u), "layers": edit(u)["layers"] * 2}, "moa_pipeline.layers", "at most 3"),
        (lambda u: _many_agents(u, 9), "moa_pipeline.layers", "9 proposers"),
        (
            lambda u: _set(edit(u), "layers.0.agents.0.maxTokens", 4096),
            "moa_pipeline.layers.0.agents.0.maxTokens",
            "at most 2048",
        ),
        (lambda u: _set(edit(u), "aggregator.maxTokens", 2049), "moa_pipeline.aggregator.maxTokens", "2048"),
        (
            lambda u: _set(edit(u), "layers.0.agents.0.temprature", 1.0),
            "moa_pipeline.layers.0.agents.0.temprature",
            "unknown field",
        ),
        (
            lambda u: _set(edit(u), "layers.0.agents.0.temperature", 3),
            "moa_pipeline.layers.0.agents.0.temperature",
            "less than or equal to 2",
        ),
        (
            lambda u: _set(edit(u), "layers.0.agents.0.temperature", "hot"),
            "moa_pipeline.layers.0.agents.0.temperature",
            "valid number",
        ),
        (lambda u: {"layers": []}, "moa_pipeline.layers", "at least 1"),
        (lambda u: ["not", "an", "object"], "moa_pipeline", "should be an object"),
        (lambda u: _set(edit(u), "layers.1.agents.0.name", "a"), "moa_pipeline", "unique"),
        (
            lambda u: _set(edit(u), "layers.0.agents.0.systemPrompt", "{% if %}"),
            "moa_pipeline.layers.0.agents.0.systemPrompt",
            "template does not parse",
        ),
        (
            lambda u: _set(edit(u), "aggregator.promptTemplate", "{{ ''.__class__ }}"),
            "moa_pipeline.aggregator.promptTemplate",
            "unsafe",
        ),
    ],
)
async def test_invalid_or_oversized_edits_are_400s(
    stub: StubBackend, start_router: RouterFactory, make: Any, param: str, says: str
) -> None:
    base = await start_router(playground_config(stub.url))
    status, body = await post(base, CHAT, question(moa_pipeline=make(stub.url)))
    assert status == 400, body
    err = _error(body, "invalid_request_error")
    assert err["param"] == param, err
    assert says in err["message"], err
    assert stub.received == []


async def test_the_deployed_quorum_still_applies_to_an_edit(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    spec = spec_dict(stub.url)
    spec["layers"][1]["agents"].append({"name": "d", **endpoint(stub.url, "a")})
    spec["policy"] = {"minResponses": 2}  # every deployed layer has 2 agents; the edit's second has 1
    base = await start_router(playground_config(stub.url, spec=spec))
    status, body = await post(base, CHAT, question(moa_pipeline=edit(stub.url)))
    assert status == 400
    assert "minResponses" in _error(body, "invalid_request_error")["message"]
    assert stub.received == []


async def test_an_edited_run_sends_the_pipelines_own_key(
    stub: StubBackend, start_router: RouterFactory, tmp_path: Path
) -> None:
    key = tmp_path / "key-b"
    key.write_text("sk-upstream-b\n")
    base = await start_router(playground_config(stub.url, key_files={"b": str(key)}))
    status, body = await post(base, CHAT, question(moa_pipeline=edit(stub.url)))
    assert status == 200, body
    assert {c.authorization for c in stub.calls("b")} == {"Bearer sk-upstream-b"}  # b and b2
    assert {c.authorization for c in stub.calls("a")} == {None}


async def test_export_is_a_manifest_the_crd_models_accept(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors["agg"] = Behavior(reply="unused")
    base = await start_router(playground_config(stub.url))
    status, body = await post(
        base, "/v1/playground/export", {"name": "moa-edited", "moa_pipeline": edit(stub.url)}
    )
    assert status == 200, body
    doc = yaml.safe_load(body["yaml"])
    assert doc == body["manifest"]
    pipeline = MoAPipeline.model_validate(doc)
    assert pipeline.metadata.name == "moa-edited"
    assert [len(layer.agents) for layer in pipeline.spec.layers] == [2, 1, 1]
    assert pipeline.spec.layers[0].agents[0].temperature == 1.3
    assert pipeline.spec.aggregator.endpoint is not None
    assert pipeline.spec.aggregator.endpoint.model == "c"
    assert pipeline.spec.playground.allow_overrides is True  # the rest of the deployed spec is kept
    assert pipeline.spec.auth.enabled is False
    assert stub.received == []  # exporting calls nobody

    for bad, param in (
        ({"name": "Not_A_Name", "moa_pipeline": edit(stub.url)}, "manifest.metadata.name"),
        ({"moa_pipeline": edit(stub.url), "extra": 1}, None),
    ):
        status, answer = await post(base, "/v1/playground/export", bad)
        assert status == 400, answer
        assert _error(answer, "invalid_request_error")["param"] == param


async def test_a_malformed_export_body_is_a_400(stub: StubBackend, start_router: RouterFactory) -> None:
    base = await start_router(playground_config(stub.url))
    async with aiohttp.ClientSession() as http:
        for raw, param in (
            (b"{not json", None),
            (b'{"name": 7, "moa_pipeline": {}}', "name"),
            (b"[1]", None),
        ):
            async with http.post(f"{base}/v1/playground/export", data=raw) as resp:
                assert resp.status == 400
                assert _error(await resp.json(), "invalid_request_error")["param"] == param
