"""The operator process itself on the real control plane: its endpoints, a SIGKILL in the middle of work,
two peered replicas of which only one acts, and a quiet resync that writes nothing to the API server."""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest

from .operator_harness import *  # noqa: F403 - fixtures and helpers
from .operator_harness import (
    Kube,
    OperatorProcess,
    cond,
    moe_doc,
    pods_of,
    sample,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.e2e

OLMOE = "allenai/OLMoE-1B-7B-0924"  # one GPU per pod: cheap on the fake fleet


@pytest.mark.e2e
def test_the_operator_serves_healthz_readyz_and_its_metrics(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    assert running_operator.http("/healthz") == (200, "ok")
    assert running_operator.http("/readyz") == (200, "ready")
    kube.apply(moe_doc("m", OLMOE, placement={"instanceTypes": ["p5.48xlarge"]}, replicas=1), namespace)
    wait_ready(kube, namespace, "m")
    status, text = running_operator.http("/metrics")
    assert status == 200
    for family in (
        "kubemoe_reconcile_total",
        "kubemoe_reconcile_duration_seconds",
        "kubemoe_managed_objects",
        "kubemoe_api_errors_total",
    ):
        assert re.search(rf"^# TYPE {family} ", text, re.M), f"{family} not exposed"
    assert running_operator.metric("kubemoe_reconcile_total", kind="MoEModel") >= 1
    assert running_operator.metric("kubemoe_reconcile_duration_seconds_count", kind="MoEModel") >= 1
    assert running_operator.metric("kubemoe_api_writes_total", verb="apply", kind="Deployment") >= 1
    assert running_operator.http("/nope")[0] == 404


def _children(kube: Kube, namespace: str) -> dict[str, list[dict]]:
    kinds = ["Deployment", "ReplicaSet", "Pod", "Service", "HTTPRoute", "PrometheusRule", "ServiceMonitor"]
    return {k: kube.list(k, namespace) for k in kinds}


@pytest.mark.e2e
def test_after_a_sigkill_mid_rollout_a_new_operator_converges_without_orphans_or_duplicates(
    operator_factory: Callable[..., OperatorProcess], kube: Kube, namespace: str
) -> None:
    first = operator_factory()
    names = [f"m{i}" for i in range(8)]
    # Four on p4d, four on p5: one GPU each, so every pod fits the fake fleet.
    docs = [
        moe_doc(
            n, OLMOE, placement={"instanceTypes": ["p4d.24xlarge" if i % 2 else "p5.48xlarge"]}, replicas=1
        )
        for i, n in enumerate(names)
    ]
    kube.apply(docs, namespace)
    # Kill it as soon as it has started writing children, while most CRs are still to do.
    wait_for(
        "the first child written",
        lambda: first.metric("kubemoe_api_writes_total", verb="apply") > 0,
        timeout_s=30,
        every_s=0.05,
    )
    first.kill(signal.SIGKILL)
    at_kill = {k: len(v) for k, v in _children(kube, namespace).items()}
    ready_at_kill = sum(
        cond(kube.get("MoEModel", namespace, n), "Ready").get("status") == "True" for n in names
    )

    second = operator_factory()
    for n in names:
        wait_ready(kube, namespace, n)

    crs = {n: kube.get("MoEModel", namespace, n) for n in names}
    uids = {o["metadata"]["uid"]: o for o in crs.values() if o}

    def converged() -> dict[str, list[dict]] | None:
        children = _children(kube, namespace)
        per_cr = Counter(
            (k, o["metadata"]["labels"].get("app.kubernetes.io/instance"))
            for k in ("Deployment", "Service", "PrometheusRule", "ServiceMonitor")
            for o in children[k]
        )
        live_pods = [p for p in children["Pod"] if not p["metadata"].get("deletionTimestamp")]
        if all(per_cr[(k, n)] == 1 for n in names for k in ("Deployment", "Service")) and len(live_pods) == 8:
            return children
        return None

    children = wait_for("exactly one Deployment, Service and pod per CR", converged)
    for kind in ("Deployment", "Service", "PrometheusRule", "ServiceMonitor"):
        assert len(children[kind]) == 8, (kind, [o["metadata"]["name"] for o in children[kind]])
        for obj in children[kind]:
            refs = obj["metadata"].get("ownerReferences") or []
            assert len(refs) == 1, f"{kind} {obj['metadata']['name']}: {refs}"
            assert refs[0]["uid"] in uids, f"orphan {kind} {obj['metadata']['name']}: {refs}"
    deploy_uids = {d["metadata"]["uid"] for d in children["Deployment"]}
    for rs in children["ReplicaSet"]:
        assert any(r["uid"] in deploy_uids for r in rs["metadata"].get("ownerReferences") or []), rs[
            "metadata"
        ]
    rs_uids = {r["metadata"]["uid"] for r in children["ReplicaSet"]}
    for pod in children["Pod"]:
        assert any(r["uid"] in rs_uids for r in pod["metadata"].get("ownerReferences") or []), pod["metadata"]
    for n in names:
        assert len([p for p in pods_of(kube, namespace, n) if p["status"].get("phase") == "Running"]) == 1, n
    assert second.metric("kubemoe_reconcile_total", kind="MoEModel") >= len(names)
    # What the kill interrupted (shown with -rA / on failure): the new process finished the rest.
    print(f"at SIGKILL: {at_kill}, {ready_at_kill}/8 CRs Ready")


def _writes(op: OperatorProcess) -> float:
    return op.metric("kubemoe_api_writes_total")


@pytest.mark.e2e
def test_with_two_peered_replicas_only_the_higher_priority_one_acts(
    operator_factory: Callable[..., OperatorProcess], kube: Kube, namespace: str
) -> None:
    # The operators watch only this namespace, so kopf peers through a namespaced KopfPeering `kubemoe`
    # (the CRDs come from manifests/operator/kopf-peering.yaml, installed by the `kube` fixture).
    kube.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=f"apiVersion: kopf.dev/v1\nkind: KopfPeering\nmetadata:\n  name: kubemoe\n  namespace: {namespace}\n",
    )
    low = operator_factory(standalone=False, priority=100)
    high = operator_factory(standalone=False, priority=200)

    def peers() -> dict | None:
        obj = kube.get("KopfPeering", namespace, "kubemoe")
        status = (obj or {}).get("status") or {}
        prios = sorted(int(v.get("priority", 0)) for v in status.values())
        return status if prios == [100, 200] else None

    wait_for("both peers' heartbeats in the KopfPeering", peers, timeout_s=30)
    time.sleep(2)  # kopf reacts to the peering change (the lower one pauses)

    kube.apply(moe_doc("m", OLMOE, placement={"instanceTypes": ["p5.48xlarge"]}, replicas=1), namespace)
    wait_ready(kube, namespace, "m")
    time.sleep(7)  # two resync periods: the follower's resync is gated by leadership too
    assert high.metric("kubemoe_reconcile_total", kind="MoEModel") >= 3
    assert _writes(high) > 0
    assert low.metric("kubemoe_reconcile_total") == 0, low.log()[-3000:]
    assert _writes(low) == 0, low.log()[-3000:]

    # The leader leaves (SIGTERM: kopf removes its own peering record on a clean exit, so the follower need
    # not wait for the 60 s heartbeat lifetime that a SIGKILL would cost): the follower takes over.
    high.kill(signal.SIGTERM, timeout_s=30)
    kube.merge_patch("MoEModel", namespace, "m", {"spec": {"serving": {"maxModelLen": 2048}}})

    def taken_over() -> dict | None:
        d = kube.get("Deployment", namespace, "m")
        cmd = d["spec"]["template"]["spec"]["containers"][0]["command"] if d else []
        return d if "--max-model-len=2048" in cmd else None

    wait_for("the follower applies the change", taken_over, timeout_s=45)
    wait_ready(kube, namespace, "m")
    assert low.metric("kubemoe_reconcile_total", kind="MoEModel") >= 1
    assert _writes(low) > 0


WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY"}
OPERATOR_RESOURCES = {
    "moemodels",
    "deployments",
    "services",
    "httproutes",
    "prometheusrules",
    "servicemonitors",
    "events",
    "leaderworkersets",
}
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _api_writes(kube: Kube) -> Counter[tuple[str, str, str, str]]:
    """The API server's own count of write requests to the operator's resources, by (group, resource,
    subresource, verb), from its /metrics."""
    text = kube.kubectl("get", "--raw", "/metrics").stdout
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m["labels"]))
        if labels.get("verb") in WRITE_VERBS and labels.get("resource") in OPERATOR_RESOURCES:
            key = (labels.get("group", ""), labels["resource"], labels.get("subresource", ""), labels["verb"])
            counts[key] += int(float(m["value"]))
    return counts


def _quiet_cluster(kube: Kube, namespace: str) -> bool:
    """No other e2e namespace is being torn down (its deletions would show up as writes)."""
    status, data = kube.call("GET", "/api/v1/namespaces", query=[("labelSelector", "kubemoe.dev/e2e")])
    assert status == 200
    return not any(
        ns["status"].get("phase") == "Terminating"
        for ns in data["items"]
        if ns["metadata"]["name"] != namespace
    )


@pytest.mark.e2e
def test_an_unchanged_resync_makes_no_write_to_the_api_server(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(sample("mixtral-8x7b-p4de.yaml"), namespace)
    wait_ready(kube, namespace, "mixtral-8x7b")
    wait_for("other test namespaces gone", lambda: _quiet_cluster(kube, namespace), timeout_s=60)

    # Settled: one more full resync period with no write from the operator.
    def settled() -> bool:
        before = _writes(running_operator)
        time.sleep(3.5)
        return _writes(running_operator) == before

    wait_for("the operator settled", settled, timeout_s=30, every_s=0)

    reconciles0 = running_operator.metric("kubemoe_reconcile_total", kind="MoEModel")
    writes0 = _writes(running_operator)
    api0 = _api_writes(kube)
    time.sleep(10)  # three resyncs at --resync-seconds 3
    api1 = _api_writes(kube)
    reconciles1 = running_operator.metric("kubemoe_reconcile_total", kind="MoEModel")
    writes1 = _writes(running_operator)

    # The series is read right: the operator's own applies of this test are in it.
    assert api0[("apps", "deployments", "", "APPLY")] >= 1, dict(api0)
    assert reconciles1 - reconciles0 >= 3, f"only {reconciles1 - reconciles0} reconciles in 10 s"
    assert writes1 == writes0, running_operator.metrics()
    diff = {k: api1[k] - api0[k] for k in api1 if api1[k] != api0[k]}
    assert diff == {}, f"write requests reached the API server during quiet resyncs: {diff}"
