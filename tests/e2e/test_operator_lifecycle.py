"""The operator's life cycle of a MoEModel on the real control plane: create -> Ready, spec change ->
rollout, plan change -> the workload moves, delete -> the garbage collector removes everything.

The operator is the real ``kubemoe run`` process (standalone, this test's namespace only); pods are kwok's
fake pods on fake p4d/p4de/p5/p5en nodes, scheduled by the real kube-scheduler."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from .operator_harness import *  # noqa: F403 - fixtures and helpers
from .operator_harness import (
    Kube,
    OperatorProcess,
    cond,
    events,
    owned_by,
    pods_of,
    sample,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.e2e

NAME = "mixtral-8x7b"


def _args(deploy: dict) -> list[str]:
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    return list(container.get("command", [])) + list(container.get("args", []))


def _running_on(
    kube: Kube, namespace: str, name: str, instance_type: str, count: int = 1
) -> list[dict] | None:
    """The model's pods when exactly ``count`` exist and all run on ``instance_type`` nodes."""
    types = kube.node_instance_types()
    pods = [p for p in pods_of(kube, namespace, name) if not p["metadata"].get("deletionTimestamp")]
    if len(pods_of(kube, namespace, name)) != count or len(pods) != count:
        return None
    ok = all(
        p["status"].get("phase") == "Running" and types.get(p["spec"].get("nodeName", "")) == instance_type
        for p in pods
    )
    return pods if ok else None


@pytest.mark.e2e
def test_a_created_moemodel_gets_its_children_a_running_pod_and_a_ready_status(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(sample("mixtral-8x7b-p4de.yaml"), namespace)
    moe = wait_ready(kube, namespace, NAME)

    # Every child exists and is controlled by the CR.
    children = {}
    for kind in ("Deployment", "Service", "HTTPRoute", "PrometheusRule", "ServiceMonitor"):
        obj = kube.get(kind, namespace, NAME)
        assert obj is not None, f"{kind} {NAME} missing"
        assert owned_by(obj, moe), f"{kind} has no controller owner reference to the CR: {obj['metadata']}"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubemoe"
        children[kind] = obj

    deploy = children["Deployment"]
    pod_spec = deploy["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    # The planner's choice for this sample by $ per output token (`kubemoe plan -f` shows the same):
    # TP 2 x DP 4 on all 8 GPUs of a p4de node, every expert tensor-parallel over the 8 ranks (vLLM's DP
    # without --enable-expert-parallel): $1.360/M tokens at 280 sequences, tied with TP 4 x DP 2 and within
    # the near-tie of DP 8 and TP 8; the most concurrent sequences win. TP 4 on 4 GPUs, $1.498, holds 127:
    # A100's 2048-token step budget makes each prompt chunk a compute-bound step.
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod_spec["nodeSelector"] == {"node.kubernetes.io/instance-type": "p4de.24xlarge"}
    args = _args(deploy)
    assert args[:3] == ["vllm", "serve", "mistralai/Mixtral-8x7B-Instruct-v0.1"]
    for arg in (
        "--tensor-parallel-size=2",
        "--data-parallel-size=4",
        "--max-model-len=32768",
        "--served-model-name=mixtral-8x7b",
    ):
        assert arg in args, args
    assert "--enable-expert-parallel" not in args, args
    assert deploy["spec"]["replicas"] == 1
    assert children["Service"]["spec"]["ports"][0]["port"] == 8000
    assert children["HTTPRoute"]["spec"]["parentRefs"][0]["name"] == "inference-gateway"
    assert children["HTTPRoute"]["spec"]["rules"][0]["backendRefs"][0]["name"] == NAME
    alerts = [r["alert"] for g in children["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    assert "KubeMoEModelServerDown" in alerts

    # The pod is Running on the p4de node.
    assert wait_for("the pod Running on p4de", lambda: _running_on(kube, namespace, NAME, "p4de.24xlarge"))

    status = moe["status"]
    assert status["plan"]["instanceType"] == "p4de.24xlarge"
    assert status["plan"]["tensorParallelSize"] == 2
    assert status["plan"]["dataParallelSize"] == 4
    assert status["endpoint"].startswith(f"http://{NAME}.{namespace}.svc"), status["endpoint"]
    assert status["observedGeneration"] == moe["metadata"]["generation"]
    assert status["replicas"] == 1
    assert status["readyReplicas"] == 1
    for type_ in ("Planned", "Available", "Ready"):
        assert cond(moe, type_)["status"] == "True", cond(moe, type_)
    assert cond(moe, "Degraded")["status"] == "False"

    # Printer columns.
    wide = kube.kubectl("get", "moe", NAME, "-n", namespace, "-o", "wide").stdout
    header, row = wide.splitlines()[:2]
    for column in ("MODEL", "INSTANCE", "TP", "EP", "NODES", "READY", "REASON", "COST/H", "ENDPOINT", "AGE"):
        assert column in header.split(), header
    for value in (
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "p4de.24xlarge",
        "True",
        "Ready",
        status["endpoint"],
    ):
        assert value in row.split(), row

    # The planning decision is a Kubernetes Event on the CR.
    planned = [e for e in events(kube, namespace, NAME) if e.get("reason") == "Planned"]
    assert planned
    assert planned[0]["type"] == "Normal"
    assert "p4de.24xlarge" in planned[0]["message"]


@pytest.mark.e2e
def test_a_spec_change_rolls_out_and_a_plan_change_moves_the_workload(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(sample("mixtral-8x7b-p4de.yaml"), namespace)
    moe = wait_ready(kube, namespace, NAME)
    gen1 = moe["metadata"]["generation"]
    deploy1 = kube.get("Deployment", namespace, NAME)
    assert deploy1 is not None

    # serving.maxModelLen -> a new pod template, a new ReplicaSet, Ready again at the new generation.
    kube.merge_patch("MoEModel", namespace, NAME, {"spec": {"serving": {"maxModelLen": 16384}}})

    def new_template() -> dict | None:
        d = kube.get("Deployment", namespace, NAME)
        return d if d and "--max-model-len=16384" in _args(d) else None

    deploy2 = wait_for("--max-model-len=16384 in the Deployment", new_template)
    assert "--max-model-len=32768" not in _args(deploy2)

    def rolled_out() -> list[dict] | None:
        rss = kube.list("ReplicaSet", namespace, f"app.kubernetes.io/instance={NAME}")
        new = [r for r in rss if "--max-model-len=16384" in _args(r)]
        old = [r for r in rss if "--max-model-len=32768" in _args(r)]
        if (
            len(new) == 1
            and new[0]["status"].get("readyReplicas") == 1
            and all(r["spec"]["replicas"] == 0 for r in old)
        ):
            return rss
        return None

    rss = wait_for("the new ReplicaSet rolled out", rolled_out)
    assert len(rss) == 2, [r["metadata"]["name"] for r in rss]
    moe = wait_ready(kube, namespace, NAME)
    assert moe["metadata"]["generation"] > gen1
    assert moe["status"]["observedGeneration"] == moe["metadata"]["generation"]
    assert wait_for("one pod on p4de", lambda: _running_on(kube, namespace, NAME, "p4de.24xlarge"))

    # placement.instanceTypes -> a new plan: nodeSelector and the pod move to a p5 node.
    kube.merge_patch("MoEModel", namespace, NAME, {"spec": {"placement": {"instanceTypes": ["p5.48xlarge"]}}})

    def on_p5() -> dict | None:
        d = kube.get("Deployment", namespace, NAME)
        sel = d and d["spec"]["template"]["spec"].get("nodeSelector")
        return d if sel == {"node.kubernetes.io/instance-type": "p5.48xlarge"} else None

    wait_for("the Deployment's nodeSelector on p5.48xlarge", on_p5)
    assert wait_for("the pod moved to a p5 node", lambda: _running_on(kube, namespace, NAME, "p5.48xlarge"))
    moe = wait_ready(kube, namespace, NAME)
    assert moe["status"]["plan"]["instanceType"] == "p5.48xlarge"


@pytest.mark.e2e
def test_deleting_a_moemodel_garbage_collects_every_child_and_no_finalizer_is_ever_set(
    running_operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    # Record every version of the CR the API server shows, from creation to deletion.
    watch = subprocess.Popen(
        [
            kube.cluster._tool("kubectl"),
            "get",
            "moemodels",
            "-n",
            namespace,
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=kube.cluster.env,
        text=True,
    )
    try:
        time.sleep(0.5)  # let the watch open before the CR exists
        kube.apply(sample("mixtral-8x7b-p4de.yaml"), namespace)
        moe = wait_ready(kube, namespace, NAME)
        wait_for("the pod Running", lambda: _running_on(kube, namespace, NAME, "p4de.24xlarge"))
        uid = moe["metadata"]["uid"]
        assert not moe["metadata"].get("finalizers")
        kinds = [
            "Deployment",
            "ReplicaSet",
            "Pod",
            "Service",
            "HTTPRoute",
            "PrometheusRule",
            "ServiceMonitor",
        ]
        before = {k: kube.list(k, namespace) for k in kinds}
        assert all(before.values()), {k: len(v) for k, v in before.items()}

        kube.delete("MoEModel", namespace, NAME)
        wait_for("the CR gone", lambda: kube.get("MoEModel", namespace, NAME) is None, timeout_s=10)

        def all_gone() -> bool:
            return not any(kube.list(k, namespace) for k in kinds)

        wait_for("every child garbage-collected", all_gone)
    finally:
        watch.terminate()
        out, _ = watch.communicate(timeout=10)

    decoder = json.JSONDecoder()
    seen, pos, text = [], 0, out.strip()
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        seen.append(obj)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    versions = [e["object"] for e in seen if e["object"]["metadata"].get("uid") == uid]
    assert len(versions) >= 3, f"the watch saw too little: {[e['type'] for e in seen]}"
    assert [e["type"] for e in seen][-1] == "DELETED"
    assert all(not v["metadata"].get("finalizers") for v in versions), [
        v["metadata"].get("finalizers") for v in versions
    ]
