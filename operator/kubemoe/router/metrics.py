"""Prometheus metrics of one router app, on the app's own `CollectorRegistry`.

A per-app registry (not prometheus-client's global one) lets tests build many apps in one process and keeps
`/metrics` limited to what this router exports. Agent label values come from the config (bounded), never from
requests. The alert rules the operator renders read `kubemoe_router_requests_total` (error rate, by `code`)
and `kubemoe_router_request_duration_seconds` (p95).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# LLM calls take from a fraction of a second to minutes.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class RouterMetrics:
    """Every collector of the router; implements `pipeline.PipelineObserver`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
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
            "kubemoe_router_requests_in_flight", "Chat completions being served.", registry=r
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
        self.layer_deadlines = Counter(
            "kubemoe_router_layer_deadlines_total",
            "Layers that reached their deadline.",
            ["layer"],
            registry=r,
        )

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
        self.agent_duration.labels(agent=agent, layer=str(layer)).observe(seconds)
        if error_reason is not None:
            self.agent_errors.labels(agent=agent, layer=str(layer), reason=error_reason).inc()
        if prompt_tokens:
            self.agent_tokens.labels(agent=agent, kind="prompt").inc(prompt_tokens)
        if completion_tokens:
            self.agent_tokens.labels(agent=agent, kind="completion").inc(completion_tokens)

    def quorum_short_circuit(self, *, layer: int) -> None:
        self.quorum_short_circuits.labels(layer=str(layer)).inc()

    def layer_deadline(self, *, layer: int) -> None:
        self.layer_deadlines.labels(layer=str(layer)).inc()

    def render(self) -> bytes:
        """The text exposition of this registry."""
        return generate_latest(self.registry)
