"""Smoke tests proving the e2e harness is a real control plane, not a mock.

Scheduling (kube-scheduler with extended resources, selectors and taints), garbage
collection (kube-controller-manager), real CRD schemas (Gateway API, prometheus-operator,
LeaderWorkerSet, Inference Extension), the version the API server reports and the
no-download guarantee of ``hack/cluster``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from .harness import CLUSTER_SCRIPT, KubeCluster, pinned_versions, wait_for

pytestmark = pytest.mark.e2e

GPU_TOLERATION = client.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
FLEET = {
    "p4d-24xlarge-0": ("p4d.24xlarge", {"nvidia.com/gpu": "8"}, "nvidia.com/gpu"),
    "p4de-24xlarge-0": ("p4de.24xlarge", {"nvidia.com/gpu": "8"}, "nvidia.com/gpu"),
    "p5-48xlarge-0": ("p5.48xlarge", {"nvidia.com/gpu": "8"}, "nvidia.com/gpu"),
    "p5-48xlarge-1": ("p5.48xlarge", {"nvidia.com/gpu": "8"}, "nvidia.com/gpu"),
    "p5en-48xlarge-0": ("p5en.48xlarge", {"nvidia.com/gpu": "8"}, "nvidia.com/gpu"),
    "trn2-48xlarge-0": (
        "trn2.48xlarge",
        {"aws.amazon.com/neuron": "16", "aws.amazon.com/neuroncore": "64"},
        "aws.amazon.com/neuron",
    ),
    "cpu-0": ("m7i.8xlarge", {}, None),
    "cpu-1": ("m7i.8xlarge", {}, None),
}


def gpu_deployment(name: str, gpus: int, instance_type: str) -> client.V1Deployment:
    labels = {"app": name}
    container = client.V1Container(
        name="main",
        image="registry.invalid/never-pulled:latest",  # kwok runs no container
        resources=client.V1ResourceRequirements(
            requests={"nvidia.com/gpu": str(gpus), "cpu": "1"},
            limits={"nvidia.com/gpu": str(gpus)},
        ),
    )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[container],
                    node_selector={"node.kubernetes.io/instance-type": instance_type},
                    tolerations=[GPU_TOLERATION],
                ),
            ),
        ),
    )


def pods_of(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def test_server_reports_pinned_version(kube_cluster: KubeCluster) -> None:
    versions = pinned_versions()
    info = client.VersionApi(kube_cluster.api_client).get_code()
    assert info.git_version == f"v{versions['KUBE_VERSION']}"
    assert info.git_tree_state == "clean"
    assert (info.major, info.minor) == ("1", versions["KUBE_VERSION"].split(".")[1])
    # The kubectl the tests use is the cluster's own version (no skew warning).
    out = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == info.git_version


def test_fake_fleet_is_ready_with_accelerators_and_taints(kube_cluster: KubeCluster) -> None:
    core = client.CoreV1Api(kube_cluster.api_client)
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert set(FLEET) <= set(nodes)
    for name, (instance_type, resources, taint_key) in FLEET.items():
        node = nodes[name]
        assert node.metadata.labels["node.kubernetes.io/instance-type"] == instance_type
        ready = {c.type: c.status for c in node.status.conditions or []}.get("Ready")
        assert ready == "True", f"{name} not Ready"
        for resource, count in resources.items():
            assert node.status.allocatable[resource] == count, (name, resource)
        taints = {(t.key, t.value, t.effect) for t in node.spec.taints or []}
        expected = {(taint_key, "present", "NoSchedule")} if taint_key else set()
        assert taints == expected, name


def test_gpu_pod_schedules_on_matching_node_and_oversized_one_stays_pending(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    apps = client.AppsV1Api(kube_cluster.api_client)
    core = client.CoreV1Api(kube_cluster.api_client)
    apps.create_namespaced_deployment(namespace, gpu_deployment("fits", 4, "p5.48xlarge"))
    apps.create_namespaced_deployment(namespace, gpu_deployment("too-big", 16, "p5.48xlarge"))

    def running_fits() -> client.V1Pod | None:
        pods = [p for p in pods_of(core, namespace, "fits") if p.status.phase == "Running"]
        return pods[0] if pods else None

    pod = wait_for("the 4-GPU pod to be Running", running_fits)
    assert pod.spec.node_name.startswith("p5-48xlarge-")  # the fleet has several p5 nodes

    def failed_scheduling() -> client.CoreV1Event | None:
        pods = pods_of(core, namespace, "too-big")
        if not pods:
            return None
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={pods[0].metadata.name}"
        ).items
        hits = [e for e in events if e.reason == "FailedScheduling"]
        return hits[0] if hits else None

    event = wait_for("a FailedScheduling event for the 16-GPU pod", failed_scheduling)
    assert "Insufficient nvidia.com/gpu" in event.message
    [big] = pods_of(core, namespace, "too-big")
    assert big.status.phase == "Pending"
    assert big.spec.node_name is None


def test_deleting_owner_garbage_collects_dependent(kube_cluster: KubeCluster, namespace: str) -> None:
    core = client.CoreV1Api(kube_cluster.api_client)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[ref])),
    )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_for("the garbage collector to delete the dependent", dependent_gone)


def test_malformed_httproute_is_rejected_by_gateway_api_schema(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    custom = client.CustomObjectsApi(kube_cluster.api_client)

    def route(path: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "r"},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "rules": [{"matches": [{"path": path}], "backendRefs": [{"name": "svc", "port": 80}]}],
            },
        }

    def create(body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = custom.create_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", namespace, "httproutes", body
        )
        return result

    # OpenAPI enum: an unknown path match type.
    with pytest.raises(ApiException) as enum_err:
        create(route({"type": "Bogus", "value": "/"}))
    assert enum_err.value.status == 422
    assert "supported values" in enum_err.value.body.lower()
    # CEL rule of the CRD: a PathPrefix must be an absolute path.
    with pytest.raises(ApiException) as cel_err:
        create(route({"type": "PathPrefix", "value": "no-leading-slash"}))
    assert cel_err.value.status == 422
    assert "must be an absolute path" in cel_err.value.body
    # The same route with a valid match is accepted and defaulted by the schema.
    created = create(route({"type": "PathPrefix", "value": "/v1"}))
    assert created["spec"]["rules"][0]["backendRefs"][0]["weight"] == 1


VALID_OBJECTS = """
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: kubemoe-smoke
spec:
  groups:
  - name: kubemoe.smoke
    rules:
    - alert: KubemoeSmoke
      expr: vector(1) > 2
      for: 5m
      labels:
        severity: info
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: kubemoe-smoke
spec:
  selector:
    matchLabels:
      app: kubemoe-smoke
  endpoints:
  - port: metrics
    interval: 30s
---
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
metadata:
  name: kubemoe-smoke
spec:
  replicas: 1
  leaderWorkerTemplate:
    size: 2
    workerTemplate:
      spec:
        containers:
        - name: worker
          image: registry.invalid/never-pulled:latest
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata:
  name: kubemoe-smoke
spec:
  selector:
    matchLabels:
      app: kubemoe-smoke
  targetPorts:
  - number: 8000
  endpointPickerRef:
    name: kubemoe-smoke-epp
    port:
      number: 9002
"""


def test_valid_third_party_objects_apply_cleanly(kube_cluster: KubeCluster, namespace: str) -> None:
    # --dry-run=server first would hide nothing extra; apply for real and read back.
    out = kube_cluster.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", "-", "-o", "name", input=VALID_OBJECTS
    ).stdout.split()
    assert sorted(out) == sorted(
        [
            "prometheusrule.monitoring.coreos.com/kubemoe-smoke",
            "servicemonitor.monitoring.coreos.com/kubemoe-smoke",
            "leaderworkerset.leaderworkerset.x-k8s.io/kubemoe-smoke",
            "inferencepool.inference.networking.k8s.io/kubemoe-smoke",
        ]
    )
    got = json.loads(
        kube_cluster.kubectl(
            "get",
            "-n",
            namespace,
            "-o",
            "json",
            "prometheusrule,servicemonitor,leaderworkerset,inferencepool",
        ).stdout
    )
    kinds = sorted(item["kind"] for item in got["items"])
    assert kinds == ["InferencePool", "LeaderWorkerSet", "PrometheusRule", "ServiceMonitor"]
    # Schema defaulting ran: the LWS CRD defaults the startup policy.
    lws = next(i for i in got["items"] if i["kind"] == "LeaderWorkerSet")
    assert lws["spec"]["startupPolicy"] == "LeaderCreated"


def test_helm_sees_the_cluster_version(kube_cluster: KubeCluster, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        yaml.safe_dump(
            {"apiVersion": "v2", "name": "smoke", "version": "0.1.0", "kubeVersion": ">=1.36.0-0 <1.37.0-0"}
        )
    )
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke\n"
        "data:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    out = kube_cluster.helm(
        "install", "smoke", str(chart), "-n", namespace, "--dry-run=server", "-o", "json"
    ).stdout
    manifest = json.loads(out)["manifest"]
    version = client.VersionApi(kube_cluster.api_client).get_code().git_version
    assert f'kube: "{version}"' in manifest


def test_cluster_start_downloads_nothing(kube_cluster: KubeCluster) -> None:
    if kube_cluster.bin_dir is None:
        pytest.skip("no local toolchain (external KUBECONFIG)")
    proc = subprocess.run(
        [str(CLUSTER_SCRIPT), "offline-check"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "nothing to download" in proc.stderr
