"""The model server's workload: a Deployment (one node per replica) or a LeaderWorkerSet (several nodes).

Pods request exactly the accelerators of the plan, are pinned to its instance type, tolerate the
accelerator taints, and get `/dev/shm` as memory (NCCL and the Neuron runtime need more than Docker's
64 MiB default). Probes hit vLLM's `/health`; a startup probe gives weight loading its time.
"""

from __future__ import annotations

import math
from typing import Any

from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.planner.types import Plan
from kubemoe.render import engine
from kubemoe.render.meta import COMPONENT_MODEL, PREFIX, object_meta, selector_labels, standard_labels

INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
HF_CACHE = "/root/.cache/huggingface"
_TAINTS = {"gpu": "nvidia.com/gpu", "neuron": "aws.amazon.com/neuron"}
LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"


def workload_name(cr_name: str, plan: Plan) -> str:
    """Deployment `<name>`, LeaderWorkerSet `<name>-lws`: LWS creates a headless Service named after itself,
    which would collide with our client-facing Service `<name>`."""
    return f"{cr_name}-lws" if plan.multi_node else cr_name


def startup_allowance_seconds(plan: Plan) -> int:
    """Time to download and load the weights (and compile, on Neuron) before liveness counts.

    10 minutes plus 3 s per GB of weights (a 700 GB checkpoint at ~330 MB/s), plus 20 minutes of Neuron
    compilation; capped at 2 hours.
    """
    seconds = 600 + 3 * plan.weights_total_gb + (1200 if plan.engine == "neuronx" else 0)
    return int(min(7200, seconds))


def shm_size_gib(plan: Plan) -> int:
    """2 GiB of /dev/shm per rank on the node (NCCL, Ray object store), between 1 and 32 GiB."""
    return max(1, min(32, 2 * plan.ranks_per_node))


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _resources(spec: MoEModelSpec, plan: Plan) -> dict[str, Any]:
    # Quantities as strings throughout, so what we apply reads back identically (no drift on "2" vs 2).
    accel: dict[str, Any] = {plan.resource_name: str(plan.devices_per_node)}
    requests: dict[str, Any] = {"cpu": str(plan.pod_cpu), "memory": f"{plan.pod_memory_gib}Gi", **accel}
    limits: dict[str, Any] = {"memory": f"{plan.pod_memory_gib}Gi", **accel}
    requests.update({k: str(v) for k, v in spec.resources.requests.items()})
    limits.update({k: str(v) for k, v in spec.resources.limits.items()})
    # Accelerators are the plan's, whatever the overrides say: a mismatch would break the memory plan.
    requests.update(accel)
    limits.update(accel)
    return {"requests": dict(sorted(requests.items())), "limits": dict(sorted(limits.items()))}


def _env(spec: MoEModelSpec, plan: Plan) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "HF_HOME", "value": HF_CACHE}]
    token = spec.credentials.hugging_face_token
    if token is not None:
        # By reference only: the token never appears in the rendered manifests.
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}}
        )
    if plan.engine == "neuronx":
        env.append({"name": "NEURON_COMPILED_ARTIFACTS", "value": f"{HF_CACHE}/neuron-compiled"})
    return env


def _volumes(spec: MoEModelSpec, plan: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_size_gib(plan)}Gi"}}
    ]
    claim = spec.storage.model_cache_claim_name
    if claim:
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": claim}})
    else:
        volumes.append({"name": "model-cache", "emptyDir": {}})
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "model-cache", "mountPath": HF_CACHE}]
    return volumes, mounts


def _container(spec: MoEModelSpec, plan: Plan, *, command: list[str], serving: bool) -> dict[str, Any]:
    _, mounts = _volumes(spec, plan)
    container: dict[str, Any] = {
        "name": "engine",
        "image": engine.engine_image(spec, plan),
        "command": command,
        "env": _env(spec, plan),
        "resources": _resources(spec, plan),
        "volumeMounts": mounts,
    }
    if serving:
        allowance = startup_allowance_seconds(plan)
        container["ports"] = [{"name": "http", "containerPort": engine.VLLM_PORT, "protocol": "TCP"}]
        container["startupProbe"] = _probe("/health", 10, math.ceil(allowance / 10))
        container["readinessProbe"] = _probe("/health", 10, 3)
        container["livenessProbe"] = _probe("/health", 15, 4)
    return container


def _pod_spec(spec: MoEModelSpec, plan: Plan, container: dict[str, Any]) -> dict[str, Any]:
    volumes, _ = _volumes(spec, plan)
    node_selector = {INSTANCE_TYPE_LABEL: plan.instance_type, **spec.placement.node_selector}
    tolerations: list[dict[str, Any]] = [
        {"key": _TAINTS[plan.accelerator_kind], "operator": "Exists", "effect": "NoSchedule"}
    ]
    tolerations += [t.to_yaml_dict() for t in spec.placement.tolerations]
    return {
        # A Service named `vllm` would inject VLLM_PORT=tcp://..., which vLLM refuses to start with.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "nodeSelector": dict(sorted(node_selector.items())),
        "tolerations": tolerations,
        "containers": [container],
        "volumes": volumes,
    }


def render_workload(
    spec: MoEModelSpec,
    plan: Plan,
    *,
    name: str,
    namespace: str,
    owner: list[dict[str, Any]],
) -> dict[str, Any]:
    version = engine.engine_version(spec, plan)
    labels = standard_labels("MoEModel", name, COMPONENT_MODEL, version)
    selector = selector_labels("MoEModel", name, COMPONENT_MODEL)
    serve = engine.serve_args(spec, plan, cr_name=name)
    annotations = {
        f"{PREFIX}/plan": f"{plan.instance_type} TP{plan.tensor_parallel_size} PP"
        f"{plan.pipeline_parallel_size} EP{plan.expert_parallel_size}"
    }
    if not plan.multi_node:
        pod = _pod_spec(spec, plan, _container(spec, plan, command=serve, serving=True))
        whole_node = plan.devices_per_node == plan.node_devices
        deployment: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": object_meta(name=name, namespace=namespace, labels=labels, owner=owner),
            "spec": {
                "selector": {"matchLabels": selector},
                "revisionHistoryLimit": 3,
                "strategy": _rollout(plan, whole_node),
                "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod},
            },
        }
        if (replicas := planned_replicas(spec, plan)) is not None:
            deployment["spec"]["replicas"] = replicas
        return deployment
    if engine.multi_node_dp(plan):
        leader_cmd, worker_cmd = serve, engine.worker_dp_command(serve, plan)
    else:
        leader_cmd, worker_cmd = engine.leader_command(serve), engine.worker_command()
    leader = _pod_spec(spec, plan, _container(spec, plan, command=leader_cmd, serving=True))
    worker = _pod_spec(spec, plan, _container(spec, plan, command=worker_cmd, serving=False))
    lws: dict[str, Any] = {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": object_meta(
            name=workload_name(name, plan), namespace=namespace, labels=labels, owner=owner
        ),
        "spec": {
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0},
            },
            "leaderWorkerTemplate": {
                "size": plan.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {
                    "metadata": {
                        "labels": {**labels, f"{PREFIX}/role": "leader"},
                        "annotations": annotations,
                    },
                    "spec": leader,
                },
                "workerTemplate": {
                    "metadata": {
                        "labels": {**labels, f"{PREFIX}/role": "worker"},
                        "annotations": annotations,
                    },
                    "spec": worker,
                },
            },
        },
    }
    if (replicas := planned_replicas(spec, plan)) is not None:
        lws["spec"]["replicas"] = replicas
    return lws


def planned_replicas(spec: MoEModelSpec, plan: Plan) -> int | None:
    """spec.replicas when set; else the count serving.target needs; else None (an autoscaler owns it)."""
    if spec.replicas is not None:
        return spec.replicas
    return plan.target_replicas


def _rollout(plan: Plan, whole_node: bool) -> dict[str, Any]:
    """Surge one replica when it takes part of a node (zero downtime); replace in place when it takes whole
    nodes, because a surge pod would wait forever for accelerators the old pod still holds."""
    if whole_node:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
