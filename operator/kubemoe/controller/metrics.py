"""Operator metrics, served on /metrics with the health endpoints (see `controller.server`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "kubemoe_reconcile_total", "Reconciles by kind and result.", ["kind", "result"], registry=REGISTRY
)
RECONCILE_DURATION = Histogram(
    "kubemoe_reconcile_duration_seconds",
    "Time of one reconcile, reads and writes included.",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
MANAGED_OBJECTS = Gauge(
    "kubemoe_managed_objects", "Children the operator keeps, by kind.", ["kind"], registry=REGISTRY
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
QUEUE_DEPTH = Gauge("kubemoe_queue_depth", "Objects waiting for a reconcile.", registry=REGISTRY)
