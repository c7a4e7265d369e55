"""The API models reject bad specs with messages that name the field, the same way the CEL rules do."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubemoe.api import MoAPipelineSpec, MoEModelSpec
from kubemoe.api.moemodel import Architecture
from kubemoe.api.rules import parse_quantity


def _moe(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"name": "mistralai/Mixtral-8x7B-Instruct-v0.1"}}
    spec.update(overrides)
    return spec


def _agent(name: str, **ref: Any) -> dict[str, Any]:
    return {"name": name, **(ref or {"moeModelRef": {"name": "mixtral"}})}


def _moa(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "layers": [{"agents": [_agent("a"), _agent("b")]}],
        "aggregator": {"moeModelRef": {"name": "mixtral"}},
    }
    spec.update(overrides)
    return spec


def test_camel_case_yaml_fills_snake_case_fields_with_defaults() -> None:
    spec = MoEModelSpec.model_validate(_moe(serving={"maxModelLen": 4096, "kvCacheDtype": "fp8"}))
    assert spec.serving.max_model_len == 4096
    assert spec.serving.kv_cache_dtype == "fp8"
    assert spec.serving.gpu_memory_utilization == 0.90
    assert spec.placement.strategy == "cheapest"
    assert spec.replicas is None


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        pytest.param(_moe(serving={"maxModelLenn": 4096}), "maxModelLenn", id="a typo is an unknown field"),
        pytest.param(
            _moe(placement={"tensorParallelSize": 3}), "power of two", id="tp must be a power of two"
        ),
        pytest.param(
            _moe(serving={"gpuMemoryUtilization": 1.5}), "gpuMemoryUtilization", id="utilization above 1"
        ),
        pytest.param(_moe(serving={"kvCacheDtype": "int3"}), "kvCacheDtype", id="unknown kv dtype"),
        pytest.param(
            _moe(engine={"kind": "neuronx"}, placement={"accelerator": "gpu"}),
            "engine.kind must match",
            id="neuronx engine on gpus",
        ),
        pytest.param(
            _moe(serving={"speculative": {"method": "eagle3"}}),
            "need a draft",
            id="eagle3 without a draft model",
        ),
        pytest.param(
            _moe(serving={"enableChunkedPrefill": False, "maxModelLen": 8192, "maxNumBatchedTokens": 2048}),
            "maxNumBatchedTokens must be at least maxModelLen",
            id="no chunked prefill needs a whole prompt per step",
        ),
        pytest.param(_moe(replicas=-1), "replicas", id="negative replicas"),
        pytest.param({"model": {"name": "has spaces"}}, "model.name", id="model id pattern"),
        pytest.param(_moe(routing={"parentRefs": []}), "parentRefs", id="routing needs a gateway"),
    ],
)
def test_invalid_moemodel_specs_are_rejected_naming_the_field(spec: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        MoEModelSpec.model_validate(spec)
    assert fragment in str(excinfo.value)


@pytest.mark.parametrize(
    ("arch", "fragment"),
    [
        pytest.param({"kvLoraRank": 512}, "set both or neither", id="mla needs both dims"),
        pytest.param({"numKvHeads": 7}, "multiple of numKvHeads", id="heads divisible by kv heads"),
        pytest.param({"numExperts": 8}, "expertsPerToken", id="moe needs top-k"),
        pytest.param({"slidingWindowLayers": 4}, "slidingWindow", id="window layers need a window"),
    ],
)
def test_invalid_architectures_are_rejected(arch: dict[str, Any], fragment: str) -> None:
    base = {"totalParamsB": 7, "numLayers": 32, "hiddenSize": 4096, "numAttentionHeads": 32, "numKvHeads": 8}
    with pytest.raises(ValidationError, match=fragment):
        Architecture.model_validate(base | arch)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        pytest.param(
            _moa(layers=[{"agents": [{"name": "a"}]}]),
            "exactly one of moeModelRef and endpoint",
            id="no model ref",
        ),
        pytest.param(
            _moa(
                layers=[
                    {
                        "agents": [
                            _agent(
                                "a", moeModelRef={"name": "m"}, endpoint={"url": "http://x/v1", "model": "m"}
                            )
                        ]
                    }
                ]
            ),
            "exactly one of moeModelRef and endpoint",
            id="both model refs",
        ),
        pytest.param(
            _moa(policy={"minResponses": 3}),
            "exceeds the 2 agent(s) of layer 1",
            id="quorum above layer size",
        ),
        pytest.param(
            _moa(layers=[{"agents": [_agent("a")]}, {"agents": [_agent("a")]}]),
            "unique",
            id="duplicate agent names",
        ),
        pytest.param(_moa(layers=[]), "layers", id="no layers"),
        pytest.param(
            _moa(layers=[{"agents": [_agent("a", endpoint={"url": "ftp://x", "model": "m"})]}]),
            "url",
            id="endpoint must be http",
        ),
        pytest.param(_moa(policy={"onAgentError": "retry"}), "onAgentError", id="unknown error policy"),
    ],
)
def test_invalid_pipelines_are_rejected_naming_the_problem(spec: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        MoAPipelineSpec.model_validate(spec)
    assert fragment in str(excinfo.value)


def test_aggregator_gets_the_aggregate_and_synthesize_prompt_by_default() -> None:
    spec = MoAPipelineSpec.model_validate(_moa())
    assert "synthesize these responses" in spec.aggregator.prompt_template
    assert spec.policy.on_agent_error == "skip"


def test_model_keys_identify_the_model_an_agent_calls() -> None:
    spec = MoAPipelineSpec.model_validate(
        _moa(
            layers=[
                {"agents": [_agent("a"), _agent("b", endpoint={"url": "http://x:8000/v1", "model": "m"})]}
            ]
        )
    )
    keys = [a.model_key for a in spec.layers[0].agents]
    assert keys == ["moe:mixtral", "endpoint:http://x:8000/v1#m"]


def test_unset_quorum_waits_for_every_agent_of_the_layer() -> None:
    spec = MoAPipelineSpec.model_validate(_moa())
    assert spec.policy.min_responses is None
    assert spec.policy.quorum(3) == 3
    with_quorum = MoAPipelineSpec.model_validate(_moa(policy={"minResponses": 1}))
    assert with_quorum.policy.quorum(2) == 1


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [("500m", "1"), ("1Gi", "1025Mi"), ("1k", "1Ki"), ("999", "1e3"), (".5", "1"), ("1M", "1Mi"), (0, "1n")],
)
def test_quantities_compare_by_value_like_the_api_servers_quantity(smaller: str | int, larger: str) -> None:
    assert parse_quantity(smaller) < parse_quantity(larger)
    assert parse_quantity("1Gi") == parse_quantity("1024Mi") == parse_quantity(2**30)
    assert parse_quantity("1e3") == parse_quantity("1k")
