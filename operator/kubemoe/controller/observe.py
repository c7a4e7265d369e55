"""Read a workload (Deployment or LeaderWorkerSet) and its pods into what the status reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubemoe.controller.kube import KINDS, KubeClient


@dataclass(frozen=True)
class WorkloadState:
    desired: int
    replicas: int
    ready_replicas: int
    rolled_out: bool
    available: bool
    available_reason: str
    available_message: str
    progress_message: str
    unschedulable: str  # the scheduler's message for a pending pod, or ""

    @property
    def ready(self) -> bool:
        return self.rolled_out and self.available and self.desired > 0 and self.ready_replicas >= self.desired


def _workload_condition(live: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (live.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def observe_workload(
    kube: KubeClient, live: dict[str, Any], *, namespace: str, selector: str
) -> WorkloadState:
    spec, st = live.get("spec") or {}, live.get("status") or {}
    desired = int(spec.get("replicas", 1))
    replicas = int(st.get("replicas", 0))
    ready = int(st.get("readyReplicas", 0))
    updated = int(st.get("updatedReplicas", 0))
    if live["kind"] == "Deployment":
        observed = st.get("observedGeneration", 0) >= live["metadata"].get("generation", 0)
        available_replicas = int(st.get("availableReplicas", 0))
        rolled_out = observed and updated >= desired and replicas == updated and available_replicas >= desired
    else:  # LeaderWorkerSet: one "replica" is a whole group of pods
        rolled_out = updated >= desired and replicas == desired
    available_cond = _workload_condition(live, "Available")
    available = available_cond.get("status") == "True" and ready > 0
    unschedulable = _unschedulable(kube, namespace, selector)
    return WorkloadState(
        desired=desired,
        replicas=replicas,
        ready_replicas=ready,
        rolled_out=rolled_out,
        available=available,
        available_reason="MinimumReplicasAvailable" if available else "NoReplicaReady",
        available_message=f"{ready} of {desired} replica(s) ready",
        progress_message=f"{live['kind']} {live['metadata']['name']}: {updated} updated, {ready} ready of {desired}",
        unschedulable=unschedulable,
    )


def _unschedulable(kube: KubeClient, namespace: str, selector: str) -> str:
    """The scheduler's explanation for the first pending pod it could not place, e.g. too few GPUs."""
    for pod in kube.list(KINDS["Pod"], namespace, selector):
        for c in (pod.get("status") or {}).get("conditions") or []:
            if (
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ):
                return f"pod {pod['metadata']['name']} cannot be scheduled: {c.get('message', '')}".strip()
    return ""
