"""The status tells the truth on every path, on the real control plane: an invalid or unplannable object of
either kind sets every condition for its generation and posts a Warning; a child the API server rejects
(its schema, a quota) is named in the status with the API server's message, nothing of the set is applied,
and the retry shows; pod failures get stable reasons."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from .operator_harness import *  # noqa: F403 - fixtures and helpers
from .operator_harness import (
    SAMPLES,
    Kube,
    OperatorProcess,
    cond,
    events,
    moe_doc,
    pods_of,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.e2e

OLMOE = "allenai/OLMoE-1B-7B-0924"
MODEL_TYPES = ["Planned", "Progressing", "Available", "Ready", "Degraded"]
PIPELINE_TYPES = [*MODEL_TYPES, "CapacityOK"]


def _small(name: str, **spec: Any) -> dict[str, Any]:
    return moe_doc(name, OLMOE, placement={"instanceTypes": ["p5.48xlarge"]}, replicas=1, **spec)


def _settled(kube: Kube, kind: str, namespace: str, name: str, types: list[str]) -> Callable[[], Any]:
    """A probe: the object once every condition of `types` is there for its current generation."""

    def probe() -> dict[str, Any] | None:
        obj = kube.get(kind, namespace, name)
        if obj is None:
            return None
        gen = obj["metadata"]["generation"]
        st = obj.get("status") or {}
        if st.get("observedGeneration") != gen:
            return None
        if all(cond(obj, t).get("observedGeneration") == gen for t in types):
            return obj
        return None

    return probe


def _warnings(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    return [e for e in events(kube, namespace, name) if e.get("type") == "Warning"]


def test_an_invalid_pipeline_and_an_unplannable_model_report_every_condition_alike(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    # An EM SPACE in a URL: Go's \s (the API server's pattern check) is ASCII, pydantic's is Unicode, so
    # this passes admission and only the operator's validation refuses it.
    pipeline = yaml.safe_load((SAMPLES / "moa-pipeline.yaml").read_text())
    pipeline["metadata"].pop("namespace", None)
    pipeline["spec"]["aggregator"] = {"endpoint": {"url": "http://a\u2003b/v1", "model": "m"}}
    kube.apply(pipeline, namespace)
    kube.apply(moe_doc("huge", "no-such/model-in-the-catalog"), namespace)

    name = pipeline["metadata"]["name"]
    bad = wait_for(
        "the pipeline's conditions", _settled(kube, "MoAPipeline", namespace, name, PIPELINE_TYPES)
    )
    unplanned = wait_for("the model's conditions", _settled(kube, "MoEModel", namespace, "huge", MODEL_TYPES))
    for obj, reason in ((bad, "InvalidSpec"), (unplanned, "UnknownModel")):
        assert cond(obj, "Planned")["status"] == "False"
        assert cond(obj, "Planned")["reason"] == reason
        assert cond(obj, "Ready")["status"] == "False"
        assert cond(obj, "Ready")["reason"] == "NotPlanned"
        assert cond(obj, "Degraded")["status"] == "True"
        assert cond(obj, "Degraded")["reason"] == reason
        assert cond(obj, "Available")["status"] == "Unknown"
        assert cond(obj, "Progressing")["status"] == "False"
    assert "aggregator.endpoint.url" in cond(bad, "Planned")["message"]
    assert cond(bad, "CapacityOK")["status"] == "Unknown"
    for who, reason in ((name, "InvalidSpec"), ("huge", "UnknownModel")):
        wait_for(
            f"a Warning {reason} event for {who}",
            lambda who=who, reason=reason: [
                e for e in _warnings(kube, namespace, who) if e["reason"] == reason
            ],
        )
    # No router for an invalid pipeline; and one Warning, not one per resync.
    assert kube.get("Deployment", namespace, f"{name}-router") is None
    wait_for(
        "two more resyncs",
        lambda: (
            running_operator.metric(
                "kubemoe_reconcile_errors_total", kind="MoAPipeline", reason="InvalidSpec"
            )
            >= 3
        ),
    )
    assert len([e for e in _warnings(kube, namespace, name) if e["reason"] == "InvalidSpec"]) == 1


def test_a_child_the_api_server_rejects_leaves_no_partial_set_and_the_status_says_which_and_why(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    # A path prefix our schema admits but the Gateway API's HTTPRoute CEL refuses ("must not contain
    # '//'"): only the child's own API can judge it (bad hostnames are now refused at admission already).
    doc = _small("m", routing={"parentRefs": [{"name": "gw"}], "pathPrefix": "/v1//m"})
    kube.apply(doc, namespace)
    probe = _settled(kube, "MoEModel", namespace, "m", MODEL_TYPES)

    def rejected() -> dict[str, Any] | None:
        obj = probe()
        return obj if obj and cond(obj, "Ready").get("reason") == "ApplyRejected" else None

    obj = wait_for("Ready=False ApplyRejected", rejected)
    ready = cond(obj, "Ready")
    assert ready["status"] == "False"
    assert "HTTPRoute/m" in ready["message"], ready
    assert "must not contain '//'" in ready["message"], ready  # the API server's own words
    assert cond(obj, "Planned")["status"] == "True", "the plan was fine; applying it was not"
    assert "attempt" in cond(obj, "Degraded")["message"], cond(obj, "Degraded")
    warnings = [e for e in _warnings(kube, namespace, "m") if e["reason"] == "ApplyRejected"]
    assert warnings
    assert "HTTPRoute/m" in warnings[0]["message"]
    # All or nothing: the route was rejected in the dry run, so neither the workload nor its Service exist.
    for kind in ("Deployment", "Service", "HTTPRoute", "PrometheusRule", "ServiceMonitor"):
        assert kube.get(kind, namespace, "m") is None, f"{kind} applied though the set was rejected"
    assert not pods_of(kube, namespace, "m")
    assert (
        running_operator.metric("kubemoe_reconcile_errors_total", kind="MoEModel", reason="ApplyRejected")
        >= 1
    )

    # Fixed: the whole set is applied and the model becomes Ready.
    fixed = copy.deepcopy(doc)
    fixed["spec"]["routing"]["pathPrefix"] = "/v1/m"
    kube.apply(fixed, namespace)
    wait_ready(kube, namespace, "m")
    assert kube.get("HTTPRoute", namespace, "m") is not None


def test_a_quota_that_forbids_a_child_is_reported_with_its_message_and_retried_until_lifted(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-services", "namespace": namespace},
        "spec": {"hard": {"services": "0"}},
    }
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(quota))
    wait_for(  # the quota controller has counted the namespace (admission checks against status.hard)
        "the quota in force",
        lambda: (
            kube.kubectl("get", "resourcequota", "no-services", "-n", namespace, "-o", "yaml").stdout.count(
                "hard:"
            )
            >= 2
        ),
    )
    kube.apply(_small("m"), namespace)
    probe = _settled(kube, "MoEModel", namespace, "m", MODEL_TYPES)

    def forbidden() -> dict[str, Any] | None:
        obj = probe()
        return obj if obj and cond(obj, "Ready").get("reason") == "ApplyForbidden" else None

    obj = wait_for("Ready=False ApplyForbidden", forbidden)
    assert "exceeded quota" in cond(obj, "Ready")["message"], cond(obj, "Ready")
    assert "Service/m" in cond(obj, "Ready")["message"]
    assert kube.get("Deployment", namespace, "m") is None, "the Deployment was applied without its Service"

    # The retries are visible: Degraded counts the attempts, with a growing backoff.
    def attempt(n: int) -> Callable[[], Any]:
        return lambda: (
            f"(attempt {n};" in cond(kube.get("MoEModel", namespace, "m"), "Degraded").get("message", "")
        )

    wait_for("a third attempt in Degraded", attempt(3), timeout_s=30)
    # ... and they wait out their backoff (1 s, 2 s, ...): our own status writes do not cut it short.
    failures = running_operator.metric(
        "kubemoe_reconcile_errors_total", kind="MoEModel", reason="ApplyForbidden"
    )
    assert failures <= 5, f"{failures} failed reconciles by the third attempt: a hot loop"
    kube.kubectl("delete", "resourcequota", "no-services", "-n", namespace)
    wait_ready(kube, namespace, "m", timeout_s=90)  # within the backoff (1, 2, 4, ... s) after the lift
    ready = wait_ready(kube, namespace, "m")
    assert cond(ready, "Degraded")["status"] == "False"


def _kubelet_says(kube: Kube, namespace: str, pod: dict[str, Any], container_status: dict[str, Any]) -> None:
    """Write what a kubelet would write about a failing container (kwok's fake kubelet never does)."""
    name = pod["metadata"]["name"]
    status = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
                {"type": "PodScheduled", "status": "True"},
            ],
            "containerStatuses": [
                {
                    "name": pod["spec"]["containers"][0]["name"],
                    "image": pod["spec"]["containers"][0]["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 3,
                    **container_status,
                }
            ],
        }
    }
    code, data = kube.call(
        "PATCH",
        kube.path("Pod", namespace, name) + "/status",
        status,
        content_type="application/strategic-merge-patch+json",
    )
    assert code == 200, data


@pytest.mark.parametrize(
    ("container_status", "reason", "fragment"),
    [
        (
            {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}},
            "ImagePullFailed",
            "Back-off",
        ),
        (
            {
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"reason": "Error", "exitCode": 2}},
            },
            "CrashLoopBackOff",
            "exit code 2",
        ),
        (
            {
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
            },
            "OOMKilled",
            "OOM-killed",
        ),
    ],
    ids=["image-pull", "crash-loop", "oom"],
)
def test_a_failing_model_pod_gets_a_stable_reason(
    running_operator: OperatorProcess,
    kube: Kube,
    namespace: str,
    container_status: dict[str, Any],
    reason: str,
    fragment: str,
) -> None:
    kube.apply(_small("m"), namespace)
    wait_ready(kube, namespace, "m")
    (pod,) = pods_of(kube, namespace, "m")
    _kubelet_says(kube, namespace, pod, container_status)

    def degraded() -> dict[str, Any] | None:
        obj = kube.get("MoEModel", namespace, "m")
        return obj if cond(obj, "Degraded").get("reason") == reason else None

    obj = wait_for(f"Degraded={reason}", degraded, timeout_s=30)
    assert cond(obj, "Degraded")["status"] == "True"
    assert fragment in cond(obj, "Degraded")["message"], cond(obj, "Degraded")
    assert pod["metadata"]["name"] in cond(obj, "Degraded")["message"]
    assert cond(obj, "Ready")["status"] == "False"
    assert cond(obj, "Ready")["reason"] == reason


def test_a_model_in_a_namespace_being_deleted_says_so_once_and_is_not_retried(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    """Seen in CI: a test's namespace was still being deleted when the next test's cluster-wide operator
    reconciled a model in it, and every re-create of a child came back 403 (NamespaceLifecycle), logged,
    evented and retried as if RBAC were missing. A ValidatingAdmissionPolicy that refuses to delete the
    labelled model holds the namespace in that state here for as long as the test needs."""
    hold = f"e2e-hold-{namespace}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": hold},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": ["kubemoe.io"], "apiVersions": ["*"], "operations": ["DELETE"], "resources": ["moemodels"]}
                ]
            },
            "validations": [
                {
                    "expression": "!(has(oldObject.metadata.labels) && 'kubemoe.dev/e2e-hold' in oldObject.metadata.labels)",
                    "message": "held by the e2e test",
                }
            ],
        },
    }  # fmt: skip
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": hold},
        "spec": {
            "policyName": hold,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    model = _small("m")
    model["metadata"]["labels"] = {"kubemoe.dev/e2e-hold": "true"}
    kube.apply(model, namespace)
    wait_ready(kube, namespace, "m")
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([policy, binding]))
    try:
        wait_for(  # the policy is in force once a server-side dry-run delete is refused
            "the hold in force",
            lambda: (
                kube.kubectl(
                    "delete", "moemodel", "m", "-n", namespace, "--dry-run=server", check=False
                ).returncode
                != 0
            ),
            timeout_s=30,
        )
        kube.kubectl("delete", "namespace", namespace, "--wait=false")

        def terminating() -> dict[str, Any] | None:
            obj = kube.get("MoEModel", namespace, "m")
            return obj if cond(obj, "Ready").get("reason") == "NamespaceTerminating" else None

        # The namespace controller deletes the Deployment and Service; the operator's re-create is refused.
        obj = wait_for("Ready=False NamespaceTerminating", terminating, timeout_s=90)
        assert cond(obj, "Ready")["status"] == "False"
        assert "being terminated" in cond(obj, "Ready")["message"], cond(obj, "Ready")
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        # Not retried on a backoff, and no attempt to post a Warning event into the dying namespace.
        time.sleep(6)  # a few resyncs and backoffs' worth
        assert running_operator.metric("kubemoe_reconcile_errors_total", reason="ApplyForbidden") == 0
        log = running_operator.log()
        assert "could not post event" not in log, log[-3000:]
        assert f"reconcile MoEModel {namespace}/m failed" not in log, log[-3000:]
        assert "its namespace is being deleted" in log, log[-3000:]
    finally:
        kube.kubectl(
            "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", hold, check=False
        )
