"""The MoAPipeline parts of the reconcile frame (`controller.frame`): resolve model references -> render
the router (or, with `spec.topology.mode: decentralised`, the peers), and what their readiness and the
models' mean for the status.

A central pipeline is Ready only when its router is available and every referenced MoEModel is Ready
(external endpoints count as ready); `Degraded` lists every problem. Capacity is checked against
`targetRequestsPerSecond` (CapacityOK), and the router sheds load above the target.

A decentralised pipeline renders `render.peers` instead: it is Ready when every member's peer is ready
(and every model), Available while at least one is, and CapacityOK follows the peers' own rho
(`controller.peers`). Both sets of children carry the pipeline's selector labels and differ in their
component, so the frame's prune (owner-scoped, pipeline-wide selector) removes the router's children when
a pipeline turns decentralised and the peers' when it turns back; `<name>-router`, the client Service, is
kept across the switch and only changes its selector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kubemoe.api.conditions import ConditionType, Reason
from kubemoe.api.moapipeline import MoAPipeline, MoAPipelineStatus
from kubemoe.api.moemodel import MoEModel
from kubemoe.controller import conditions as cond
from kubemoe.controller.frame import FRAME_CONDITIONS, FrameContext, Observed, reconcile_object
from kubemoe.controller.kube import KINDS, Kind, KubeClient, Reader
from kubemoe.controller.observe import Problem, observe_workload
from kubemoe.controller.peers import PeersSeen, PeerStatusReader, observe_peers, peer_addresses
from kubemoe.controller.route import GatewayMemo, gateway_endpoint, set_route_condition
from kubemoe.controller.sync import SyncResult
from kubemoe.planner.pipeline import plan_pipeline
from kubemoe.render.meta import COMPONENT_ROUTER, selector_string
from kubemoe.render.moapipeline import RouterRenderContext, render_moapipeline, router_endpoint, router_name
from kubemoe.render.peers import PeerRenderContext, render_peers
from kubemoe.render.refs import ModelRefState, model_ref_state, referenced_model_names, resolve_refs

PIPELINE_KIND = KINDS["MoAPipeline"]
OWNED_KINDS = [
    KINDS[k] for k in ("ConfigMap", "Deployment", "Service", "HTTPRoute", "PrometheusRule", "ServiceMonitor")
]


@dataclass(frozen=True)
class PipelineContext:
    kube: KubeClient
    router_image: str
    reader: Reader | None = None  # None: read from the API server
    #: How decentralised peers' /status is read (controller.peers); PeerStatusReader(0): readiness only.
    peer_status: PeerStatusReader = field(default_factory=PeerStatusReader)
    gateways: GatewayMemo = field(default_factory=GatewayMemo)


def referenced_models(obj: dict[str, Any]) -> set[str]:
    """Names of the MoEModels a pipeline object refers to (read from the raw object, before validation,
    so that even an invalid pipeline is re-reconciled when a model it names changes)."""
    spec = obj.get("spec") or {}
    refs = [a for layer in spec.get("layers") or [] for a in layer.get("agents") or []]
    refs.append(spec.get("aggregator") or {})
    return {
        r["moeModelRef"]["name"]
        for r in refs
        if isinstance(r, dict) and isinstance(r.get("moeModelRef"), dict)
    }


def _model_state(reader: Reader, namespace: str, name: str) -> ModelRefState:
    obj = reader.get(KINDS["MoEModel"], namespace, name)
    if obj is None:
        return model_ref_state(name, None)
    try:
        model = MoEModel.model_validate(obj)
    except ValidationError:  # an invalid model is reported on itself; here it is just not ready
        return ModelRefState(name, found=True, ready=False, served=name, replicas=1)
    status = model.status
    ready = status is not None and cond.is_true(status.conditions, ConditionType.READY)
    planned = status.plan if status else None
    return model_ref_state(
        name,
        model,
        ready=ready,
        ready_replicas=status.ready_replicas if status else None,
        planned_replicas=planned.replicas if planned else None,
        planned_rate=planned.requests_per_second if planned else None,
    )


@dataclass
class MoAPipelineHooks:
    ctx: PipelineContext
    kind: Kind = PIPELINE_KIND
    owned_kinds: list[Kind] = field(default_factory=lambda: list(OWNED_KINDS))
    condition_types: tuple[ConditionType, ...] = (
        *FRAME_CONDITIONS,
        ConditionType.CAPACITY_OK,
        ConditionType.ROUTE_ACCEPTED,
    )
    models: dict[str, ModelRefState] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def reader(self) -> Reader:
        return self.ctx.reader or self.ctx.kube

    def status_type(self) -> type[MoAPipelineStatus]:
        return MoAPipelineStatus

    def selector(self, name: str) -> str:
        """Every child of the pipeline, router and peers alike (what the frame prunes by)."""
        return f"app.kubernetes.io/name=moapipeline,app.kubernetes.io/instance={name}"

    def parse(self, obj: dict[str, Any]) -> MoAPipeline:
        return MoAPipeline.model_validate(obj)

    def render(
        self, obj: dict[str, Any], model: MoAPipeline, status: MoAPipelineStatus, generation: int | None
    ) -> list[dict[str, Any]]:
        namespace = model.metadata.namespace
        self.models = {m: _model_state(self.reader, namespace, m) for m in referenced_model_names(model)}
        served = {m: s.served for m, s in self.models.items()}
        if model.spec.topology.mode == "decentralised":
            self.addresses = peer_addresses(self.reader, model)
            ctx = PeerRenderContext(
                image=self.ctx.router_image, served_names=served, peer_addresses=self.addresses
            )
            objects = render_peers(model, ctx)
            topo = model.spec.topology
            what = (
                f"{sum(len(layer.agents) for layer in model.spec.layers)} peer(s) (k={topo.neighbours}, "
                f"M={topo.layers}, {topo.selection} selection)"
            )
        else:
            objects = render_moapipeline(
                model, RouterRenderContext(image=self.ctx.router_image, served_names=served)
            )
            what = f"router for {len(model.spec.layers)} layer(s)"
        cond.set_condition(
            status.conditions,
            ConditionType.PLANNED,
            True,
            reason=Reason.PLANNED,
            message=f"{what} and {len(self.models)} model(s) rendered",
            generation=generation,
        )
        return objects

    def observe(
        self,
        obj: dict[str, Any],
        model: MoAPipeline,
        synced: SyncResult,
        status: MoAPipelineStatus,
        generation: int | None,
    ) -> Observed:
        name, namespace = model.metadata.name, model.metadata.namespace
        refs = resolve_refs(model, self.models)
        plan = plan_pipeline(
            model,
            endpoints=refs.endpoints,
            ready=refs.ready,
            replicas=refs.replicas,
            planned_rates=refs.rates,
        )
        status.agents = plan.agents
        status.capacity = plan.capacity
        status.layer_count = len(model.spec.layers)
        status.agent_count = sum(len(layer.agents) for layer in model.spec.layers)
        status.endpoint = router_endpoint(name, namespace)
        # The route (either mode's) goes to the client Service `<name>-router`; its gateway's verdict.
        accepted = set_route_condition(
            status.conditions,
            model.spec.routing,
            synced.live,
            route_name=router_name(name),
            namespace=namespace,
            gateway_api=self.ctx.kube.has_api(KINDS["HTTPRoute"]),
            generation=generation,
        )
        status.gateway_endpoint = gateway_endpoint(
            self.ctx.gateways, self.reader, model.spec.routing, accepted, namespace=namespace, cr_name=name
        )
        if model.spec.topology.mode == "decentralised":
            seen = observe_peers(self.reader, model, synced, self.ctx.peer_status, self.addresses)
            return self._observe_peers(model, seen, status, generation)
        status.peers = []
        if plan.capacity_ok is None:
            capacity: tuple[bool | None, Reason] = (None, Reason.CAPACITY_UNKNOWN)
        else:
            capacity = (plan.capacity_ok, Reason.STABLE if plan.capacity_ok else Reason.OVER_CAPACITY)
        cond.set_condition(
            status.conditions,
            ConditionType.CAPACITY_OK,
            capacity[0],
            reason=capacity[1],
            message=plan.capacity_message,
            generation=generation,
        )

        router = observe_workload(
            self.reader,
            synced.live[("Deployment", router_name(name))],
            namespace=namespace,
            selector=selector_string("MoAPipeline", name, COMPONENT_ROUTER),
        )
        status.ready_replicas = router.ready_replicas
        models = self._model_problems(namespace)
        problems = [*router.problems, *models]
        if not router.ready:
            first = router.problems[0] if router.problems else None
            ready_reason: Reason = Reason.ROUTER_NOT_READY
            ready_message = f"router: {first.message if first else router.progress_message}"
            outcome = "progressing"
        elif models:
            ready_reason, ready_message = models[0].reason, "; ".join(p.message for p in models)
            outcome = "waiting-for-models"
        else:
            ready_reason = Reason.READY
            ready_message = f"router and {len(self.models)} model(s) ready; endpoint {status.endpoint}"
            outcome = "ready"
        return Observed(
            outcome=outcome,
            available=router.available,
            available_reason=router.available_reason,
            available_message=f"router: {router.available_message}",
            rolled_out=router.rolled_out,
            progress_message=router.progress_message,
            ready=outcome == "ready",
            ready_reason=ready_reason,
            ready_message=ready_message,
            problems=problems,
        )

    def _model_problems(self, namespace: str) -> list[Problem]:
        absent = [m for m, s in self.models.items() if not s.found]
        unready = [m for m, s in self.models.items() if s.found and not s.ready]
        models: list[Problem] = []
        if absent:
            models.append(
                Problem(Reason.MODEL_NOT_FOUND, f"MoEModel(s) not found in {namespace}: {', '.join(absent)}")
            )
        if unready:
            models.append(Problem(Reason.MODEL_NOT_READY, f"MoEModel(s) not Ready yet: {', '.join(unready)}"))
        return models

    def _observe_peers(
        self, model: MoAPipeline, seen: PeersSeen, status: MoAPipelineStatus, generation: int | None
    ) -> Observed:
        """Conditions of a decentralised pipeline (see the module docstring)."""
        status.peers = seen.peers
        status.capacity = None  # the central formula does not apply; rho per peer is in status.peers
        status.ready_replicas = len(seen.ready)
        capacity = seen.capacity(model.spec.topology.admission.max_utilization)
        cond.set_condition(
            status.conditions,
            ConditionType.CAPACITY_OK,
            capacity[0],
            reason=capacity[1],
            message=capacity[2],
            generation=generation,
        )
        models = self._model_problems(model.metadata.namespace)
        total = len(seen.peers)
        rolling = [m for m, s in seen.states.items() if not s.rolled_out]
        if seen.unready:
            first = next((p for s in seen.states.values() for p in s.problems), None)
            ready_reason: Reason = Reason.PEERS_NOT_READY
            ready_message = (
                f"{len(seen.ready)} of {total} peer(s) ready; not ready: {', '.join(seen.unready)}"
            )
            if first is not None:
                ready_message += f" ({first.message})"
            outcome = "progressing"
        elif models:
            ready_reason, ready_message = models[0].reason, "; ".join(p.message for p in models)
            outcome = "waiting-for-models"
        else:
            ready_reason = Reason.READY
            ready_message = (
                f"{total} peer(s) and {len(self.models)} model(s) ready; endpoint {status.endpoint}"
            )
            outcome = "ready"
        available = bool(seen.ready)
        return Observed(
            outcome=outcome,
            available=available,
            available_reason=Reason.MINIMUM_REPLICAS_AVAILABLE if available else Reason.NO_REPLICA_READY,
            available_message=f"{len(seen.ready)} of {total} peer(s) ready behind the client Service",
            rolled_out=not rolling,
            progress_message=f"peers rolling out: {', '.join(rolling)}"
            if rolling
            else f"{total} peer(s) rolled out",
            ready=outcome == "ready",
            ready_reason=ready_reason,
            ready_message=ready_message,
            problems=[*seen.problems, *models],
        )


def reconcile_moapipeline(ctx: PipelineContext, namespace: str, name: str, *, attempt: int = 0) -> str:
    frame = FrameContext(kube=ctx.kube, reader=ctx.reader or ctx.kube)
    return reconcile_object(frame, MoAPipelineHooks(ctx), namespace, name, attempt=attempt)
