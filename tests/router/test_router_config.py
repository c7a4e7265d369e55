"""Router config: strict, loads JSON and YAML, rejects templates that break or escape the sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubemoe.api.moapipeline import MoAPipelineSpec
from kubemoe.router.capacity import count_slots
from kubemoe.router.config import ConfigError, ResolvedUpstream, RouterConfig

EXAMPLE: dict[str, Any] = {
    "name": "research-moa",
    "layers": [
        {
            "agents": [
                {
                    "name": "llama",
                    "url": "http://llama.ml.svc:8000/v1",
                    "model": "meta-llama/Llama-3.1-8B-Instruct",
                    "systemPrompt": "You are a careful researcher.",
                    "temperature": 0.5,
                    "topP": 0.9,
                    "maxTokens": 256,
                },
                {
                    "name": "hosted",
                    "url": "https://api.example.com/v1",
                    "model": "big-model",
                    "apiKeyFile": "/var/run/secrets/kubemoe/hosted/api-key",
                },
            ]
        },
        {
            "agents": [
                {"name": "refiner", "url": "http://qwen.ml.svc:8000/v1", "model": "qwen", "apiKeyEnv": "QK"}
            ]
        },
    ],
    "aggregator": {"url": "http://qwen.ml.svc:8000/v1", "model": "qwen", "maxTokens": 1024},
    "policy": {"layerTimeoutSeconds": 30, "minResponses": 1, "onAgentError": "skip"},
    "limits": {
        "maxRequestBodyBytes": 1048576,
        "maxConcurrentRequests": 32,
        "retryAfterSeconds": 2,
        "upstream": {"poolSize": 16, "connectTimeoutSeconds": 5, "readTimeoutSeconds": 120},
    },
    "auth": {"enabled": True, "keysDir": "/var/run/kubemoe/client-keys", "requestsPerSecond": 5},
}


def _with(path: list[str | int], value: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(EXAMPLE))
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_loads_from_yaml_and_json(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"router{suffix}"
    path.write_text(yaml.safe_dump(EXAMPLE) if suffix == ".yaml" else json.dumps(EXAMPLE))
    config = RouterConfig.from_file(path)
    assert config.name == "research-moa"
    assert config.layers[0].agents[0].top_p == 0.9
    assert config.aggregator.name == "aggregator"
    assert config.policy.min_responses == 1
    assert config.limits.upstream.pool_size == 16


def test_config_round_trips_through_the_configmap_form() -> None:
    config = RouterConfig.model_validate(EXAMPLE)
    assert RouterConfig.model_validate(config.to_file_dict()) == config
    assert "systemPrompt" in config.to_file_dict()["layers"][0]["agents"][0]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["limits", "maxConcurrentRequestz"], 3, "Extra inputs are not permitted"),
        (["layers", 0, "agents", 0, "temprature"], 0.1, "Extra inputs are not permitted"),
        (["policy", "minResponses"], 2, "exceeds the 1 agent"),
        (["layers", 1, "agents", 0, "name"], "llama", "unique"),
        (["layers", 0, "agents", 1, "apiKeyEnv"], "ALSO", "at most one of apiKeyFile and apiKeyEnv"),
        (["layers", 0, "agents", 0, "url"], "not a url", "url"),
        (["layers", 0, "agents", 0, "systemPrompt"], "{% if %}", "does not parse"),
        (["aggregator", "promptTemplate"], "{{ responsez }}", "undefined"),
        (["auth"], {"enabled": True}, "keysDir is required"),
        (["auth"], {}, "enabled"),
    ],
)
def test_config_rejects_mistakes(path: list[str | int], value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RouterConfig.model_validate(_with(path, value))


def test_a_config_without_auth_is_refused() -> None:
    # Open only where the config says so: a missing `auth` is an error, not an open router.
    data = _with(["auth"], None)
    del data["auth"]
    with pytest.raises(ValidationError, match="auth"):
        RouterConfig.model_validate(data)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ responses.__class__ }}",
        "{% for r in responses %}{{ r.content.__class__.__base__ }}{% endfor %}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_config_load_rejects_sandbox_escapes(tmp_path: Path, template: str) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(_with(["aggregator", "promptTemplate"], template)))
    with pytest.raises(ConfigError, match=r"SecurityError|unsafe|UndefinedError"):
        RouterConfig.from_file(path)


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        RouterConfig.from_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        RouterConfig.from_file(tmp_path / "list.yaml")


def test_from_spec_resolves_every_reference_and_counts_slots() -> None:
    spec = MoAPipelineSpec.model_validate(
        {
            "layers": [
                {
                    "agents": [
                        {"name": "a", "moeModelRef": {"name": "llama"}},
                        {"name": "b", "moeModelRef": {"name": "qwen"}},
                    ]
                },
                {"agents": [{"name": "c", "moeModelRef": {"name": "llama"}, "systemPrompt": "Refine."}]},
            ],
            "aggregator": {"moeModelRef": {"name": "llama"}},
            "policy": {"minResponses": 1, "onAgentError": "fail"},
        }
    )

    def resolve(ref: Any) -> ResolvedUpstream:
        name = ref.moe_model_ref.name
        return ResolvedUpstream(url=f"http://{name}.ns.svc:8000/v1", model=name)

    config = RouterConfig.from_spec("demo", spec, resolve, keys_dir="/keys")
    assert [a.name for a in config.layers[0].agents] == ["a", "b"]
    assert config.layers[1].agents[0].system_prompt == "Refine."
    assert config.aggregator.url == "http://llama.ns.svc:8000/v1"
    assert config.policy.on_agent_error == "fail"
    # Slots are counted on the spec's references (planner.pipeline does the same).
    layers = [[a.model_key for a in layer.agents] for layer in spec.layers]
    assert count_slots(layers, spec.aggregator.model_key) == {"moe:llama": 3, "moe:qwen": 1}
