"""Prometheus metrics of one router app, on the app's own `CollectorRegistry`.

A per-app registry (not prometheus-client's global one) lets tests build many apps in one process and keeps
`/metrics` limited to what this router exports. Agent label values come from the config (bounded), never from
requests. With `--workers N` (prometheus-client's multiprocess mode, `MULTIPROC_ENV`), `/metrics` on any worker
sums every worker's samples. The alert rules the operator renders read `kubemoe_router_requests_total` (error rate, by `code`)
and `kubemoe_router_request_duration_seconds` (p95).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

#: Set (by `router.workers`) when several processes serve one port: samples then go to files in it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# LLM calls take from a fraction of a second to minutes.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class RouterMetrics:
    """Every collector of the router; implements `pipeline.PipelineObserver`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "kubemoe_router_requests_total",
            "Chat completion requests by HTTP status.",
            ["code", "stream"],
            registry=r,
        )
        self.request_duration = Histogram(
            "kubemoe_router_request_duration_seconds",
            "Chat completion latency, to the last byte.",
            ["stream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "kubemoe_router_time_to_first_token_seconds",
            "From request to the final answer's first token (all proposer layers included).",
            ["stream"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "kubemoe_router_requests_in_flight",
            "Chat completions being served.",
            registry=r,
            multiprocess_mode="livesum",  # with workers: the sum over the live ones
        )
        self.shed = Counter(
            "kubemoe_router_shed_requests_total", "Requests refused before any work.", ["reason"], registry=r
        )
        self.agent_duration = Histogram(
            "kubemoe_router_agent_duration_seconds",
            "Latency of one upstream call (proposer or aggregator), failures included.",
            ["agent", "layer"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.agent_errors = Counter(
            "kubemoe_router_agent_errors_total",
            "Upstream calls that failed or timed out, by reason.",
            ["agent", "layer", "reason"],
            registry=r,
        )
        self.agent_tokens = Counter(
            "kubemoe_router_agent_tokens_total",
            "Tokens reported by upstreams, by kind (prompt, completion).",
            ["agent", "kind"],
            registry=r,
        )
        self.quorum_short_circuits = Counter(
            "kubemoe_router_quorum_short_circuits_total",
            "Layers that moved on at quorum, cancelling their stragglers.",
            ["layer"],
            registry=r,
        )
        # `key` is the client key's NAME (a Secret data key, bounded by the Secret), never the key itself.
        self.client_requests = Counter(
            "kubemoe_router_client_requests_total",
            "Chat completion requests by client key name and HTTP status.",
            ["key", "code"],
            registry=r,
        )
        self.auth_failures = Counter(
            "kubemoe_router_auth_failures_total",
            "Requests refused by client authentication, by reason.",
            ["reason"],
            registry=r,
        )
        self.layer_deadlines = Counter(
            "kubemoe_router_layer_deadlines_total",
            "Layers that reached their deadline.",
            ["layer"],
            registry=r,
        )

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, cached: prometheus-client's `labels()` takes a lock and builds a tuple
        on every call, a measurable share of a request's CPU; label values are bounded (config, status codes)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    # PipelineObserver
    def agent_finished(
        self,
        *,
        agent: str,
        layer: int,
        seconds: float,
        error_reason: str | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self.child(self.agent_duration, agent, str(layer)).observe(seconds)
        if error_reason is not None:
            self.child(self.agent_errors, agent, str(layer), error_reason).inc()
        if prompt_tokens:
            self.child(self.agent_tokens, agent, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.child(self.agent_tokens, agent, "completion").inc(completion_tokens)

    def quorum_short_circuit(self, *, layer: int) -> None:
        self.quorum_short_circuits.labels(layer=str(layer)).inc()

    def layer_deadline(self, *, layer: int) -> None:
        self.layer_deadlines.labels(layer=str(layer)).inc()

    def render(self) -> bytes:
        """The text exposition of this registry, or with workers, of every worker's samples summed."""
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            merged = CollectorRegistry()
            MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)
