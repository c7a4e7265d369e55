"""A pipeline's model references resolved to what the router calls and the capacity check needs.

One function for the operator (which knows each MoEModel's status) and the CLI (which knows only the
documents in a file), so both resolve a reference the same way: the same URL, the same served name
(`engine.served_model_name`) and the same replica default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.api.moemodel import MoEModel
from kubemoe.render.engine import served_model_name
from kubemoe.render.moemodel import model_endpoint


@dataclass(frozen=True)
class ModelRefState:
    """What is known of one referenced MoEModel."""

    name: str
    found: bool
    ready: bool
    served: str
    replicas: int
    #: Requests/s one replica sustains by its plan (`status.plan.requestsPerSecond`): the service rate
    #: the pipeline's capacity check uses, so `serviceRates` is needed only for external endpoints.
    planned_rate: float | None = None


def model_ref_state(
    name: str,
    model: MoEModel | None,
    *,
    ready: bool = False,
    ready_replicas: int | None = None,
    planned_replicas: int | None = None,
    planned_rate: float | None = None,
) -> ModelRefState:
    """Replicas are the ready ones when a status says so, else the spec's count, else the count the plan
    chose for its target, else 1 (an autoscaled model has at least one); never below 1, so the capacity
    estimate never divides by zero. `planned_rate` is one replica's planned requests/s."""
    if model is None:
        return ModelRefState(name, found=False, ready=False, served=name, replicas=1)
    replicas = ready_replicas or model.spec.replicas or planned_replicas or 1
    return ModelRefState(
        name,
        found=True,
        ready=ready,
        served=served_model_name(model.spec, name),
        replicas=max(1, replicas),
        planned_rate=planned_rate,
    )


@dataclass(frozen=True)
class ResolvedRefs:
    """Keyed by model key (`moe:<name>` or `endpoint:<url>#<model>`), as `plan_pipeline` takes them."""

    endpoints: dict[str, tuple[str, str]] = field(default_factory=dict)
    ready: dict[str, bool] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)


def referenced_model_names(pipeline: MoAPipeline) -> list[str]:
    refs = [a for layer in pipeline.spec.layers for a in layer.agents] + [pipeline.spec.aggregator]
    return sorted({r.moe_model_ref.name for r in refs if r.moe_model_ref is not None})


def resolve_refs(pipeline: MoAPipeline, models: Mapping[str, ModelRefState]) -> ResolvedRefs:
    """`models` holds a state for every name of `referenced_model_names` (see `model_ref_state`)."""
    out = ResolvedRefs()
    namespace = pipeline.metadata.namespace
    for ref in [a for layer in pipeline.spec.layers for a in layer.agents] + [pipeline.spec.aggregator]:
        if ref.moe_model_ref is not None:
            state = models[ref.moe_model_ref.name]
            out.endpoints[ref.model_key] = (model_endpoint(state.name, namespace), state.served)
            out.ready[ref.model_key] = state.ready
            out.replicas[ref.model_key] = state.replicas
            if state.planned_rate is not None:
                out.rates[ref.model_key] = state.planned_rate
        elif ref.endpoint is not None:
            out.endpoints[ref.model_key] = (ref.endpoint.url, ref.endpoint.model)
            out.ready[ref.model_key] = True  # external endpoints are not ours to judge
    return out
