"""How many pipeline requests per second the models behind a MoA pipeline can sustain. Pure arithmetic.

Centralised mode (what kubemoe runs): one pipeline request makes one call per agent slot and one
aggregator call. A model used by n slots (aggregator included) therefore sees n*lambda calls/s at pipeline
rate lambda. With r replicas each completing mu calls/s, its queue is stable only while n*lambda < r*mu, so
the pipeline is stable while lambda < min over models of r*mu/n; the model reaching that minimum is the
bottleneck.

Decentralised mode (distributed MoA, each node hosting one model and sharing every query with k neighbours
over M layers, mean service time alpha per call): a node serves (k+1)*M + 1 calls per query it receives,
so it is stable while alpha*((k+1)*M + 1)*lambda < 1, i.e. lambda < 1 / (alpha*((k+1)*M + 1)).

Inputs are plain values so the controller can call this with figures from the MoAPipeline spec without this
module knowing the CR; the condition is strict (at exactly the limit, queues grow without bound).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple


class ModelRate(NamedTuple):
    """One model's load and service: n slots per pipeline request, r replicas, mu calls/s per replica.

    A plain `(n, r, mu)` tuple is accepted wherever a ModelRate is.
    """

    slots: int
    replicas: int
    mu: float


@dataclass(frozen=True)
class ModelCapacity:
    """Per-model figures: its calls per pipeline request, capacity, and the pipeline rate it sustains."""

    model: str
    slots: int
    replicas: int
    mu: float
    #: r*mu: calls per second all replicas complete.
    capacity_calls_per_second: float
    #: r*mu/n: the pipeline rate at which this model saturates.
    max_stable_requests_per_second: float

    def utilization(self, requests_per_second: float) -> float:
        """rho = n*lambda / (r*mu); stable while below 1 (infinite when the model has no replica)."""
        if self.capacity_calls_per_second == 0:
            return math.inf if requests_per_second > 0 else 0.0
        return self.slots * requests_per_second / self.capacity_calls_per_second


@dataclass(frozen=True)
class CapacityReport:
    """The largest stable pipeline rate, the model that limits it, and each model's figures (by key)."""

    max_stable_requests_per_second: float
    bottleneck: str
    models: tuple[ModelCapacity, ...]

    def is_stable(self, requests_per_second: float) -> bool:
        """Whether the pipeline keeps up with `requests_per_second` (strictly below the limit)."""
        return requests_per_second < self.max_stable_requests_per_second


def count_slots(layers: Iterable[Sequence[str]], aggregator: str) -> dict[str, int]:
    """Slots per model key: how many calls one pipeline request makes to each model, aggregator included.

    `layers` holds, per layer, the model key of each agent (`[[a.model_key for a in l.agents] for l in
    spec.layers]`, as `planner.pipeline` builds it).
    """
    counts = Counter(key for layer in layers for key in layer)
    counts[aggregator] += 1
    return dict(sorted(counts.items()))


def compute_centralised_capacity(models: Mapping[str, ModelRate | tuple[int, int, float]]) -> CapacityReport:
    """max stable lambda = min over models of r*mu/n, with the bottleneck model (ties: first key in order)."""
    if not models:
        raise ValueError("at least one model is needed")
    figures: list[ModelCapacity] = []
    for key in sorted(models):
        slots, replicas, mu = ModelRate(*models[key])
        if slots < 1:
            raise ValueError(f"{key}: slots must be at least 1, got {slots}")
        if replicas < 0:
            raise ValueError(f"{key}: replicas must not be negative, got {replicas}")
        if not mu > 0 or math.isinf(mu):
            raise ValueError(f"{key}: mu must be a positive finite rate, got {mu}")
        capacity = replicas * mu
        figures.append(
            ModelCapacity(
                model=key,
                slots=slots,
                replicas=replicas,
                mu=mu,
                capacity_calls_per_second=capacity,
                max_stable_requests_per_second=capacity / slots,
            )
        )
    bottleneck = min(figures, key=lambda m: m.max_stable_requests_per_second)
    return CapacityReport(
        max_stable_requests_per_second=bottleneck.max_stable_requests_per_second,
        bottleneck=bottleneck.model,
        models=tuple(figures),
    )


@dataclass(frozen=True)
class DecentralisedCapacity:
    """Figures of the decentralised (one model per node) mode."""

    neighbours: int
    layers: int
    service_time_seconds: float
    #: (k+1)*M + 1: calls one node serves per query it receives.
    calls_per_query: int
    #: 1 / (alpha*((k+1)*M + 1)): the per-node query rate at which a node saturates.
    max_stable_requests_per_second: float

    def is_stable(self, requests_per_second: float) -> bool:
        """alpha*((k+1)*M + 1)*lambda < 1."""
        return self.service_time_seconds * self.calls_per_query * requests_per_second < 1


def compute_decentralised_capacity(
    *, neighbours: int, layers: int, service_time_seconds: float
) -> DecentralisedCapacity:
    """Largest stable per-node query rate when each query is shared with k neighbours over M layers."""
    if neighbours < 0:
        raise ValueError(f"neighbours (k) must not be negative, got {neighbours}")
    if layers < 1:
        raise ValueError(f"layers (M) must be at least 1, got {layers}")
    if not service_time_seconds > 0 or math.isinf(service_time_seconds):
        raise ValueError(f"service time (alpha) must be positive and finite, got {service_time_seconds}")
    calls = (neighbours + 1) * layers + 1
    return DecentralisedCapacity(
        neighbours=neighbours,
        layers=layers,
        service_time_seconds=service_time_seconds,
        calls_per_query=calls,
        max_stable_requests_per_second=1.0 / (service_time_seconds * calls),
    )
