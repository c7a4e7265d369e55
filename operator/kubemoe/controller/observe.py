"""Read a workload (Deployment or LeaderWorkerSet) and its pods into what the status reports, and name
what keeps its pods from running with stable reasons (a classifier in the manner of KAITO's): the
scheduler cannot place one, its image cannot be pulled, it crash-loops, it was OOM-killed, its container
cannot be created, it failed, or a LeaderWorkerSet group cannot start as a whole."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kubemoe.api.conditions import Reason
from kubemoe.controller.kube import KINDS, Reader
from kubemoe.render.meta import MANAGED_BY

IMAGE_PULL = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
CONTAINER_CONFIG = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
LWS_GROUP_LABEL = "leaderworkerset.sigs.k8s.io/group-index"


@dataclass(frozen=True)
class Problem:
    reason: Reason
    message: str


@dataclass(frozen=True)
class WorkloadState:
    desired: int
    replicas: int
    ready_replicas: int
    rolled_out: bool
    available: bool
    available_message: str
    progress_message: str
    problems: list[Problem] = field(default_factory=list)  # what keeps pods from running, most urgent first

    @property
    def ready(self) -> bool:
        return self.rolled_out and self.available and self.desired > 0 and self.ready_replicas >= self.desired

    @property
    def available_reason(self) -> Reason:
        return Reason.MINIMUM_REPLICAS_AVAILABLE if self.available else Reason.NO_REPLICA_READY


def _workload_condition(live: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (live.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def observe_workload(reader: Reader, live: dict[str, Any], *, namespace: str, selector: str) -> WorkloadState:
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
    # managed-by too: every pod we render carries it, and it is what the pod watch (and cache) filters on.
    pods = reader.list(KINDS["Pod"], namespace, f"{selector},app.kubernetes.io/managed-by={MANAGED_BY}")
    found = _pod_problems(pods)
    groups = live["kind"] == "LeaderWorkerSet"
    # A pod's problem reaches us before the controller that owns it recounts its ready replicas (seen in
    # CI: Degraded=OOMKilled beside Ready=True for one reconcile). A pod with a problem is never ready, so
    # the replicas it belongs to are taken off the workload's count at once.
    ready = max(0, min(ready, replicas - _replicas_with_problems(found, groups=groups)))
    available = _workload_condition(live, "Available").get("status") == "True" and ready > 0
    return WorkloadState(
        desired=desired,
        replicas=replicas,
        ready_replicas=ready,
        rolled_out=rolled_out,
        available=available,
        available_message=f"{ready} of {desired} replica(s) ready",
        progress_message=f"{live['kind']} {live['metadata']['name']}: {updated} updated, {ready} ready of {desired}",
        problems=_classify(found, groups=groups),
    )


def _pod_problems(pods: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], Problem]]:
    """Each pod that has a problem, with it, in name order: classified once for the status and the count."""
    found = ((pod, pod_problem(pod)) for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])))
    return [(pod, problem) for pod, problem in found if problem is not None]


def _replica_of(pod: dict[str, Any], *, groups: bool) -> str | None:
    """The LeaderWorkerSet group a pod belongs to (None when it has no group label), or None off LWS."""
    group = (pod["metadata"].get("labels") or {}).get(LWS_GROUP_LABEL) if groups else None
    return None if group is None else str(group)


def _replicas_with_problems(found: list[tuple[dict[str, Any], Problem]], *, groups: bool) -> int:
    """How many of the replicas the workload counts have a pod with a problem: pods, or LeaderWorkerSet
    groups. Pods that failed, succeeded or are being deleted are out of the workload's count already."""
    seen: set[str] = set()
    for pod, _ in found:
        if pod["metadata"].get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in (
            "Failed",
            "Succeeded",
        ):
            continue
        seen.add(_replica_of(pod, groups=groups) or pod["metadata"]["name"])
    return len(seen)


def pod_problem(pod: dict[str, Any]) -> Problem | None:
    """The one most telling reason this pod is not running, or None."""
    name = pod["metadata"]["name"]
    st = pod.get("status") or {}
    for c in st.get("conditions") or []:
        if (
            c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ):
            return Problem(
                Reason.UNSCHEDULABLE, f"pod {name} cannot be scheduled: {c.get('message', '')}".strip()
            )
    for cs in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
        state, last = cs.get("state") or {}, cs.get("lastState") or {}
        waiting = state.get("waiting") or {}
        why, what = waiting.get("reason", ""), waiting.get("message", "")
        container = f"pod {name} container {cs.get('name')}"
        oom = (last.get("terminated") or {}).get("reason") == "OOMKilled" or (
            (state.get("terminated") or {}).get("reason") == "OOMKilled"
        )
        if why in IMAGE_PULL:
            return Problem(Reason.IMAGE_PULL_FAILED, f"{container}: {why}: {what}".rstrip(": "))
        if oom:
            return Problem(
                Reason.OOM_KILLED,
                f"{container} was OOM-killed (restarts: {cs.get('restartCount', 0)}); raise "
                "spec.resources.limits.memory",
            )
        if why == "CrashLoopBackOff":
            exit_code = (last.get("terminated") or {}).get("exitCode")
            return Problem(
                Reason.CRASH_LOOP,
                f"{container} keeps crashing (exit code {exit_code}, restarts: {cs.get('restartCount', 0)})",
            )
        if why in CONTAINER_CONFIG:
            return Problem(Reason.CONTAINER_CONFIG_ERROR, f"{container}: {why}: {what}".rstrip(": "))
    if st.get("phase") == "Failed":
        detail = ": ".join(x for x in (st.get("reason"), st.get("message")) if x)
        return Problem(Reason.POD_FAILED, f"pod {name} failed{': ' + detail if detail else ''}")
    return None


def pod_change_matters(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Whether a pod's change (`new` None: deleted; `old` None: not seen before) can change what its
    owner's status says. Pods count for their problems only (readiness comes from the workload's
    status, less the replicas whose pods have a problem), so a healthy pod starting up wakes nobody,
    while a problem appearing, changing or going away does."""
    return (pod_problem(old) if old else None) != (pod_problem(new) if new else None)


def _workload_view(obj: dict[str, Any]) -> tuple[Any, ...]:
    """What of a workload the reconcile reads: its spec and metadata (drift, see controller.sync) and the
    status fields `observe_workload` turns into the owner's status."""
    meta, st = obj.get("metadata") or {}, obj.get("status") or {}
    return (
        obj.get("spec"),
        meta.get("generation"),
        meta.get("labels"),
        meta.get("annotations"),
        meta.get("ownerReferences"),
        meta.get("deletionTimestamp"),
        tuple(st.get(k) for k in ("observedGeneration", "replicas", "readyReplicas", "updatedReplicas")),
        st.get("availableReplicas"),
        sorted((str(c.get("type")), str(c.get("status"))) for c in st.get("conditions") or []),
    )


def workload_change_matters(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Whether a Deployment's or LeaderWorkerSet's change (`new` None: deleted; `old` None: not seen
    before) can change what its owner does or says. The controllers rewrite a workload's status several
    times per rollout with new timestamps and messages alone (condition lastUpdateTime, "ReplicaSet ... is
    progressing"); those wake nobody, while a replica count, a condition's status, the spec or the
    metadata changing does."""
    if old is None or new is None:
        return True
    return _workload_view(old) != _workload_view(new)


def classify_pods(pods: Iterable[dict[str, Any]], *, groups: bool = False) -> list[Problem]:
    """One problem per reason (the first pod's message, and how many more share it), in the order of
    `Reason` urgency below; for a LeaderWorkerSet also which groups cannot start as a whole."""
    return _classify(_pod_problems(pods), groups=groups)


def _classify(found: list[tuple[dict[str, Any], Problem]], *, groups: bool) -> list[Problem]:
    by_reason: dict[Reason, list[Problem]] = {}
    broken_groups: set[str] = set()
    for pod, problem in found:
        by_reason.setdefault(problem.reason, []).append(problem)
        group = _replica_of(pod, groups=groups)
        if group is not None:
            broken_groups.add(group)
    out = []
    for reason in ORDER:
        same = by_reason.get(reason)
        if same:
            more = f" (and {len(same) - 1} more pod(s))" if len(same) > 1 else ""
            out.append(Problem(reason, same[0].message + more))
    if broken_groups:
        listed = ", ".join(sorted(broken_groups, key=lambda g: (len(g), g)))
        out.append(Problem(Reason.GROUP_FAILED, f"LeaderWorkerSet group(s) {listed} cannot start as a whole"))
    return out


ORDER = [
    Reason.IMAGE_PULL_FAILED,
    Reason.CONTAINER_CONFIG_ERROR,
    Reason.OOM_KILLED,
    Reason.CRASH_LOOP,
    Reason.POD_FAILED,
    Reason.UNSCHEDULABLE,
]
