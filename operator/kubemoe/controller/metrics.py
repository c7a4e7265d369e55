"""Operator metrics, served on /metrics with the health endpoints (see `controller.wiring`).

Alert rules match these names and labels; change them only together with the rules."""

from __future__ import annotations

import contextlib
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "kubemoe_reconcile_total", "Reconciles by kind and result.", ["kind", "result"], registry=REGISTRY
)
RECONCILE_ERRORS = Counter(
    "kubemoe_reconcile_errors_total",
    "Reconciles that ended in a failure condition, by kind and condition reason (InvalidSpec, "
    "ApplyRejected, APIUnavailable, ...).",
    ["kind", "reason"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "kubemoe_reconcile_duration_seconds",
    "Time of one reconcile, reads and writes included.",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
MANAGED_OBJECTS = Gauge(
    "kubemoe_managed_objects",
    "Children the operator keeps, by kind, as of the last reconcile of each owner.",
    ["kind"],
    registry=REGISTRY,
)
API_ERRORS = Counter(
    "kubemoe_api_errors_total",
    "Kubernetes API calls that failed, by verb and status.",
    ["verb", "code"],
    registry=REGISTRY,
)
WRITES = Counter(
    "kubemoe_api_writes_total",
    "Writes the reconcile made (apply, delete, status, event), by kind.",
    ["verb", "kind"],
    registry=REGISTRY,
)
READS = Counter(
    "kubemoe_api_reads_total",
    "Reads the operator made of the API server (not counting watch streams), by verb (GET, LIST) and kind "
    "(discovery for its API group checks).",
    ["verb", "kind"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("kubemoe_queue_depth", "Objects waiting for a reconcile.", registry=REGISTRY)
LEADER = Gauge(
    "kubemoe_leader",
    "1 while this process holds the leader Lease and reconciles; 0 while it stands by.",
    registry=REGISTRY,
)


_managed: dict[tuple[str, str, str], dict[str, int]] = {}
_managed_lock = threading.Lock()  # reconciles run in worker threads


def set_managed(owner: tuple[str, str, str], children: dict[str, int] | None) -> None:
    """Record the children one owner (kind, namespace, name) has now (None: the owner is gone) and
    set `kubemoe_managed_objects` to the sums over every owner."""
    with _managed_lock:
        if children is None:
            _managed.pop(owner, None)
        else:
            _managed[owner] = dict(children)
        totals: dict[str, int] = {}
        for counts in _managed.values():
            for kind, n in counts.items():
                totals[kind] = totals.get(kind, 0) + n
        for kind in {*totals, *_seen_kinds}:
            MANAGED_OBJECTS.labels(kind=kind).set(totals.get(kind, 0))
        _seen_kinds.update(totals)
    if children is None and owner[0] == "MoEModel":  # a deleted model's plan is no cost any more
        set_plan_cost(owner[1], owner[2])


_seen_kinds: set[str] = set()
RESYNC_PASSES = Counter(
    "kubemoe_resync_passes",
    "Resync passes that queued every object (tests wait on it instead of sleeping through resyncs).",
    registry=REGISTRY,
)

# Planned cost, from each MoEModel's status.plan. Labels name the model, not the scrape target: the operator's
# own target labels (namespace, pod) say where the operator runs, so the model's namespace is model_namespace.
_PLAN_LABELS = ["model_namespace", "moemodel", "model_name"]
PLAN_REPLICA_COST = Gauge(
    "kubemoe_model_plan_replica_cost_dollars_per_hour",
    "On-demand $/hour of one replica of the chosen plan (status.plan.costPerHour); absent when the instance "
    "type has no price or no plan was made.",
    _PLAN_LABELS,
    registry=REGISTRY,
)
PLAN_TOKEN_COST = Gauge(
    "kubemoe_model_plan_cost_dollars_per_million_output_tokens",
    "$ per million output tokens at the plan's SLO batch (status.plan.costPerMillionTokens); absent when "
    "unknown.",
    _PLAN_LABELS,
    registry=REGISTRY,
)
_plan_labels: dict[tuple[str, str], tuple[str, str, str]] = {}


def set_plan_cost(
    namespace: str,
    name: str,
    *,
    served_name: str = "",
    per_hour: float | None = None,
    per_million_tokens: float | None = None,
) -> None:
    """Export the plan of MoEModel `namespace/name`; a None value removes that series, and calling it with
    both None (no plan, or the model is gone) removes the model's series altogether."""
    with _managed_lock:
        old = _plan_labels.pop((namespace, name), None)
        if old is not None:
            for gauge in (PLAN_REPLICA_COST, PLAN_TOKEN_COST):
                with contextlib.suppress(KeyError):
                    gauge.remove(*old)
        labels = (namespace, name, served_name or name)
        for gauge, value in ((PLAN_REPLICA_COST, per_hour), (PLAN_TOKEN_COST, per_million_tokens)):
            if value is not None:
                gauge.labels(*labels).set(value)
        if per_hour is not None or per_million_tokens is not None:
            _plan_labels[(namespace, name)] = labels
