"""What the running operator keeps true on the real control plane: drift is undone, children that are no
longer desired are pruned, an infeasible spec is refused with a message and no workload, the scale
subresource drives the Deployment (and an autoscaler's count is left alone), and a missing optional API
(prometheus-operator) degrades the CR instead of breaking it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .operator_harness import *  # noqa: F403 - fixtures and helpers
from .operator_harness import (
    Kube,
    OperatorProcess,
    cond,
    events,
    moe_doc,
    owned_by,
    pods_of,
    sample,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.e2e

NAME = "mixtral-8x7b"
OLMOE = "allenai/OLMoE-1B-7B-0924"  # one GPU per pod: cheap on the fake fleet


def _args(deploy: dict) -> list[str]:
    return list(deploy["spec"]["template"]["spec"]["containers"][0].get("command", []))


@pytest.mark.e2e
def test_a_deleted_service_and_an_edited_deployment_argument_are_restored_within_seconds(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(sample("mixtral-8x7b-p4de.yaml"), namespace)
    wait_ready(kube, namespace, NAME)
    svc = kube.get("Service", namespace, NAME)
    assert svc is not None

    kube.delete("Service", namespace, NAME)
    # The operator may recreate it faster than a poll could see it gone: a new uid proves both.
    old_uid = svc["metadata"]["uid"]

    def recreated() -> dict | None:
        obj = kube.get("Service", namespace, NAME)
        return obj if obj and obj["metadata"]["uid"] != old_uid else None

    started = time.monotonic()
    restored = wait_for("the Service recreated", recreated, timeout_s=15, every_s=0.1)
    print(f"Service recreated after {time.monotonic() - started:.1f}s")
    assert restored["spec"]["ports"][0]["port"] == 8000

    deploy = kube.get("Deployment", namespace, NAME)
    assert deploy is not None
    command = _args(deploy)
    i = command.index("--max-model-len=32768")
    edited = kube.json_patch(
        "Deployment",
        namespace,
        NAME,
        [
            {"op": "test", "path": f"/spec/template/spec/containers/0/command/{i}", "value": command[i]},
            {
                "op": "replace",
                "path": f"/spec/template/spec/containers/0/command/{i}",
                "value": "--max-model-len=99",
            },
        ],
    )

    assert "--max-model-len=99" in _args(edited)

    def undone() -> bool:
        d = kube.get("Deployment", namespace, NAME)
        return (
            d is not None
            and _args(d) == command
            and d["metadata"]["generation"] > edited["metadata"]["generation"]
        )

    wait_for("the edited argument restored", undone, timeout_s=15)
    wait_ready(kube, namespace, NAME)


@pytest.mark.e2e
def test_children_no_longer_desired_are_pruned_and_a_two_node_plan_replaces_the_deployment_by_a_leaderworkerset(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(sample("mixtral-8x7b-p4de.yaml"), namespace)
    moe = wait_ready(kube, namespace, NAME)
    assert kube.get("HTTPRoute", namespace, NAME)
    assert kube.get("PrometheusRule", namespace, NAME)

    kube.json_patch("MoEModel", namespace, NAME, [{"op": "remove", "path": "/spec/routing"}])
    wait_for("the HTTPRoute pruned", lambda: kube.get("HTTPRoute", namespace, NAME) is None, timeout_s=15)
    kube.merge_patch("MoEModel", namespace, NAME, {"spec": {"monitoring": {"alerts": {"enabled": False}}}})
    wait_for(
        "the PrometheusRule pruned", lambda: kube.get("PrometheusRule", namespace, NAME) is None, timeout_s=15
    )
    # The rest stays.
    for kind in ("Deployment", "Service", "ServiceMonitor"):
        obj = kube.get(kind, namespace, NAME)
        assert obj is not None, kind
        assert owned_by(obj, moe), kind
    wait_ready(kube, namespace, NAME)

    # DeepSeek-V3 fits one p5en node (8 x H200) -> a Deployment; restricted to p5.48xlarge (8 x H100) it
    # needs two nodes -> a LeaderWorkerSet, and the Deployment is pruned.
    ds = "deepseek-v3"
    kube.apply(
        moe_doc(
            ds,
            "deepseek-ai/DeepSeek-V3",
            placement={"instanceTypes": ["p5en.48xlarge"]},
            serving={"maxModelLen": 32768},
            replicas=1,
        ),
        namespace,
    )
    wait_ready(kube, namespace, ds)
    assert kube.get("Deployment", namespace, ds) is not None
    assert kube.get("LeaderWorkerSet", namespace, f"{ds}-lws") is None

    kube.merge_patch("MoEModel", namespace, ds, {"spec": {"placement": {"instanceTypes": ["p5.48xlarge"]}}})
    lws = wait_for(
        "the LeaderWorkerSet", lambda: kube.get("LeaderWorkerSet", namespace, f"{ds}-lws"), timeout_s=30
    )
    wait_for("the Deployment pruned", lambda: kube.get("Deployment", namespace, ds) is None, timeout_s=30)
    owner = kube.get("MoEModel", namespace, ds)
    assert owner is not None
    assert owned_by(lws, owner)
    spec = lws["spec"]
    assert spec["replicas"] == 1
    assert spec["leaderWorkerTemplate"]["size"] == 2
    leader = spec["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
    worker = spec["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    for pod in (leader, worker):
        assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] in ("8", 8)
    assert kube.get("Service", namespace, ds) is not None

    if not _lws_controller_running(kube):
        # No LeaderWorkerSet controller runs in this cluster (only its CRD is installed), so no LWS pods
        # will ever appear: the CR is planned for 2 nodes but honestly reports that it waits for pods.
        def waiting() -> dict | None:
            obj = kube.get("MoEModel", namespace, ds)
            if obj and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]:
                ready = cond(obj, "Ready")
                if ready.get("status") == "False" and ready.get("reason") == "WaitingForPods":
                    return obj
            return None

        obj = wait_for("Ready False / WaitingForPods", waiting, timeout_s=30)
    else:
        # hack/cluster runs the real LWS controller manager: it makes a leader and a worker pod, one per
        # p5 node (each asks for all 8 GPUs), and the CR becomes Ready.
        obj = wait_ready(kube, namespace, ds)
        selector = f"leaderworkerset.sigs.k8s.io/name={ds}-lws"
        types = kube.node_instance_types()

        def two_pods_on_p5() -> list[dict] | None:
            pods = [p for p in kube.list("Pod", namespace, selector) if p["status"].get("phase") == "Running"]
            nodes = {p["spec"].get("nodeName") for p in pods}
            return pods if len(pods) == 2 and {types.get(n) for n in nodes} == {"p5.48xlarge"} else None

        wait_for("leader and worker Running on the two p5 nodes", two_pods_on_p5)
    assert obj["status"]["plan"]["nodesPerReplica"] == 2
    assert cond(obj, "Planned")["status"] == "True"

    def deployment_pods() -> list[dict]:
        return [
            p
            for p in pods_of(kube, namespace, ds)
            if any(r.get("kind") == "ReplicaSet" for r in p["metadata"].get("ownerReferences") or [])
        ]

    wait_for("the Deployment's pods gone", lambda: not deployment_pods(), timeout_s=30)


def _lws_controller_running(kube: Kube) -> bool:
    """Whether a LeaderWorkerSet controller serves this cluster (its admission webhooks are registered)."""
    status, data = kube.call("GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations")
    assert status == 200, data
    return any(
        "leaderworkerset" in (hook.get("name") or "")
        for cfg in data.get("items", [])
        for hook in cfg.get("webhooks") or []
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("model", "placement", "fixed"),
    [
        pytest.param(
            "mistralai/Mixtral-8x7B-Instruct-v0.1",
            {"instanceTypes": ["p4d.24xlarge"], "tensorParallelSize": 2},
            [{"op": "remove", "path": "/spec/placement/tensorParallelSize"}],
            id="mixtral-tp2-on-p4d",
        ),
        pytest.param(
            "deepseek-ai/DeepSeek-V3",
            {"instanceTypes": ["g5.12xlarge"]},
            [{"op": "replace", "path": "/spec/placement/instanceTypes", "value": ["p5en.48xlarge"]}],
            id="deepseek-v3-on-g5",
        ),
    ],
)
def test_an_infeasible_moemodel_is_refused_with_what_to_change_and_deploys_once_fixed(
    running_operator: OperatorProcess, kube: Kube, namespace: str, model: str, placement: dict, fixed: list
) -> None:
    name = "infeasible"
    kube.apply(
        moe_doc(name, model, placement=placement, serving={"maxModelLen": 32768}, replicas=1), namespace
    )

    def refused() -> dict | None:
        obj = kube.get("MoEModel", namespace, name)
        return obj if obj and cond(obj, "Planned").get("status") == "False" else None

    obj = wait_for("Planned=False", refused)
    planned, ready = cond(obj, "Planned"), cond(obj, "Ready")
    assert planned["reason"] == "InsufficientMemory", planned
    message = planned["message"]
    # It says what to change: a plan that fits, or which knobs to turn.
    assert any(hint in message for hint in ("a plan that fits", "Allow larger instance types")), message
    assert ready["status"] == "False", ready
    assert ready["reason"] == "NotPlanned", ready
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    warnings = [e for e in events(kube, namespace, name) if e.get("type") == "Warning"]
    assert warnings, "no Warning Event"
    assert warnings[0]["reason"] == "InsufficientMemory", warnings

    # Two resyncs later: still nothing rendered, and the Warning was not repeated.
    running_operator.wait_resyncs(2)
    for kind in ("Deployment", "Service", "HTTPRoute", "PrometheusRule", "ServiceMonitor", "LeaderWorkerSet"):
        assert kube.list(kind, namespace) == [], f"{kind} created for an infeasible CR"
    assert len([e for e in events(kube, namespace, name) if e.get("type") == "Warning"]) == 1

    kube.json_patch("MoEModel", namespace, name, fixed)
    moe = wait_ready(kube, namespace, name)
    assert cond(moe, "Planned")["status"] == "True"
    deploy = kube.get("Deployment", namespace, name)
    assert deploy is not None
    assert owned_by(deploy, moe)
    assert kube.get("Service", namespace, name) is not None


@pytest.mark.e2e
def test_the_scale_subresource_drives_the_deployment_and_an_autoscalers_count_is_left_alone(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(moe_doc("scaled", OLMOE, placement={"instanceTypes": ["p5.48xlarge"]}, replicas=1), namespace)
    wait_ready(kube, namespace, "scaled")
    kube.kubectl("scale", "moe/scaled", "-n", namespace, "--replicas", "3")

    def scaled() -> dict | None:
        d = kube.get("Deployment", namespace, "scaled")
        return d if d and d["spec"]["replicas"] == 3 else None

    wait_for("Deployment replicas 3", scaled, timeout_s=20)
    moe = wait_ready(kube, namespace, "scaled")
    assert moe["spec"]["replicas"] == 3
    assert moe["status"]["replicas"] == 3
    assert moe["status"]["readyReplicas"] == 3
    scale = kube.kubectl(
        "get", "--raw", f"/apis/kubemoe.io/v1alpha1/namespaces/{namespace}/moemodels/scaled/scale"
    )
    assert yaml.safe_load(scale.stdout)["status"]["replicas"] == 3

    # spec.replicas unset: an autoscaler (here: kubectl scale on the Deployment) owns the count.
    kube.apply(moe_doc("autoscaled", OLMOE, placement={"instanceTypes": ["p5.48xlarge"]}), namespace)
    wait_ready(kube, namespace, "autoscaled")
    kube.kubectl("scale", "deployment/autoscaled", "-n", namespace, "--replicas", "2")
    wait_for(
        "the CR reports 2 replicas",
        lambda: (
            (kube.get("MoEModel", namespace, "autoscaled") or {}).get("status", {}).get("readyReplicas") == 2
        ),
        timeout_s=20,
    )
    running_operator.wait_resyncs(2)
    deploy = kube.get("Deployment", namespace, "autoscaled")
    assert deploy is not None
    assert deploy["spec"]["replicas"] == 2, "the operator reverted the autoscaler's count"
    assert wait_ready(kube, namespace, "autoscaled")["status"]["replicas"] == 2


def _crd_source(crd: str) -> Path | None:
    """The file ``hack/cluster`` installed a prometheus-operator CRD from (the Go module cache), if there."""
    pins = dict(
        line.split("=", 1)
        for line in (Path(__file__).resolve().parents[2] / "hack" / "versions.env").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    version = pins.get("PROMETHEUS_OPERATOR_VERSION", "").strip().strip('"')
    try:
        modcache = subprocess.run(
            ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        modcache = str(Path.home() / "go" / "pkg" / "mod")
    path = (
        Path(modcache)
        / f"github.com/prometheus-operator/prometheus-operator@v{version}"
        / f"example/prometheus-operator-crd/monitoring.coreos.com_{crd.split('.', maxsplit=1)[0]}.yaml"
    )
    return path if path.is_file() else None


def _saved_crd(kube: Kube, crd: str, tmp_path: Path) -> Path:
    """Where to restore ``crd`` from: hack/cluster's source file, else the live definition (cleaned)."""
    source = _crd_source(crd)
    if source is not None:
        return source
    live = yaml.safe_load(kube.kubectl("get", "crd", crd, "-o", "yaml").stdout)
    live.pop("status", None)
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        live["metadata"].pop(key, None)
    path = tmp_path / f"{crd}.yaml"
    path.write_text(yaml.safe_dump(live))
    return path


def _served(kube: Kube, plural: str) -> int:
    return int(kube.call("GET", f"/apis/monitoring.coreos.com/v1/{plural}")[0])


@pytest.mark.e2e
@pytest.mark.parametrize(
    "deleted",
    [
        pytest.param(
            ["servicemonitors.monitoring.coreos.com"],
            id="servicemonitors-only",
        ),
        pytest.param(
            ["servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"],
            id="whole-prometheus-operator-group",
        ),
    ],
)
def test_a_missing_optional_api_degrades_the_moemodel_but_it_still_becomes_ready(
    operator_factory, kube: Kube, namespace: str, tmp_path: Path, deleted: list[str]
) -> None:
    sources = {crd: _saved_crd(kube, crd, tmp_path) for crd in deleted}
    try:
        for crd in deleted:
            kube.kubectl("delete", "crd", crd, "--wait=true", "--timeout=60s")
        for crd in deleted:
            plural = crd.split(".")[0]
            wait_for(f"the {plural} API gone", lambda p=plural: _served(kube, p) == 404, timeout_s=30)
        # A fresh operator: its API presence cache starts empty.
        op = operator_factory()
        kube.apply(sample("mixtral-8x7b-p4de.yaml"), namespace)
        moe = wait_ready(kube, namespace, NAME, timeout_s=30)
        degraded = cond(moe, "Degraded")
        assert degraded["status"] == "True", degraded
        assert degraded["reason"] == "OptionalAPIMissing", degraded
        assert "prometheus-operator" in degraded["message"]
        assert "ServiceMonitor" in degraded["message"]
        for kind in ("Deployment", "Service", "HTTPRoute"):
            assert kube.get(kind, namespace, NAME) is not None, kind
        op.wait_resyncs(1)  # a resync with the API still missing
        assert op.alive(), op.log()[-3000:]
        assert op.http("/healthz")[0] == 200
        assert "Traceback" not in op.log(), op.log()[-3000:]
        # kopf may log (and retry) the API server's transient 429 while CRD storage re-initialises after the
        # deletion; what must not happen is a failed kubemoe reconcile.
        failed = [line for line in op.log().splitlines() if " kubemoe." in line and "failed" in line]
        assert failed == [], op.log()[-3000:]
    finally:
        for source in sources.values():
            kube.kubectl(
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=kubemoe-hack",
                "-f",
                str(source),
            )
        for crd in deleted:
            kube.cluster.wait_established(crd)
            plural = crd.split(".")[0]
            wait_for(f"the {plural} API back", lambda p=plural: _served(kube, p) == 200, timeout_s=30)


@pytest.mark.e2e
def test_a_hand_added_selector_key_is_removed_and_a_hand_added_label_is_kept(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(sample("mixtral-8x7b-p4de.yaml"), namespace)
    wait_ready(kube, namespace, NAME)
    # One more key in the Service's selector would select no pod at all: kubemoe removes it.
    kube.merge_patch("Service", namespace, NAME, {"spec": {"selector": {"hand-added": "x"}}})
    # A label on the Deployment changes nothing that is served: kubemoe leaves it.
    kube.merge_patch("Deployment", namespace, NAME, {"metadata": {"labels": {"team": "ml"}}})

    def restored() -> dict | None:
        svc = kube.get("Service", namespace, NAME)
        return svc if svc and "hand-added" not in svc["spec"]["selector"] else None

    svc = wait_for("the selector restored", restored, timeout_s=15, every_s=0.1)
    assert svc["spec"]["selector"]["app.kubernetes.io/instance"] == NAME
    reconciles = running_operator.metric("kubemoe_reconcile_total", kind="MoEModel")
    wait_for(
        "two more reconciles",
        lambda: running_operator.metric("kubemoe_reconcile_total", kind="MoEModel") >= reconciles + 2,
    )
    deploy = kube.get("Deployment", namespace, NAME)
    assert deploy is not None
    assert deploy["metadata"]["labels"]["team"] == "ml"
    writes = running_operator.metric("kubemoe_api_writes_total")
    wait_for(
        "two more reconciles",
        lambda: running_operator.metric("kubemoe_reconcile_total", kind="MoEModel") >= reconciles + 4,
    )
    assert running_operator.metric("kubemoe_api_writes_total") == writes, "the kept label caused writes"
