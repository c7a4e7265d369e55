"""The router config's `playground` section: rendered only when the spec allows edits, written to the
ConfigMap and read back unchanged, and refused when it lacks a model the spec calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from playground_fixtures import playground_config

from kubemoe.router.config import ConfigError, RouterConfig

URL = "http://127.0.0.1:1/v1"


def test_the_section_is_rendered_only_when_edits_are_allowed() -> None:
    assert playground_config(URL, allow=False).playground is None
    pg = playground_config(URL, key_files={"b": "/secrets/k/b"}).playground
    assert pg is not None
    assert [(m.key, m.api_key_file) for m in pg.models] == [
        (f"endpoint:{URL}#a", None),
        (f"endpoint:{URL}#b", "/secrets/k/b"),
        (f"endpoint:{URL}#c", None),
        (f"endpoint:{URL}#agg", None),
    ]


def test_the_section_round_trips_through_the_config_file(tmp_path: Path) -> None:
    config = playground_config(URL, keys_dir="/keys", key_files={"b": "/secrets/k/b"}, maxAgents=5)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config.to_file_dict()))
    again = RouterConfig.from_file(path)
    assert again == config
    assert again.playground is not None
    assert again.playground.spec.playground.max_agents == 5


def test_a_section_missing_a_model_of_the_spec_is_refused(tmp_path: Path) -> None:
    data = playground_config(URL).to_file_dict()
    data["playground"]["models"] = [m for m in data["playground"]["models"] if not m["key"].endswith("#c")]
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"playground.models lacks models the spec calls: endpoint:.*#c"):
        RouterConfig.from_file(path)


def test_the_operators_render_resolves_the_models_an_edit_may_use() -> None:
    from kubemoe.api.moapipeline import MoAPipeline
    from kubemoe.render.moapipeline import render_moapipeline

    pipeline = MoAPipeline.model_validate(
        {
            "metadata": {"name": "chat", "namespace": "ml"},
            "spec": {
                "layers": [{"agents": [{"name": "x", "moeModelRef": {"name": "mixtral"}}]}],
                "aggregator": {
                    "endpoint": {
                        "url": "https://api.example.com/v1",
                        "model": "big",
                        "apiKeySecretRef": {"name": "keys", "key": "openai"},
                    }
                },
                "playground": {"allowOverrides": True},
            },
        }
    )
    objs = {o["kind"]: o for o in render_moapipeline(pipeline)}
    config = RouterConfig.model_validate(yaml.safe_load(objs["ConfigMap"]["data"]["router.yaml"]))
    assert config.playground is not None
    assert [(m.key, m.url, m.model, m.api_key_file) for m in config.playground.models] == [
        ("moe:mixtral", "http://mixtral.ml.svc.cluster.local:8000/v1", "mixtral", None),
        (
            "endpoint:https://api.example.com/v1#big",
            "https://api.example.com/v1",
            "big",
            "/var/run/secrets/kubemoe/keys/openai",
        ),
    ]
