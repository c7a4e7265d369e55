"""What the renderer carries from a MoAPipeline into the router's ConfigMap and pod: deadlines, sizing, keys."""

from __future__ import annotations

from typing import Any

import yaml

from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.render.moapipeline import render_moapipeline
from kubemoe.router.config import RouterConfig


def pipeline(**spec: Any) -> MoAPipeline:
    return MoAPipeline.model_validate(
        {
            "metadata": {"name": "moa", "namespace": "ml", "uid": "u1"},
            "spec": {
                "layers": [{"agents": [{"name": "a", "moeModelRef": {"name": "m"}}]}],
                "aggregator": {"moeModelRef": {"name": "m"}},
                **spec,
            },
        }
    )


def rendered(p: MoAPipeline) -> tuple[RouterConfig, dict[str, Any]]:
    objs = {o["kind"]: o for o in render_moapipeline(p)}
    config = RouterConfig.model_validate(yaml.safe_load(objs["ConfigMap"]["data"]["router.yaml"]))
    return config, objs["Deployment"]["spec"]["template"]["spec"]


def test_deadlines_reach_the_router_config() -> None:
    policy = {
        "requestTimeoutSeconds": 90,
        "layerTimeoutSeconds": 20,
        "aggregatorTimeoutSeconds": 60,
        "streamIdleTimeoutSeconds": 15,
    }
    config, _ = rendered(pipeline(policy=policy))
    p = config.policy
    assert (p.request_timeout_seconds, p.layer_timeout_seconds) == (90, 20)
    assert (p.aggregator_timeout_seconds, p.stream_idle_timeout_seconds) == (60, 15)
    # Unset, the documented defaults are written out, so the router never guesses.
    default, _ = rendered(pipeline())
    assert default.policy.request_timeout_seconds == 300
    assert default.policy.stream_idle_timeout_seconds == 30


def test_workers_reach_the_router_command_with_a_metrics_volume() -> None:
    _, pod = rendered(pipeline(workers=3))
    container = pod["containers"][0]
    assert "--workers=3" in container["command"]
    assert container["env"] == [{"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/run/kubemoe-metrics"}]
    assert {"name": "metrics", "mountPath": "/run/kubemoe-metrics"} in container["volumeMounts"]
    assert {"name": "metrics", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}} in pod["volumes"]
    assert container["resources"]["requests"]["cpu"] == "750m"
    # One worker (the default): the command and pod are what they were before the field existed.
    _, single = rendered(pipeline())
    assert not any(arg.startswith("--workers") for arg in single["containers"][0]["command"])
    assert "env" not in single["containers"][0]
    assert single["containers"][0]["resources"]["requests"]["cpu"] == "250m"
