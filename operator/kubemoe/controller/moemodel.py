"""The MoEModel parts of the reconcile frame (`controller.frame`): validate -> plan -> render, and what
the workload's observation means for the status.

Every trigger (the CR changed, a child changed or vanished, a periodic resync, an operator restart) runs
the same frame, which only ever moves the cluster toward the state the CR describes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubemoe.api.conditions import ConditionType, Reason
from kubemoe.api.moemodel import MoEModel, MoEModelSpec, MoEModelStatus
from kubemoe.catalog.loader import Catalog
from kubemoe.controller import conditions as cond
from kubemoe.controller import metrics
from kubemoe.controller.frame import FRAME_CONDITIONS, FrameContext, Observed, Stop, reconcile_object
from kubemoe.controller.kube import KINDS, Kind, KubeClient, Reader
from kubemoe.controller.observe import observe_workload
from kubemoe.controller.route import GatewayMemo, gateway_endpoint, set_route_condition
from kubemoe.controller.sync import SyncResult
from kubemoe.planner import Plan, PlanningError, plan_placement
from kubemoe.planner.settings import PlannerSettings
from kubemoe.render import EngineDialectError, model_endpoint, render_moemodel
from kubemoe.render.engine import served_model_name
from kubemoe.render.meta import COMPONENT_MODEL
from kubemoe.render.meta import selector_string as labels_query

MODEL_KIND = KINDS["MoEModel"]
OWNED_KINDS = [
    KINDS[k]
    for k in ("Deployment", "LeaderWorkerSet", "Service", "HTTPRoute", "PrometheusRule", "ServiceMonitor")
]


#: Plans remembered per spec (the planner is pure, and the catalog and settings are fixed per process): a
#: resync or a "now Ready" reconcile of an unchanged spec does not search again. Bounded; oldest dropped.
PLAN_MEMO_SIZE = 4096


@dataclass(frozen=True)
class ReconcileContext:
    kube: KubeClient
    catalog: Catalog
    planner: PlannerSettings
    reader: Reader | None = None  # None: read children from the API server
    gateways: GatewayMemo = field(default_factory=GatewayMemo)
    #: spec JSON -> its Plan or its PlanningError (see `plan_for`).
    plans: dict[str, Plan | PlanningError] = field(default_factory=dict)

    def plan_for(self, spec: MoEModelSpec) -> Plan:
        """`plan_placement` of `spec`, remembered: the same spec gets the same plan (or error) again."""
        key = spec.model_dump_json()
        found = self.plans.get(key)
        if found is None:
            try:
                found = plan_placement(spec, self.catalog, self.planner)
            except PlanningError as exc:
                found = exc
            if len(self.plans) >= PLAN_MEMO_SIZE:
                # Workers plan in threads: another may have dropped the oldest already.
                self.plans.pop(next(iter(self.plans)), None)
            self.plans[key] = found
        if isinstance(found, PlanningError):
            raise found.with_traceback(None)
        return found


def selector_string(name: str) -> str:
    return labels_query("MoEModel", name, COMPONENT_MODEL)


@dataclass
class MoEModelHooks:
    ctx: ReconcileContext
    kind: Kind = MODEL_KIND
    owned_kinds: list[Kind] = field(default_factory=lambda: list(OWNED_KINDS))
    condition_types: tuple[ConditionType, ...] = (
        *FRAME_CONDITIONS,
        ConditionType.ROUTE_ACCEPTED,
    )

    def status_type(self) -> type[MoEModelStatus]:
        return MoEModelStatus

    def selector(self, name: str) -> str:
        return selector_string(name)

    def parse(self, obj: dict[str, Any]) -> MoEModel:
        return MoEModel.model_validate(obj)

    def render(
        self, obj: dict[str, Any], model: MoEModel, status: MoEModelStatus, generation: int | None
    ) -> list[dict[str, Any]]:
        try:
            return self._render(obj, model, status, generation)
        except Stop:  # nothing of this generation is served: no planned cost either
            metrics.set_plan_cost(model.metadata.namespace, model.metadata.name)
            raise

    def _render(
        self, obj: dict[str, Any], model: MoEModel, status: MoEModelStatus, generation: int | None
    ) -> list[dict[str, Any]]:
        try:
            plan = self.ctx.plan_for(model.spec)
            objects = render_moemodel(model, plan)
        except PlanningError as exc:
            raise Stop(exc.reason, exc.message) from exc
        except EngineDialectError as exc:
            raise Stop(Reason.UNSUPPORTED_ENGINE_VERSION, str(exc)) from exc
        if any(o["kind"] == "LeaderWorkerSet" for o in objects) and not self.ctx.kube.has_api(
            KINDS["LeaderWorkerSet"]
        ):
            raise Stop(
                Reason.LEADER_WORKER_SET_MISSING,
                f"the plan needs {plan.nodes} nodes per replica, served as a LeaderWorkerSet, but the "
                "LeaderWorkerSet CRD (leaderworkerset.x-k8s.io/v1) is not installed: install LWS, or allow "
                "larger instance types so that one node is enough",
            )
        summary = plan.summary()
        status.plan = summary  # a changed plan is told in the reconcile's one Event (events.announce_sync)
        metrics.set_plan_cost(
            model.metadata.namespace,
            model.metadata.name,
            served_name=served_model_name(model.spec, model.metadata.name),
            per_hour=summary.cost_per_hour,
            per_million_tokens=summary.cost_per_million_tokens,
        )
        cond.set_condition(
            status.conditions,
            ConditionType.PLANNED,
            True,
            reason=Reason.PLANNED,
            message=plan.reason,
            generation=generation,
        )
        return objects

    def observe(
        self,
        obj: dict[str, Any],
        model: MoEModel,
        synced: SyncResult,
        status: MoEModelStatus,
        generation: int | None,
    ) -> Observed:
        name, namespace = model.metadata.name, model.metadata.namespace
        workload = next(
            v for (kind, _), v in synced.live.items() if kind in ("Deployment", "LeaderWorkerSet")
        )
        state = observe_workload(
            self.ctx.reader or self.ctx.kube, workload, namespace=namespace, selector=selector_string(name)
        )
        status.endpoint = model_endpoint(name, namespace)
        status.replicas = state.replicas
        status.ready_replicas = state.ready_replicas
        status.selector = selector_string(name)
        accepted = set_route_condition(
            status.conditions,
            model.spec.routing,
            synced.live,
            route_name=name,
            namespace=namespace,
            gateway_api=self.ctx.kube.has_api(KINDS["HTTPRoute"]),
            generation=generation,
        )
        status.gateway_endpoint = gateway_endpoint(
            self.ctx.gateways,
            self.ctx.reader or self.ctx.kube,
            model.spec.routing,
            accepted,
            namespace=namespace,
            cr_name=name,
        )
        if state.ready:
            ready_reason, ready_message = Reason.READY, state.progress_message
        elif state.problems:
            ready_reason, ready_message = state.problems[0].reason, state.problems[0].message
        elif state.desired == 0:
            ready_reason, ready_message = Reason.SCALED_TO_ZERO, state.progress_message
        else:
            ready_reason, ready_message = Reason.WAITING_FOR_PODS, state.progress_message
        return Observed(
            outcome="ready" if state.ready else "progressing",
            available=state.available,
            available_reason=state.available_reason,
            available_message=state.available_message,
            rolled_out=state.rolled_out,
            progress_message=state.progress_message,
            ready=state.ready,
            ready_reason=ready_reason,
            ready_message=ready_message,
            problems=state.problems,
        )


def reconcile_moemodel(ctx: ReconcileContext, namespace: str, name: str, *, attempt: int = 0) -> str:
    """Reconcile one MoEModel; returns a short outcome word for metrics and logs."""
    frame = FrameContext(kube=ctx.kube, reader=ctx.reader or ctx.kube)
    return reconcile_object(frame, MoEModelHooks(ctx), namespace, name, attempt=attempt)
