"""`promtool test rules` cases for every rendered alert, built from the rule itself.

Each alert gets synthetic series at 1m resolution over 40 minutes: calm until 5m, above its threshold from 5m to
20m, calm again after (or calm throughout, for the below-threshold case). The expectations are those of an
alert with `for: 5m` over 5m rate windows: nothing firing at 9m (pending at most), firing with its full labels
and annotations at 12m and 19m, resolved by 30m. Gauge alerts also get a 3-minute spike that must never fire.
The annotation text is expanded here with Prometheus' humanize functions (ported below), so a template error
or a wrong value in `description` fails the test.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

MINUTES = 40
HIGH = (5, 20)
PER_MIN = 60  # requests (or events) per minute: rate() of exactly 1/s
CHECK_QUIET, CHECK_FIRING, CHECK_RESOLVED = ("9m", "12m", "19m"), ("12m", "19m"), ("30m",)


def humanize(v: float) -> str:
    """Prometheus' template `humanize` (SI prefixes, 4 significant digits)."""
    if v == 0 or math.isnan(v) or math.isinf(v):
        return f"{v:.4g}"
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
    else:
        for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
            if abs(v) >= 1:
                break
            prefix, v = p, v * 1000
    return f"{v:.4g}{prefix}"


def humanize_duration(v: float) -> str:
    """Prometheus' `humanizeDuration` for values of a second or more."""
    assert v >= 1
    d = int(v)
    s, m, h = d % 60, (d // 60) % 60, (d // 3600) % 24
    if h:
        return f"{h}h {m}m {s}s"
    if m:
        return f"{m}m {s}s"
    return f"{v:.4g}s"


def expand(template: str, value: float, labels: dict[str, str]) -> str:
    """The few template forms the rendered annotations use."""
    forms: dict[str, Callable[[], str]] = {
        "{{ $value | humanizeDuration }}": lambda: humanize_duration(value),
        "{{ $value | humanizePercentage }}": lambda: humanize(value * 100) + "%",
        "{{ $value | humanize }}": lambda: humanize(value),
        "{{ $value }}": lambda: f"{value:g}",
    }
    out = template
    for form, text in forms.items():
        if form in out:
            out = out.replace(form, text())
    out = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], out)
    assert "{{" not in out, f"unexpanded template in {template!r}"
    return out


def _series(name: str, labels: dict[str, str], values: list[float]) -> dict[str, str]:
    body = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": " ".join(f"{v:g}" for v in values)}


def _phases(high: tuple[int, int] | None) -> list[bool]:
    return [high is not None and high[0] <= t < high[1] for t in range(MINUTES + 1)]


def _counter(increments: list[float]) -> list[float]:
    """Cumulative values of a counter that grows by increments[t] between minute t-1 and t."""
    total, out = 0.0, []
    for inc in increments:
        total += inc
        out.append(total)
    return out


def matchers(expr: str) -> dict[str, str]:
    """Labels that satisfy the matchers of the rule's first selector (namespace, model_name or service): an
    equality's value, and for a regex `prefix.+` (a decentralised pipeline's peer Services) one instance."""
    body = re.search(r"\{([^}]*)\}", expr)
    assert body, expr
    out = {}
    for key, op, value in re.findall(r'(\w+)(=~|=)"([^"]*)"', body.group(1)):
        if op == "=":
            out[key] = value
        elif value.endswith(".+") and not re.search(r"[][()|*?.+\\]", value[:-2]):
            out[key] = value[:-2] + "a"  # other regexes (code=~"5..") are the builders' own business
    return out


def threshold(expr: str) -> float:
    m = re.search(r">\s*([0-9.e+-]+)\s*$", expr)
    assert m, f"no trailing `> threshold` in {expr}"
    return float(m.group(1))


Scenario = tuple[list[dict[str, str]], float, dict[str, str]]  # input series, alert $value, result labels


def _gauge(metric: str) -> Callable[[dict[str, Any], tuple[int, int] | None], Scenario]:
    def build(rule: dict[str, Any], high: tuple[int, int] | None) -> Scenario:
        sel, t = matchers(rule["expr"]), threshold(rule["expr"])
        above = 0.99 if t < 1 else t + 1
        calm = t * 0.5 if t < 1 else max(0, t - 1)
        labels = {**sel, "pod": f"{sel.get('model_name', 'x')}-0"}
        values = [above if h else calm for h in _phases(high)]
        return [_series(metric, labels, values)], above, labels

    return build


def _histogram(metric: str) -> Callable[[dict[str, Any], tuple[int, int] | None], Scenario]:
    """Calm requests land in (T/4, T/2], slow ones in (T, 2T]: p95 is 0.4375T calm and 1.95T slow."""

    def build(rule: dict[str, Any], high: tuple[int, int] | None) -> Scenario:
        sel, t = matchers(rule["expr"]), threshold(rule["expr"])
        les = [t / 4, t / 2, t, 2 * t, math.inf]
        slow = _phases(high)
        series = []
        for le in les:
            incs = [0.0] + [PER_MIN if (le >= 2 * t if s else le >= t / 2) else 0.0 for s in slow[1:]]
            series.append(
                _series(
                    f"{metric}_bucket", {**sel, "le": "+Inf" if le == math.inf else f"{le:g}"}, _counter(incs)
                )
            )
        return series, 1.95 * t, dict(sel)

    return build


def _events(metric: str) -> Callable[[dict[str, Any], tuple[int, int] | None], Scenario]:
    """A counter that grows by 1/s while the condition holds and stays flat otherwise."""

    def build(rule: dict[str, Any], high: tuple[int, int] | None) -> Scenario:
        sel = matchers(rule["expr"])
        incs = [0.0] + [PER_MIN if h else 0.0 for h in _phases(high)[1:]]
        return [_series(metric, {**sel, "layer": "0", "reason": "rate"}, _counter(incs))], 1.0, sel

    return build


def _error_rate(rule: dict[str, Any], high: tuple[int, int] | None) -> Scenario:
    """10% of requests fail while high, 1 in 60 otherwise (both against thresholds of 5% and up)."""
    sel, t = matchers(rule["expr"]), threshold(rule["expr"])
    bad_share = min(100.0, 2 * t) / 100
    phases = _phases(high)
    fail = [0.0] + [PER_MIN * bad_share if h else 1.0 for h in phases[1:]]
    ok = [0.0] + [PER_MIN - f for f in fail[1:]]
    series = [
        _series("kubemoe_router_requests_total", {**sel, "code": "500", "stream": "false"}, _counter(fail)),
        _series("kubemoe_router_requests_total", {**sel, "code": "200", "stream": "false"}, _counter(ok)),
    ]
    return series, 100 * bad_share, sel


def _up(rule: dict[str, Any], high: tuple[int, int] | None) -> Scenario:
    sel = matchers(rule["expr"])
    values = [0.0 if h else 1.0 for h in _phases(high)]
    return [_series("up", {**sel, "pod": f"{sel['service']}-0"}, values)], 0.0, sel


BUILDERS: dict[str, Callable[[dict[str, Any], tuple[int, int] | None], Scenario]] = {
    "KubeMoEHighP95Latency": _histogram("vllm:e2e_request_latency_seconds"),
    "KubeMoEHighTimeToFirstToken": _histogram("vllm:time_to_first_token_seconds"),
    "KubeMoEKVCacheNearlyFull": _gauge("vllm:kv_cache_usage_perc"),
    "KubeMoEManyWaitingRequests": _gauge("vllm:num_requests_waiting"),
    "KubeMoEModelServerDown": _up,
    "KubeMoERouterErrorRate": _error_rate,
    "KubeMoERouterHighP95Latency": _histogram("kubemoe_router_request_duration_seconds"),
    "KubeMoERouterQuorumMisses": _events("kubemoe_router_layer_deadlines_total"),
    "KubeMoERouterSheddingLoad": _events("kubemoe_router_shed_requests_total"),
    "KubeMoEPeerNearInstability": _gauge("kubemoe_peer_utilization"),
}
GAUGES = {
    "KubeMoEKVCacheNearlyFull",
    "KubeMoEManyWaitingRequests",
    "KubeMoEModelServerDown",
    "KubeMoEPeerNearInstability",
}


def _expected(rule: dict[str, Any], value: float, labels: dict[str, str]) -> dict[str, Any]:
    all_labels = {**labels, **rule["labels"]}
    return {
        "exp_labels": all_labels,
        "exp_annotations": {k: expand(v, value, all_labels) for k, v in rule["annotations"].items()},
    }


def _checks(
    rule: dict[str, Any], times: tuple[str, ...], firing: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    return [{"eval_time": t, "alertname": rule["alert"], "exp_alerts": firing} for t in times]


def cases(rule: dict[str, Any]) -> list[dict[str, Any]]:
    """promtool `tests:` entries for one alerting rule: above, below, (spike), and (absent) scenarios."""
    build = BUILDERS[rule["alert"]]
    series, value, labels = build(rule, HIGH)
    firing = [_expected(rule, value, labels)]
    out = [
        {
            "name": f"{rule['alert']}: above threshold fires after for:, then resolves",
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": _checks(rule, CHECK_QUIET[:1], [])
            + _checks(rule, CHECK_FIRING, firing)
            + _checks(rule, CHECK_RESOLVED, []),
        },
        {
            "name": f"{rule['alert']}: below threshold never fires",
            "interval": "1m",
            "input_series": build(rule, None)[0],
            "alert_rule_test": _checks(rule, ("5m", "12m", "19m", "30m"), []),
        },
    ]
    if rule["alert"] in GAUGES:
        out.append(
            {
                "name": f"{rule['alert']}: a spike shorter than for: never fires",
                "interval": "1m",
                "input_series": build(rule, (5, 8))[0],
                "alert_rule_test": _checks(rule, ("8m", "10m", "12m", "15m"), []),
            }
        )
    if rule["alert"] == "KubeMoEModelServerDown":
        # No target at all (the ServiceMonitor selects nothing): absent() must page as well.
        out.append(
            {
                "name": f"{rule['alert']}: no server scraped at all fires",
                "interval": "1m",
                "input_series": [_series("vllm:num_requests_running", {"namespace": "other"}, [0] * 20)],
                "alert_rule_test": _checks(rule, ("4m",), []) + _checks(rule, ("6m",), firing),
            }
        )
    return out
