"""The one MoAPipeline reconcile: resolve model references -> render the router -> apply -> prune ->
observe the router and the models -> capacity -> status.

A pipeline is Ready only when its router is available and every referenced MoEModel is Ready (external
endpoints count as ready); the conditions name what is missing. Capacity is checked against
`targetRequestsPerSecond` (CapacityOK), and the router sheds load above the target.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.controller import conditions as cond
from kubemoe.controller.events import announce_sync
from kubemoe.controller.frame import reconcile_object
from kubemoe.controller.kube import KINDS, KubeClient, kind_of
from kubemoe.controller.observe import observe_workload
from kubemoe.controller.sync import apply_children, prune_children
from kubemoe.documents import format_validation_error
from kubemoe.planner.pipeline import plan_pipeline
from kubemoe.render import model_endpoint
from kubemoe.render.meta import COMPONENT_ROUTER, MANAGED_BY, selector_string
from kubemoe.render.moapipeline import RouterRenderContext, render_moapipeline, router_endpoint, router_name

PIPELINE_KIND = KINDS["MoAPipeline"]
OWNED_KINDS = [
    KINDS[k] for k in ("ConfigMap", "Deployment", "Service", "HTTPRoute", "PrometheusRule", "ServiceMonitor")
]


@dataclass(frozen=True)
class PipelineContext:
    kube: KubeClient
    router_image: str


@dataclass(frozen=True)
class ModelRefState:
    name: str
    found: bool
    ready: bool
    served: str
    replicas: int


def referenced_models(obj: dict[str, Any]) -> set[str]:
    """Names of the MoEModels a pipeline object refers to (read from the raw object, before validation)."""
    spec = obj.get("spec") or {}
    refs = [a for layer in spec.get("layers") or [] for a in layer.get("agents") or []]
    refs.append(spec.get("aggregator") or {})
    return {r["moeModelRef"]["name"] for r in refs if isinstance(r.get("moeModelRef"), dict)}


def _model_state(kube: KubeClient, namespace: str, name: str) -> ModelRefState:
    obj = kube.get(KINDS["MoEModel"], namespace, name)
    if obj is None:
        return ModelRefState(name, found=False, ready=False, served=name, replicas=0)
    ready = cond.is_true((obj.get("status") or {}).get("conditions") or [], cond.READY)
    served = (obj.get("spec", {}).get("model") or {}).get("servedModelName") or name
    replicas = int((obj.get("status") or {}).get("readyReplicas") or obj.get("spec", {}).get("replicas") or 1)
    return ModelRefState(name, found=True, ready=ready, served=served, replicas=max(1, replicas))


def reconcile_moapipeline(ctx: PipelineContext, namespace: str, name: str) -> str:
    return reconcile_object(ctx.kube, PIPELINE_KIND, namespace, name, functools.partial(_reconcile, ctx))


def _reconcile(
    ctx: PipelineContext,
    obj: dict[str, Any],
    status: dict[str, Any],
    conditions: list[dict[str, Any]],
    generation: int | None,
) -> str:
    meta = obj["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    selector = selector_string("MoAPipeline", name, COMPONENT_ROUTER)
    try:
        pipeline = MoAPipeline.model_validate(obj)
    except ValidationError as exc:
        message = format_validation_error(exc, "spec")
        cond.set_condition(
            conditions, cond.READY, False, reason="InvalidSpec", message=message, generation=generation
        )
        return "invalid"

    models = {m: _model_state(ctx.kube, namespace, m) for m in sorted(referenced_models(obj))}
    served = {m: s.served for m, s in models.items()}
    objects = render_moapipeline(pipeline, RouterRenderContext(image=ctx.router_image, served_names=served))
    missing = sorted({o["kind"] for o in objects if not ctx.kube.has_api(kind_of(o))})
    present = [o for o in objects if o["kind"] not in missing]
    synced = apply_children(ctx.kube, present)
    pruned = prune_children(
        ctx.kube,
        namespace=namespace,
        owner_uid=meta["uid"],
        selector=f"{selector},app.kubernetes.io/managed-by={MANAGED_BY}",
        kinds=[k for k in OWNED_KINDS if ctx.kube.has_api(k)],
        keep={(o["kind"], o["metadata"]["name"]) for o in present},
    )
    announce_sync(ctx.kube, obj, applied=synced.applied, pruned=pruned)

    # Capacity and the resolved agents.
    endpoints: dict[str, tuple[str, str]] = {}
    ready: dict[str, bool] = {}
    replicas: dict[str, int] = {}
    refs = [a for layer in pipeline.spec.layers for a in layer.agents] + [pipeline.spec.aggregator]
    for ref in refs:
        if ref.moe_model_ref is not None:
            state = models[ref.moe_model_ref.name]
            endpoints[ref.model_key] = (model_endpoint(state.name, namespace), state.served)
            ready[ref.model_key] = state.ready
            replicas[ref.model_key] = state.replicas
        elif ref.endpoint is not None:
            endpoints[ref.model_key] = (ref.endpoint.url, ref.endpoint.model)
            ready[ref.model_key] = True  # external endpoints are not ours to judge
    plan = plan_pipeline(pipeline, endpoints=endpoints, ready=ready, replicas=replicas)
    status["agents"] = [a.model_dump(by_alias=True, mode="json", exclude_none=True) for a in plan.agents]
    status["capacity"] = plan.capacity.model_dump(by_alias=True, mode="json", exclude_none=True)
    status["layerCount"] = len(pipeline.spec.layers)
    status["agentCount"] = sum(len(layer.agents) for layer in pipeline.spec.layers)
    status["endpoint"] = router_endpoint(name, namespace)
    if plan.capacity_ok is None:
        cond.set_condition(
            conditions,
            cond.CAPACITY_OK,
            None,
            reason="Unknown",
            message=plan.capacity_message,
            generation=generation,
        )
    else:
        cond.set_condition(
            conditions,
            cond.CAPACITY_OK,
            plan.capacity_ok,
            reason="Stable" if plan.capacity_ok else "OverCapacity",
            message=plan.capacity_message,
            generation=generation,
        )

    # The router and the models.
    deployment = synced.live[("Deployment", router_name(name))]
    router = observe_workload(ctx.kube, deployment, namespace=namespace, selector=selector)
    status["readyReplicas"] = router.ready_replicas
    cond.set_condition(
        conditions,
        cond.AVAILABLE,
        router.available,
        reason=router.available_reason,
        message=f"router: {router.available_message}",
        generation=generation,
    )
    cond.set_condition(
        conditions,
        cond.PROGRESSING,
        not router.rolled_out,
        reason="RollingOut" if not router.rolled_out else "RolloutComplete",
        message=router.progress_message,
        generation=generation,
    )
    absent = [m for m, s in models.items() if not s.found]
    unready = [m for m, s in models.items() if s.found and not s.ready]
    problems = []
    if absent:
        problems.append(("ModelNotFound", f"MoEModel(s) not found in {namespace}: {', '.join(absent)}"))
    if unready:
        problems.append(("ModelNotReady", f"MoEModel(s) not Ready yet: {', '.join(unready)}"))
    if missing:
        problems.append(("OptionalAPIMissing", f"skipped {', '.join(missing)}: their CRDs are not installed"))
    if absent or missing:
        reason, _ = problems[0]
        cond.set_condition(
            conditions,
            cond.DEGRADED,
            True,
            reason=reason,
            message="; ".join(m for _, m in problems),
            generation=generation,
        )
    else:
        cond.set_condition(
            conditions, cond.DEGRADED, False, reason="AsExpected", message="", generation=generation
        )
    if not router.ready:
        cond.set_condition(
            conditions,
            cond.READY,
            False,
            reason="RouterNotReady",
            message=router.progress_message,
            generation=generation,
        )
        return "progressing"
    if absent or unready:
        reason = "ModelNotFound" if absent else "ModelNotReady"
        cond.set_condition(
            conditions,
            cond.READY,
            False,
            reason=reason,
            message="; ".join(m for r, m in problems if r in ("ModelNotFound", "ModelNotReady")),
            generation=generation,
        )
        return "waiting-for-models"
    cond.set_condition(
        conditions,
        cond.READY,
        True,
        reason="Ready",
        message=f"router and {len(models)} model(s) ready; endpoint {status['endpoint']}",
        generation=generation,
    )
    return "ready"
