"""PrometheusRule and ServiceMonitor (prometheus-operator `monitoring.coreos.com/v1`).

The alerts a widely copied EKS MoE guide ships, done right for vLLM 0.33's metric names:
`vllm:kv_cache_usage_perc` (the old `vllm:gpu_cache_usage_perc` no longer exists) is a 0-1 ratio, and the
latency alerts use histogram quantiles over `rate()` of the `_bucket` series rather than raw gauges.
Series are matched by namespace and `model_name` (vLLM labels every series with the first served name).
"""

from __future__ import annotations

from typing import Any

from kubemoe.api.moemodel import Alerts
from kubemoe.render.meta import object_meta

MONITORING_API_VERSION = "monitoring.coreos.com/v1"


def _rule(alert: str, expr: str, summary: str, severity: str = "warning", for_: str = "5m") -> dict[str, Any]:
    return {
        "alert": alert,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary},
    }


def _fmt(x: float) -> str:
    return f"{x:g}"


def model_server_rules(
    alerts: Alerts, *, namespace: str, name: str, served: str, scraped: bool
) -> list[dict[str, Any]]:
    sel = f'namespace="{namespace}", model_name="{served}"'
    rules = [
        _rule(
            "KubeMoEHighP95Latency",
            f"histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket{{{sel}}}[5m])))"
            f" > {_fmt(alerts.p95_latency_seconds)}",
            f"p95 end-to-end latency of {name} is above {_fmt(alerts.p95_latency_seconds)}s",
        ),
        _rule(
            "KubeMoEHighTimeToFirstToken",
            f"histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{sel}}}[5m])))"
            f" > {_fmt(alerts.time_to_first_token_p95_seconds)}",
            f"p95 time to first token of {name} is above {_fmt(alerts.time_to_first_token_p95_seconds)}s",
        ),
        _rule(
            "KubeMoEKVCacheNearlyFull",
            f"max by (pod) (vllm:kv_cache_usage_perc{{{sel}}}) > {_fmt(alerts.kv_cache_usage_percent / 100)}",
            f"KV-cache usage of {name} is above {_fmt(alerts.kv_cache_usage_percent)}%; requests will be preempted",
        ),
        _rule(
            "KubeMoEManyWaitingRequests",
            f"max by (pod) (vllm:num_requests_waiting{{{sel}}}) > {alerts.waiting_requests}",
            f"more than {alerts.waiting_requests} requests wait on a {name} server; add replicas",
        ),
    ]
    if scraped:
        # `up` exists only for scraped targets, so this rule needs the ServiceMonitor.
        up = f'up{{namespace="{namespace}", service="{name}"}}'
        rules.append(
            _rule(
                "KubeMoEModelServerDown",
                f"sum({up}) == 0 or absent({up})",
                f"no {name} model server is up",
                severity="critical",
            )
        )
    return rules


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
) -> dict[str, Any]:
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": object_meta(name=name, namespace=namespace, labels=labels, owner=owner),
        "spec": {
            "selector": {"matchLabels": selector},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": interval}],
        },
    }
