"""Plan a MoAPipeline: who each agent calls, how many calls per request each model sees, and the largest
request rate the pipeline sustains (`router.capacity`, pure arithmetic).

One request makes one call per agent slot plus one aggregator call, so a model used by n slots sees n x
lambda calls per second at pipeline rate lambda; with r replicas of mu calls/s each it keeps up while
n x lambda < r x mu. Used by `kubemoe plan -f pipeline.yaml` and by the controller for status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kubemoe.api.moapipeline import Agent, Aggregator, CapacityStatus, MoAPipeline, ModelLoad, ResolvedAgent
from kubemoe.router.capacity import compute_centralised_capacity, count_slots

ModelRef = Agent | Aggregator


@dataclass(frozen=True)
class PipelinePlan:
    agents: list[ResolvedAgent]
    capacity: CapacityStatus
    #: None when there is no target or too few service rates to tell.
    capacity_ok: bool | None
    capacity_message: str


def _slot_keys(pipeline: MoAPipeline) -> tuple[list[list[str]], str]:
    spec = pipeline.spec
    return [[a.model_key for a in layer.agents] for layer in spec.layers], spec.aggregator.model_key


def plan_pipeline(
    pipeline: MoAPipeline,
    *,
    endpoints: Mapping[str, tuple[str, str]],
    ready: Mapping[str, bool],
    replicas: Mapping[str, int],
    planned_rates: Mapping[str, float] | None = None,
) -> PipelinePlan:
    """`endpoints`/`ready`/`replicas` are keyed by model key (`moe:<name>` or `endpoint:<url>#<model>`):
    the URL and served name each resolves to, whether it is ready, and how many replicas serve it."""
    spec = pipeline.spec
    agents: list[ResolvedAgent] = []

    def resolved(layer: int, name: str, ref: ModelRef) -> ResolvedAgent:
        url, model = endpoints.get(ref.model_key, (None, None))
        return ResolvedAgent(
            layer=layer, name=name, url=url, model=model, ready=ready.get(ref.model_key, False)
        )

    for i, layer in enumerate(spec.layers, start=1):
        agents += [resolved(i, a.name, a) for a in layer.agents]
    agents.append(resolved(0, "aggregator", spec.aggregator))

    layers, aggregator = _slot_keys(pipeline)
    slots = count_slots(layers, aggregator)
    rates: dict[str, tuple[int, float]] = {}
    for rate in spec.capacity.service_rates:
        key = rate.model_key
        mu = rate.requests_per_second or 1.0 / (rate.service_time_seconds or 1.0)
        rates[key] = (rate.replicas or replicas.get(key, 1), mu)
    for key, mu in (planned_rates or {}).items():
        if key in slots and key not in rates and mu > 0:
            rates[key] = (replicas.get(key, 1), mu)

    loads = [
        ModelLoad(
            model=key,
            calls_per_request=n,
            replicas=rates[key][0] if key in rates else replicas.get(key, 1),
            requests_per_second_per_replica=rates[key][1] if key in rates else None,
            max_stable_requests_per_second=(rates[key][0] * rates[key][1] / n) if key in rates else None,
        )
        for key, n in slots.items()
    ]
    known = {key: (n, rates[key][0], rates[key][1]) for key, n in slots.items() if key in rates}
    capacity = CapacityStatus(models=loads)
    target = spec.capacity.target_requests_per_second
    missing = sorted(set(slots) - set(known))
    if known:
        report = compute_centralised_capacity(known)
        capacity = CapacityStatus(
            max_stable_requests_per_second=round(report.max_stable_requests_per_second, 4),
            bottleneck=report.bottleneck,
            models=loads,
        )
    if target is None:
        return PipelinePlan(agents, capacity, None, "no targetRequestsPerSecond set")
    if missing:
        return PipelinePlan(
            agents, capacity, None, f"no service rate for {', '.join(missing)}: cannot check {target:g} req/s"
        )
    assert capacity.max_stable_requests_per_second is not None
    limit = capacity.max_stable_requests_per_second
    if target < limit:
        return PipelinePlan(
            agents,
            capacity,
            True,
            f"stable up to {limit:g} req/s; target {target:g} req/s (bottleneck {capacity.bottleneck})",
        )
    return PipelinePlan(
        agents,
        capacity,
        False,
        f"target {target:g} req/s is not below the stable limit {limit:g} req/s set by {capacity.bottleneck}; "
        "add replicas of that model or lower the target",
    )
