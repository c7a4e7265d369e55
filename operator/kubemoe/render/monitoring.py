"""PrometheusRule and ServiceMonitor (prometheus-operator `monitoring.coreos.com/v1`).

The alerts a widely copied EKS MoE guide ships, done right for vLLM 0.33's metric names:
`vllm:kv_cache_usage_perc` (the old `vllm:gpu_cache_usage_perc` no longer exists) is a 0-1 ratio, and the
latency alerts use histogram quantiles over `rate()` of the `_bucket` series rather than raw gauges.
Series are matched by namespace and `model_name` (vLLM labels every series with the first served name).
"""

from __future__ import annotations

from typing import Any

from kubemoe.api.moapipeline import RouterAlerts
from kubemoe.api.moemodel import Alerts
from kubemoe.render.meta import object_meta

MONITORING_API_VERSION = "monitoring.coreos.com/v1"


def _rule(
    alert: str,
    expr: str,
    *,
    labels: dict[str, str],
    summary: str,
    description: str,
    runbook: str,
    severity: str = "warning",
    for_: str = "5m",
) -> dict[str, Any]:
    """One alerting rule with what a pager shows: whose it is (labels) and what to do (runbook)."""
    return {
        "alert": alert,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, **labels},
        "annotations": {"summary": summary, "description": description, "runbook": runbook},
    }


def _fmt(x: float) -> str:
    return f"{x:g}"


def model_server_rules(
    alerts: Alerts, *, namespace: str, name: str, served: str, scraped: bool
) -> list[dict[str, Any]]:
    """Alerts on one MoEModel's vLLM servers.

    Every expression keeps `namespace` and `model_name` (and `pod` where one server is the culprit) in its
    result, and every alert carries the static labels `model` (the MoEModel) and `namespace`, so routing and
    the page itself say whose model it is.
    """
    sel = f'namespace="{namespace}", model_name="{served}"'
    owner = {"model": name, "namespace": namespace}
    where = f"{namespace}/{name}"

    def p95(metric: str) -> str:
        return (
            f"histogram_quantile(0.95, sum by (namespace, model_name, le) "
            f"(rate({metric}_bucket{{{sel}}}[5m])))"
        )

    rules = [
        _rule(
            "KubeMoEHighP95Latency",
            f"{p95('vllm:e2e_request_latency_seconds')} > {_fmt(alerts.p95_latency_seconds)}",
            labels=owner,
            summary=f"p95 end-to-end latency of {where} is above {_fmt(alerts.p95_latency_seconds)}s",
            description="p95 end-to-end latency is {{ $value | humanizeDuration }} over the last 5m.",
            runbook="Check waiting requests and KV-cache usage of the model's servers: add replicas when they "
            "queue, lower maxNumSeqs or maxModelLen when the KV cache is full.",
        ),
        _rule(
            "KubeMoEHighTimeToFirstToken",
            f"{p95('vllm:time_to_first_token_seconds')} > {_fmt(alerts.time_to_first_token_p95_seconds)}",
            labels=owner,
            summary=f"p95 time to first token of {where} is above "
            f"{_fmt(alerts.time_to_first_token_p95_seconds)}s",
            description="p95 time to first token is {{ $value | humanizeDuration }} over the last 5m.",
            runbook="Long prefill queues: add replicas, enable chunked prefill, or shorten prompts.",
        ),
        _rule(
            "KubeMoEKVCacheNearlyFull",
            f"max by (namespace, model_name, pod) (vllm:kv_cache_usage_perc{{{sel}}}) "
            f"> {_fmt(alerts.kv_cache_usage_percent / 100)}",
            labels=owner,
            summary=f"KV-cache usage of {where} is above {_fmt(alerts.kv_cache_usage_percent)}%; "
            "requests will be preempted",
            description="KV-cache usage of pod {{ $labels.pod }} is {{ $value | humanizePercentage }}.",
            runbook="Add replicas, or lower maxNumSeqs/maxModelLen so fewer sequences share the cache.",
        ),
        _rule(
            "KubeMoEManyWaitingRequests",
            f"max by (namespace, model_name, pod) (vllm:num_requests_waiting{{{sel}}}) > {alerts.waiting_requests}",
            labels=owner,
            summary=f"more than {alerts.waiting_requests} requests wait on a {where} server; add replicas",
            description="{{ $value }} requests wait on pod {{ $labels.pod }}.",
            runbook="Add replicas (spec.replicas, or the autoscaler's maximum) or shed load upstream.",
        ),
    ]
    if scraped:
        # `up` exists only for scraped targets, so this rule needs the ServiceMonitor.
        up = f'up{{namespace="{namespace}", service="{name}"}}'
        rules.append(
            _rule(
                "KubeMoEModelServerDown",
                f"sum by (namespace, service) ({up}) == 0 or absent({up})",
                labels=owner,
                summary=f"no {where} model server is up",
                description="Prometheus scrapes no healthy model server of this MoEModel.",
                runbook="kubectl describe moemodel: read its conditions (NotPlanned, InsufficientMemory, "
                "ApplyFailed) and the model server pods' events and logs.",
                severity="critical",
            )
        )
    return rules


def router_rules(alerts: RouterAlerts, *, namespace: str, name: str, service: str) -> list[dict[str, Any]]:
    """Alerts on one MoAPipeline's router, selected by its Service (the ServiceMonitor's `service` label)."""
    return _request_rules(alerts, namespace=namespace, name=name, service=f'service="{service}"')


def peer_rules(
    alerts: RouterAlerts, *, namespace: str, name: str, services: str, max_utilization: float
) -> list[dict[str, Any]]:
    """Alerts on a decentralised pipeline's peers, selected by their Services (`services`: a regex over the
    `service` label). A peer exports the router's metric families, so the request alerts apply per peer;
    one more pages when a peer's rho stays at the level where its admission control acts."""
    service = f'service=~"{services}"'
    rules = _request_rules(alerts, namespace=namespace, name=name, service=service)
    rules.append(
        _rule(
            "KubeMoEPeerNearInstability",
            # Per peer, every label kept (pod, service): the page names the peer that is near the limit.
            f'kubemoe_peer_utilization{{namespace="{namespace}", {service}}} > {_fmt(max_utilization)}',
            labels={"pipeline": name, "namespace": namespace},
            summary=f"a peer of pipeline {namespace}/{name} runs at rho > {_fmt(max_utilization)}: its "
            "queue is near the stability limit alpha((k+1)M+1)lambda = 1",
            description="rho = {{ $value | humanize }} on {{ $labels.service }} over the last 5m; it sheds "
            "or lowers k (spec.topology.admission).",
            runbook="Add members or model replicas, lower topology.neighbours or layers, or spread clients "
            "over more peers; kubemoe_peer_arrival_rate and kubemoe_peer_service_time_seconds say which "
            "side grew.",
        )
    )
    return rules


def _request_rules(alerts: RouterAlerts, *, namespace: str, name: str, service: str) -> list[dict[str, Any]]:
    sel = f'namespace="{namespace}", {service}'
    owner = {"pipeline": name, "namespace": namespace}
    where = f"{namespace}/{name}"
    by = "sum by (namespace, service)"
    requests = f"rate(kubemoe_router_requests_total{{{sel}}}[5m])"
    return [
        _rule(
            "KubeMoERouterErrorRate",
            f'100 * {by} (rate(kubemoe_router_requests_total{{{sel}, code=~"5.."}}[5m])) / {by} ({requests}) '
            f"> {_fmt(alerts.error_rate_percent)}",
            labels=owner,
            summary=f"more than {_fmt(alerts.error_rate_percent)}% of {where} requests fail",
            description="{{ $value | humanize }}% of requests answered 5xx over the last 5m.",
            runbook="kubemoe_router_agent_errors_total by agent and reason names the failing agent; check its "
            "MoEModel and the router's logs.",
        ),
        _rule(
            "KubeMoERouterHighP95Latency",
            f"histogram_quantile(0.95, sum by (namespace, service, le) "
            f"(rate(kubemoe_router_request_duration_seconds_bucket{{{sel}}}[5m]))) > {_fmt(alerts.p95_latency_seconds)}",
            labels=owner,
            summary=f"p95 latency of pipeline {where} is above {_fmt(alerts.p95_latency_seconds)}s",
            description="p95 latency is {{ $value | humanizeDuration }} over the last 5m.",
            runbook="kubemoe_router_agent_duration_seconds by agent names the slow agent; scale its model or "
            "lower the layer's deadline.",
        ),
        _rule(
            "KubeMoERouterQuorumMisses",
            f"{by} (rate(kubemoe_router_layer_deadlines_total{{{sel}}}[5m])) > 0",
            labels=owner,
            summary=f"layers of {where} hit their deadline before quorum; some agents are too slow",
            description="{{ $value | humanize }} layer deadlines per second over the last 5m.",
            runbook="Find the slow agent (kubemoe_router_agent_duration_seconds), scale it, or lower "
            "minResponses.",
        ),
        _rule(
            "KubeMoERouterSheddingLoad",
            f"{by} (rate(kubemoe_router_shed_requests_total{{{sel}}}[5m])) > 0",
            labels=owner,
            summary=f"pipeline {where} refuses requests above its stable rate; add model replicas",
            description="{{ $value | humanize }} requests per second are shed.",
            runbook="Add replicas to the pipeline's models (its stable rate follows from theirs) or raise "
            "the router's limits.",
        ),
    ]


def render_prometheus_rule(
    rules: list[dict[str, Any]],
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    owner: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "PrometheusRule",
        "metadata": object_meta(name=name, namespace=namespace, labels=labels, owner=owner),
        "spec": {"groups": [{"name": f"kubemoe.{namespace}.{name}", "rules": rules}]},
    }


def render_service_monitor(
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    selector: dict[str, str],
    interval: str,
    owner: list[dict[str, Any]],
    label_exists: str | None = None,
) -> dict[str, Any]:
    """`label_exists`: select only the Services that also carry this label key (e.g. one per peer, not the
    pipeline's other Services over the same pods, which would scrape every pod twice)."""
    match: dict[str, Any] = {"matchLabels": selector}
    if label_exists is not None:
        match["matchExpressions"] = [{"key": label_exists, "operator": "Exists"}]
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": object_meta(name=name, namespace=namespace, labels=labels, owner=owner),
        "spec": {
            "selector": match,
            "endpoints": [{"port": "http", "path": "/metrics", "interval": interval}],
        },
    }
