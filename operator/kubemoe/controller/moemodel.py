"""The one MoEModel reconcile: read -> validate -> plan -> render -> apply -> prune -> observe -> status.

Every trigger (the CR changed, a child changed or vanished, a periodic resync, an operator restart) runs
this same function, which only ever moves the cluster toward the state the CR describes. It writes only
what differs: an unchanged, undrifted MoEModel costs reads and no writes.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubemoe.api.moemodel import MoEModel
from kubemoe.catalog.loader import Catalog
from kubemoe.controller import conditions as cond
from kubemoe.controller import metrics
from kubemoe.controller.events import announce_sync, post_event
from kubemoe.controller.frame import reconcile_object
from kubemoe.controller.kube import KINDS, KubeClient, kind_of
from kubemoe.controller.observe import WorkloadState, observe_workload
from kubemoe.controller.sync import apply_children, prune_children
from kubemoe.documents import format_validation_error
from kubemoe.planner import PlanningError, plan_placement
from kubemoe.planner.settings import PlannerSettings
from kubemoe.render import EngineDialectError, model_endpoint, render_moemodel
from kubemoe.render.meta import COMPONENT_MODEL, MANAGED_BY
from kubemoe.render.meta import selector_string as labels_query

log = logging.getLogger(__name__)

MODEL_KIND = KINDS["MoEModel"]
OWNED_KINDS = [
    KINDS[k]
    for k in ("Deployment", "LeaderWorkerSet", "Service", "HTTPRoute", "PrometheusRule", "ServiceMonitor")
]
#: Kinds whose CRDs may be missing, and the project that provides them (for the condition message).
OPTIONAL_APIS = {
    "LeaderWorkerSet": "LeaderWorkerSet (sigs.k8s.io/lws)",
    "HTTPRoute": "Gateway API",
    "PrometheusRule": "prometheus-operator",
    "ServiceMonitor": "prometheus-operator",
}


@dataclass(frozen=True)
class ReconcileContext:
    kube: KubeClient
    catalog: Catalog
    planner: PlannerSettings


def selector_string(name: str) -> str:
    return labels_query("MoEModel", name, COMPONENT_MODEL)


def children_selector(name: str) -> str:
    return f"{selector_string(name)},app.kubernetes.io/managed-by={MANAGED_BY}"


def reconcile_moemodel(ctx: ReconcileContext, namespace: str, name: str) -> str:
    """Reconcile one MoEModel; returns a short outcome word for metrics and logs."""
    return reconcile_object(ctx.kube, MODEL_KIND, namespace, name, functools.partial(_reconcile, ctx))


def _not_planned(
    ctx: ReconcileContext,
    obj: dict[str, Any],
    conditions: list[dict[str, Any]],
    generation: int | None,
    *,
    reason: str,
    message: str,
) -> str:
    before = cond.condition(conditions, cond.PLANNED)
    changed = before is None or before.get("reason") != reason or before.get("message") != message
    cond.set_condition(conditions, cond.PLANNED, False, reason=reason, message=message, generation=generation)
    kept = (
        " Existing children, if any, are left as they were."
        if before and before.get("status") == "True"
        else ""
    )
    cond.set_condition(
        conditions,
        cond.READY,
        False,
        reason="NotPlanned",
        message=f"{reason}: {message}{kept}",
        generation=generation,
    )
    if changed:
        post_event(ctx.kube, obj, reason=reason, message=message, warning=True)
    return "not-planned"


def _reconcile(
    ctx: ReconcileContext,
    obj: dict[str, Any],
    status: dict[str, Any],
    conditions: list[dict[str, Any]],
    generation: int | None,
) -> str:
    meta = obj["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    try:
        model = MoEModel.model_validate(obj)
    except ValidationError as exc:
        return _not_planned(
            ctx,
            obj,
            conditions,
            generation,
            reason="InvalidSpec",
            message=format_validation_error(exc, "spec"),
        )
    try:
        plan = plan_placement(model.spec, ctx.catalog, ctx.planner)
        objects = render_moemodel(model, plan)
    except PlanningError as exc:
        return _not_planned(ctx, obj, conditions, generation, reason=exc.reason.value, message=exc.message)
    except EngineDialectError as exc:
        return _not_planned(
            ctx, obj, conditions, generation, reason="UnsupportedEngineVersion", message=str(exc)
        )

    missing = sorted({o["kind"] for o in objects if not ctx.kube.has_api(kind_of(o))})
    if "LeaderWorkerSet" in missing:
        return _not_planned(
            ctx,
            obj,
            conditions,
            generation,
            reason="LeaderWorkerSetMissing",
            message=f"the plan needs {plan.nodes} nodes per replica, served as a LeaderWorkerSet, but the "
            "LeaderWorkerSet CRD (leaderworkerset.x-k8s.io/v1) is not installed: install LWS, or allow larger "
            "instance types so that one node is enough",
        )
    summary = plan.summary().model_dump(by_alias=True, mode="json", exclude_none=True)
    if status.get("plan") != summary:
        post_event(ctx.kube, obj, reason="Planned", message=plan.reason)
    status["plan"] = summary
    cond.set_condition(
        conditions, cond.PLANNED, True, reason="Planned", message=plan.reason, generation=generation
    )

    present = [o for o in objects if o["kind"] not in missing]
    synced = apply_children(ctx.kube, present)
    keep = {(o["kind"], o["metadata"]["name"]) for o in present}
    pruned = prune_children(
        ctx.kube,
        namespace=namespace,
        owner_uid=meta["uid"],
        selector=children_selector(name),
        kinds=[k for k in OWNED_KINDS if ctx.kube.has_api(k)],
        keep=keep,
    )
    announce_sync(ctx.kube, obj, applied=synced.applied, pruned=pruned)
    for kind in OWNED_KINDS:
        metrics.MANAGED_OBJECTS.labels(kind=kind.kind)  # make the series exist

    workload_obj = present[0]
    live = synced.live[(workload_obj["kind"], workload_obj["metadata"]["name"])]
    state = observe_workload(ctx.kube, live, namespace=namespace, selector=selector_string(name))
    _set_workload_conditions(conditions, state, generation, missing)
    status["endpoint"] = model_endpoint(name, namespace)
    status["replicas"] = state.replicas
    status["readyReplicas"] = state.ready_replicas
    status["selector"] = selector_string(name)
    return "ready" if state.ready else "progressing"


def _set_workload_conditions(
    conditions: list[dict[str, Any]], state: WorkloadState, generation: int | None, missing: list[str]
) -> None:
    cond.set_condition(
        conditions,
        cond.AVAILABLE,
        state.available,
        reason=state.available_reason,
        message=state.available_message,
        generation=generation,
    )
    cond.set_condition(
        conditions,
        cond.PROGRESSING,
        not state.rolled_out,
        reason="RollingOut" if not state.rolled_out else "RolloutComplete",
        message=state.progress_message,
        generation=generation,
    )
    problems = []
    if state.unschedulable:
        problems.append(("Unschedulable", state.unschedulable))
    if missing:
        apis = sorted({OPTIONAL_APIS.get(k, k) for k in missing})
        problems.append(
            (
                "OptionalAPIMissing",
                f"skipped {', '.join(missing)}: the {', '.join(apis)} CRDs are not installed",
            )
        )
    if problems:
        cond.set_condition(
            conditions,
            cond.DEGRADED,
            True,
            reason=problems[0][0],
            message="; ".join(m for _, m in problems),
            generation=generation,
        )
    else:
        cond.set_condition(
            conditions, cond.DEGRADED, False, reason="AsExpected", message="", generation=generation
        )
    if state.ready:
        cond.set_condition(
            conditions,
            cond.READY,
            True,
            reason="Ready",
            message=state.progress_message,
            generation=generation,
        )
    else:
        reason = (
            "Unschedulable"
            if state.unschedulable
            else ("ScaledToZero" if state.desired == 0 else "WaitingForPods")
        )
        cond.set_condition(
            conditions,
            cond.READY,
            False,
            reason=reason,
            message=state.unschedulable or state.progress_message,
            generation=generation,
        )
