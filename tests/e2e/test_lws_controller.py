"""The real LeaderWorkerSet controller runs in the e2e cluster, with its admission webhooks.

``hack/cluster up`` starts sigs.k8s.io/lws's own controller manager (``cmd/main.go``, built by
``hack/toolchain``) next to the control plane and registers LWS's webhook configurations
with ``clientConfig.url: https://127.0.0.1:<port>/...`` and a CA made for it (see
hack/README.md). These tests show it is the real thing, not a stand-in:

* a size-2 LeaderWorkerSet asking for a whole p5.48xlarge per pod gets a leader and a worker
  pod (made by the controller through its StatefulSets) Running on the two fake p5 nodes,
  with the labels and env vars only LWS's pod webhook injects, and the LWS status becomes
  Available;
* the LeaderWorkerSet and Service that ``kubemoe render`` produces for a multi-node plan
  work together: the Service selects the leader (worker-index 0) and nothing else;
* an invalid LeaderWorkerSet is refused by LWS's validating webhook (the CRD schema has no
  minimum for ``size``, so the webhook is what rejects it).

Both GPU tests need two whole p5 nodes, so each waits for them to be free first and
deletes its pods before returning.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from .harness import KubeCluster, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KUBEMOE = str(Path(sys.executable).parent / "kubemoe")
MULTINODE_SAMPLE = ROOT / "manifests" / "samples" / "deepseek-v3-multinode.yaml"

P5_NODES = {"p5-48xlarge-0", "p5-48xlarge-1", "p5-48xlarge-2"}
LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
MUTATING = "lws-mutating-webhook-configuration"
VALIDATING = "lws-validating-webhook-configuration"


@pytest.fixture(scope="module")
def lws_cluster(kube_cluster: KubeCluster) -> KubeCluster:
    """The cluster, after checking LWS's webhooks point at a local controller manager."""
    adm = client.AdmissionregistrationV1Api(kube_cluster.api_client)
    try:
        mutating = adm.read_mutating_webhook_configuration(MUTATING)
        validating = adm.read_validating_webhook_configuration(VALIDATING)
    except ApiException as exc:
        if exc.status == 404:
            pytest.fail(
                f"{MUTATING}/{VALIDATING} missing: this cluster runs no LWS controller "
                "(hack/cluster up installs it; an external KUBECONFIG cluster may not)",
                pytrace=False,
            )
        raise
    hooks = {w.name: w.client_config for w in [*mutating.webhooks, *validating.webhooks]}
    assert set(hooks) == {
        "mleaderworkerset.kb.io",
        "mpod.kb.io",
        "vleaderworkerset.kb.io",
        "vpod.kb.io",
        "vdisaggregatedset.kb.io",
    }
    for name, cc in hooks.items():
        assert cc.service is None, (name, cc)
        assert cc.url.startswith("https://127.0.0.1:"), (name, cc)
        assert cc.ca_bundle, name
    return kube_cluster


def _pods_on_p5(core: client.CoreV1Api) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = []
    for node in sorted(P5_NODES):
        for pod in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items:
            if pod.status.phase not in ("Succeeded", "Failed"):
                pods.append(pod)
    return pods


@pytest.fixture
def free_p5(lws_cluster: KubeCluster) -> Iterator[client.CoreV1Api]:
    """Both p5 nodes without pods, before the test (earlier tests' namespaces may still be
    terminating) and after it (its LWS deleted, its pods gone)."""
    core = client.CoreV1Api(lws_cluster.api_client)

    def free() -> bool:
        return not _pods_on_p5(core)

    wait_for(
        "both p5.48xlarge nodes to be free of pods (pods left: "
        + ", ".join(f"{p.metadata.namespace}/{p.metadata.name}" for p in _pods_on_p5(core))
        + ")",
        free,
        timeout_s=180,
    )
    yield core
    wait_for("the test's pods to leave the p5 nodes", free, timeout_s=180)


def _apply(cluster: KubeCluster, namespace: str, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=kubemoe-tests",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump_all(docs),
    )


def _delete_lws(cluster: KubeCluster, namespace: str, name: str) -> None:
    # Foreground: returns once the StatefulSets (and with them the pods) are gone.
    cluster.kubectl(
        "delete",
        "-n",
        namespace,
        f"{LWS_PLURAL}.{LWS_GROUP}/{name}",
        "--ignore-not-found",
        "--cascade=foreground",
        "--wait=true",
        "--timeout=120s",
    )


def _group_pods(core: client.CoreV1Api, namespace: str, lws: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"{NAME_LABEL}={lws}").items)


def _running_and_ready(pod: client.V1Pod) -> bool:
    conditions = {c.type: c.status for c in pod.status.conditions or []}
    return pod.status.phase == "Running" and conditions.get("Ready") == "True"


def _wait_group_running(core: client.CoreV1Api, namespace: str, lws: str) -> dict[str, client.V1Pod]:
    """The group's two pods, Running and Ready, keyed by worker index."""

    def probe() -> dict[str, client.V1Pod] | None:
        pods = _group_pods(core, namespace, lws)
        if len(pods) == 2 and all(_running_and_ready(p) for p in pods):
            return {p.metadata.labels[WORKER_INDEX]: p for p in pods}
        return None

    return wait_for(
        f"leader and worker pods of LeaderWorkerSet {lws} Running and Ready", probe, timeout_s=120
    )


def _env(pod: client.V1Pod) -> dict[str, str | None]:
    return {e.name: e.value for e in pod.spec.containers[0].env or []}


def _lws_status(cluster: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(cluster.api_client).get_namespaced_custom_object(
        LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL, name
    )
    return obj.get("status") or {}


def _assert_group(pods: dict[str, client.V1Pod], lws: str, namespace: str) -> None:
    """What LWS's controller and pod webhook make of one group of size 2."""
    assert set(pods) == {"0", "1"}, "worker-index labels (set by the pod webhook)"
    leader, worker = pods["0"], pods["1"]
    # One pod per p5 node: each asks for all 8 GPUs of one.
    # Two whole p5 nodes, one pod each (the fleet has three).
    assert leader.spec.node_name != worker.spec.node_name
    assert {leader.spec.node_name, worker.spec.node_name} <= P5_NODES
    # Names and owners: the leader comes from the LWS's StatefulSet, the worker from the
    # per-group worker StatefulSet the controller creates for that leader.
    assert leader.metadata.name == f"{lws}-0"
    assert worker.metadata.name == f"{lws}-0-1"
    assert [(o.kind, o.name) for o in leader.metadata.owner_references] == [("StatefulSet", lws)]
    assert [(o.kind, o.name) for o in worker.metadata.owner_references] == [("StatefulSet", f"{lws}-0")]
    for pod in (leader, worker):
        labels = pod.metadata.labels
        assert labels[NAME_LABEL] == lws
        assert labels[GROUP_INDEX] == "0"
        assert labels.get("leaderworkerset.sigs.k8s.io/group-key")
        assert pod.spec.subdomain == lws  # the headless Service the controller makes
        env = _env(pod)
        assert env["LWS_LEADER_ADDRESS"] == f"{lws}-0.{lws}.{namespace}"
        assert env["LWS_GROUP_SIZE"] == "2"
        assert env["LWS_WORKER_INDEX"] == pod.metadata.labels[WORKER_INDEX]
    assert worker.metadata.annotations["leaderworkerset.sigs.k8s.io/leader-name"] == leader.metadata.name


def _wait_lws_available(cluster: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = _lws_status(cluster, namespace, name)
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        if conditions.get("Available") == "True" and status.get("readyReplicas") == 1:
            return status
        return None

    return wait_for(f"LeaderWorkerSet {name} Available with 1 ready replica", probe, timeout_s=120)


def gpu_lws(name: str) -> dict[str, Any]:
    pod_spec = {
        "nodeSelector": {"node.kubernetes.io/instance-type": "p5.48xlarge"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [
            {
                "name": "engine",
                "image": "registry.invalid/never-pulled:latest",  # kwok runs no container
                "resources": {"requests": {"nvidia.com/gpu": "8"}, "limits": {"nvidia.com/gpu": "8"}},
            }
        ],
    }
    return {
        "apiVersion": f"{LWS_GROUP}/{LWS_VERSION}",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "workerTemplate": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
            },
        },
    }


def test_lws_places_leader_and_worker_on_the_p5_nodes(
    lws_cluster: KubeCluster, namespace: str, free_p5: client.CoreV1Api
) -> None:
    name = "gpu-group"
    _apply(lws_cluster, namespace, [gpu_lws(name)])
    try:
        pods = _wait_group_running(free_p5, namespace, name)
        _assert_group(pods, name, namespace)
        status = _wait_lws_available(lws_cluster, namespace, name)
        assert status["replicas"] == 1
        # The mutating LWS webhook's defaults (the CRD schema has none for these).
        spec = lws_cluster.kubectl(
            "get",
            "-n",
            namespace,
            f"{LWS_PLURAL}.{LWS_GROUP}/{name}",
            "-o",
            "jsonpath={.spec.networkConfig.subdomainPolicy}/{.spec.leaderWorkerTemplate.restartPolicy}",
        ).stdout
        assert spec == "Shared/RecreateGroupOnPodRestart"
        headless = free_p5.read_namespaced_service(name, namespace)
        assert headless.spec.cluster_ip == "None"
        assert headless.spec.selector == {NAME_LABEL: name}
    finally:
        _delete_lws(lws_cluster, namespace, name)


def _rendered_group(namespace: str) -> list[dict[str, Any]]:
    """The LeaderWorkerSet and Service `kubemoe render` makes for the multi-node sample,
    moved into ``namespace`` (no ownerReferences: no MoEModel owns them here)."""
    out = subprocess.run(
        [KUBEMOE, "render", "-f", str(MULTINODE_SAMPLE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] in ("LeaderWorkerSet", "Service")]
    assert sorted(d["kind"] for d in docs) == ["LeaderWorkerSet", "Service"]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        doc["metadata"].pop("ownerReferences", None)
    return docs


def test_rendered_service_selects_only_the_leader(
    lws_cluster: KubeCluster, namespace: str, free_p5: client.CoreV1Api
) -> None:
    docs = _rendered_group(namespace)
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
    svc = next(d for d in docs if d["kind"] == "Service")
    name = lws["metadata"]["name"]
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert svc["spec"]["selector"][WORKER_INDEX] == "0"
    _apply(lws_cluster, namespace, docs)
    try:
        pods = _wait_group_running(free_p5, namespace, name)
        _assert_group(pods, name, namespace)
        leader, worker = pods["0"], pods["1"]
        assert leader.metadata.labels["kubemoe.io/role"] == "leader"
        assert worker.metadata.labels["kubemoe.io/role"] == "worker"
        # The rendered worker command joins the leader through the injected address.
        assert "$LWS_LEADER_ADDRESS" in " ".join(worker.spec.containers[0].command)
        _wait_lws_available(lws_cluster, namespace, name)

        # The Service's selector, evaluated by the API server, matches the leader alone...
        selector = ",".join(f"{k}={v}" for k, v in svc["spec"]["selector"].items())
        selected = free_p5.list_namespaced_pod(namespace, label_selector=selector).items
        assert [p.metadata.name for p in selected] == [leader.metadata.name]

        # ...and kube-controller-manager's EndpointSlice controller agrees: the Service's
        # endpoints are exactly the leader pod, ready, on port 8000.
        discovery = client.DiscoveryV1Api(lws_cluster.api_client)
        service_name = svc["metadata"]["name"]

        def leader_endpoints() -> list[tuple[str, bool, int]] | None:
            slices = discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"kubernetes.io/service-name={service_name}"
            ).items
            eps = [
                (ep.target_ref.name, bool(ep.conditions.ready), port.port)
                for s in slices
                for ep in s.endpoints or []
                for port in s.ports or []
            ]
            return eps if eps == [(leader.metadata.name, True, 8000)] else None

        wait_for(
            f"EndpointSlice of Service {service_name} to hold just the leader", leader_endpoints, timeout_s=60
        )
        addresses = [
            a
            for s in discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"kubernetes.io/service-name={service_name}"
            ).items
            for ep in s.endpoints
            for a in ep.addresses
        ]
        assert addresses == [leader.status.pod_ip]
    finally:
        _delete_lws(lws_cluster, namespace, name)


@pytest.mark.parametrize("size", [0, -1])
def test_invalid_size_is_rejected_by_the_validating_webhook(
    lws_cluster: KubeCluster, namespace: str, size: int
) -> None:
    bad = gpu_lws(f"bad-size-{abs(size)}")
    bad["spec"]["leaderWorkerTemplate"]["size"] = size
    proc = lws_cluster.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump(bad), check=False
    )
    assert proc.returncode != 0, proc.stdout
    # The CRD schema has no minimum for size: this is LWS's webhook speaking.
    assert 'admission webhook "vleaderworkerset.kb.io" denied the request' in proc.stderr, proc.stderr
    assert "size must be equal or greater than 1" in proc.stderr, proc.stderr
    listed = lws_cluster.kubectl("get", "-n", namespace, f"{LWS_PLURAL}.{LWS_GROUP}", "-o", "name").stdout
    assert listed.strip() == ""
