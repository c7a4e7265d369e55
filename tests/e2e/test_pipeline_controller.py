"""The MoAPipeline controller on the real control plane: the router's children, model references,
readiness that follows the referenced MoEModels, and the capacity condition."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from .harness import wait_for
from .operator_harness import *  # noqa: F403  (fixtures: kube, running_operator, namespace, ...)
from .operator_harness import SAMPLES, Kube, OperatorProcess, cond, moe_doc, wait_ready

pytestmark = pytest.mark.e2e


def _pipeline(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    proc = kube.kubectl("get", "moa", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _pipeline_doc(**spec_overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((SAMPLES / "moa-pipeline.yaml").read_text())
    doc["metadata"].pop("namespace", None)
    doc["spec"].update(spec_overrides)
    return doc


def _condition_is(
    kube: Kube, namespace: str, name: str, type_: str, status: str, reason: str | None = None
) -> Any:
    def probe() -> dict[str, Any] | None:
        obj = _pipeline(kube, namespace, name)
        c = cond(obj, type_)
        if c.get("status") == status and (reason is None or c.get("reason") == reason):
            return obj
        return None

    return wait_for(f"MoAPipeline {name} {type_}={status} {reason or ''}", probe, timeout_s=60)


def _models(kube: Kube, namespace: str) -> None:
    kube.apply(
        [
            moe_doc(
                "mixtral-8x7b",
                "mistralai/Mixtral-8x7B-Instruct-v0.1",
                placement={"instanceTypes": ["p4de.24xlarge"]},
                replicas=1,
            ),
            moe_doc(
                "mixtral-8x22b",
                "mistralai/Mixtral-8x22B-Instruct-v0.1",
                placement={"instanceTypes": ["p5.48xlarge"]},
                replicas=1,
            ),
        ],
        namespace,
    )


def test_pipeline_renders_its_router_and_becomes_ready_once_its_models_are(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(_pipeline_doc(), namespace)
    # Models missing: the router is deployed, but the pipeline says which models it waits for.
    waiting = _condition_is(kube, namespace, "moa-chat", "Ready", "False", "ModelNotFound")
    assert "mixtral-8x22b" in cond(waiting, "Ready")["message"]
    assert cond(waiting, "Degraded")["reason"] == "ModelNotFound"
    deployment = kube.get("Deployment", namespace, "moa-chat-router")
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["command"][:2] == ["kubemoe", "router"]

    _models(kube, namespace)
    wait_ready(kube, namespace, "mixtral-8x7b")
    wait_ready(kube, namespace, "mixtral-8x22b")
    ready = _condition_is(kube, namespace, "moa-chat", "Ready", "True")
    status = ready["status"]
    assert status["endpoint"] == f"http://moa-chat-router.{namespace}.svc.cluster.local:8080/v1"
    assert (status["layerCount"], status["agentCount"]) == (2, 4)
    urls = {a["name"]: a["url"] for a in status["agents"]}
    assert urls["mixtral-small"] == f"http://mixtral-8x7b.{namespace}.svc.cluster.local:8000/v1"
    assert all(a["ready"] for a in status["agents"])
    for kind in ("Service", "HTTPRoute", "PrometheusRule", "ServiceMonitor"):
        assert kube.get(kind, namespace, "moa-chat-router") is not None, kind
    # No gateway controller serves this cluster's Gateway: the route's status stays unwritten, and the
    # pipeline says so rather than claiming the route works (tests/e2e/test_gateway_traefik.py: accepted).
    route = cond(ready, "RouteAccepted")
    assert (route["status"], route["reason"]) == ("Unknown", "RouteStatusPending"), route
    assert route["observedGeneration"] == ready["metadata"]["generation"]


def test_router_config_follows_a_referenced_models_served_name(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    _models(kube, namespace)
    kube.apply(_pipeline_doc(), namespace)
    _condition_is(kube, namespace, "moa-chat", "Ready", "True")

    def config() -> dict[str, Any]:
        proc = kube.kubectl("get", "configmap", "moa-chat-router", "-n", namespace, "-o", "json")
        return dict(yaml.safe_load(json.loads(proc.stdout)["data"]["router.yaml"]))

    assert config()["layers"][0]["agents"][0]["model"] == "mixtral-8x7b"
    kube.merge_patch(
        "MoEModel", namespace, "mixtral-8x7b", {"spec": {"model": {"servedModelName": "small-moe"}}}
    )
    wait_for(
        "the router config to use the new served name",
        lambda: config()["layers"][0]["agents"][0]["model"] == "small-moe",
        timeout_s=60,
    )


def test_capacity_condition_compares_the_target_with_the_bottleneck_model(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    _models(kube, namespace)
    kube.apply(_pipeline_doc(), namespace)
    # mixtral-8x22b: 3 calls per request at 8 calls/s on 1 replica -> stable below 8/3 = 2.67 req/s.
    ok = _condition_is(kube, namespace, "moa-chat", "CapacityOK", "True", "Stable")
    assert ok["status"]["capacity"]["maxStableRequestsPerSecond"] == pytest.approx(8 / 3, rel=1e-3)
    assert ok["status"]["capacity"]["bottleneck"] == "moe:mixtral-8x22b"
    kube.kubectl(
        "patch",
        "moa",
        "moa-chat",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"capacity": {"targetRequestsPerSecond": 5}}}),
    )
    over = _condition_is(kube, namespace, "moa-chat", "CapacityOK", "False", "OverCapacity")
    assert "add replicas" in cond(over, "CapacityOK")["message"]


def test_deleting_a_pipeline_garbage_collects_its_router(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(_pipeline_doc(), namespace)
    wait_for(
        "the router Deployment", lambda: kube.get("Deployment", namespace, "moa-chat-router"), timeout_s=60
    )
    kube.kubectl("delete", "moa", "moa-chat", "-n", namespace)
    wait_for(
        "the router's children to be garbage-collected",
        lambda: all(kube.get(k, namespace, "moa-chat-router") is None for k in ("Deployment", "Service")),
        timeout_s=60,
    )
