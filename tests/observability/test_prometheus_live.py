"""A real Prometheus scrapes the vLLM stand-ins and `kubemoe router`, evaluates the rendered alerts, and the
alerts fire and clear as the stand-ins' values change (see stack.py for what runs and what is scaled).

The tests run in order on one stack: calm, then hot (alerts fire), calm again (they clear), one model server
down (it pages) and back, and last the check that every series the rules select is exported by a target.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .dashboards import DASHBOARDS, grafana_to_promql, panel_queries, variable_queries
from .rendered import alerting_rules, metric_names, prometheus_rules, selectors
from .stack import Stack, calm_replies, hot_replies, run_stack

HOT_MODEL = "mixtral-8x7b"
DOWN_MODEL = "deepseek-v3"
MODEL_ALERTS = {"KubeMoEHighP95Latency", "KubeMoEHighTimeToFirstToken", "KubeMoEKVCacheNearlyFull",
                "KubeMoEManyWaitingRequests"}  # fmt: skip
ROUTER_ALERTS = {"KubeMoERouterErrorRate", "KubeMoERouterHighP95Latency", "KubeMoERouterQuorumMisses",
                 "KubeMoERouterSheddingLoad"}  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("prom-live")
    model_rules = {
        k.split("/")[0]: v for k, v in prometheus_rules().items() if not k.startswith("moa-pipeline")
    }
    with run_stack(tmp, model_rules) as s:
        yield s


def test_prometheus_scrapes_every_target(stack: Stack) -> None:
    def all_up() -> bool:
        active = stack.prometheus.api("targets")["activeTargets"]
        return len(active) == len(stack.standins) + 2 and all(t["health"] == "up" for t in active)

    stack.prometheus.wait_until(all_up, 30, "every target up")
    groups = stack.prometheus.api("rules")["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    rendered = {r["alert"] for obj in stack.rules.values() for r in alerting_rules(obj["spec"])}
    assert loaded == rendered
    assert all(r["health"] != "err" for g in groups for r in g["rules"]), groups


def test_calm_stack_fires_nothing(stack: Stack) -> None:
    stack.drive(oversized=False)
    time.sleep(20)  # longer than the scaled windows (15s) plus `for` (3s)
    assert stack.alert_keys() == set()
    assert all(code == 200 for code in (stack.chat(), stack.chat()))


def test_hot_model_and_pipeline_fire_their_alerts(stack: Stack) -> None:
    hot = stack.standins[HOT_MODEL]
    hot.set_load(kv_usage=0.99, waiting=500)
    hot.shape.e2e_seconds, hot.shape.ttft_seconds = 100.0, 50.0
    # hot_replies: quorum misses, slow and failing requests; every other request is too large (shed).
    stack.stub.replies.clear()
    stack.stub.replies.update(hot_replies())
    stack.drive(oversized=True)
    expected = {(a, HOT_MODEL) for a in MODEL_ALERTS} | {(a, stack.pipeline) for a in ROUTER_ALERTS}
    stack.prometheus.wait_until(lambda: stack.alert_keys() >= expected, 60, f"alerts {sorted(expected)}")
    assert stack.alert_keys() == expected, "an alert fired for a model that is calm"
    for alert in stack.prometheus.firing():
        labels, notes = alert["labels"], alert["annotations"]
        assert labels["namespace"] == "default", labels
        assert labels["severity"], labels
        assert {"summary", "description", "runbook"} <= set(notes), notes
        assert "{{" not in notes["description"], notes
        assert "<no value>" not in notes["description"], notes


def test_alerts_clear_when_the_load_goes(stack: Stack) -> None:
    hot = stack.standins[HOT_MODEL]
    hot.set_load(kv_usage=0.3, waiting=0)
    hot.shape.e2e_seconds, hot.shape.ttft_seconds = 2.0, 0.2
    stack.stub.replies.clear()
    stack.stub.replies.update(calm_replies())
    stack.drive(oversized=False)
    stack.prometheus.wait_until(lambda: stack.alert_keys() == set(), 60, "every alert resolved")


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_returns_series_from_the_stand_ins(stack: Stack, dashboard: Path) -> None:
    """Each panel query and variable query of the shipped dashboards, with the variables set to All, parses
    and returns series from the running stack."""
    doc = json.loads(dashboard.read_text())
    empty = []
    for expr, where in panel_queries(doc):
        if not stack.prometheus.query(grafana_to_promql(expr)):
            empty.append(f"{where}: {expr}")
    for metric_selector, label, name in variable_queries(doc):
        values = stack.prometheus.api(
            f"label/{label}/values", **{"match[]": grafana_to_promql(metric_selector)}
        )
        if not values:
            empty.append(f"variable {name}: label_values({metric_selector}, {label})")
    assert empty == []


def test_a_model_server_that_goes_away_pages_and_recovers(stack: Stack) -> None:
    standin = stack.standins[DOWN_MODEL]
    stack.loop.run(standin.stop())
    stack.prometheus.wait_until(
        lambda: ("KubeMoEModelServerDown", DOWN_MODEL) in stack.alert_keys(), 30, "KubeMoEModelServerDown"
    )
    (down,) = [a for a in stack.prometheus.firing() if a["labels"]["alertname"] == "KubeMoEModelServerDown"]
    assert down["labels"]["severity"] == "critical"
    assert down["labels"]["model"] == DOWN_MODEL
    stack.loop.run(standin.start())
    stack.prometheus.wait_until(lambda: stack.alert_keys() == set(), 30, "KubeMoEModelServerDown resolved")
    stack.quiet()


def test_every_series_a_rendered_rule_selects_is_exported(stack: Stack) -> None:
    """Each `metric{matchers}` in every rendered rule (all samples, unscaled) matches scraped series.

    A rule on a name no target exports (a renamed vLLM metric, a typo) or with matchers no target carries
    would never fire; this fails instead.
    """
    exported = set(stack.prometheus.api("label/__name__/values"))
    missing = []
    for key, obj in {**prometheus_rules(), "moa-pipeline(live)": stack.rules["moa-pipeline"]}.items():
        for rule in alerting_rules(obj["spec"]):
            names = metric_names(rule["expr"])
            assert names, rule["expr"]
            missing += [f"{key} {rule['alert']}: {n}" for n in names - exported]
            missing += [
                f"{key} {rule['alert']}: {sel}"
                for sel in selectors(rule["expr"])
                if not stack.prometheus.series(sel, stack.started)
            ]
    assert missing == []


def test_the_export_check_catches_a_name_no_target_exports(stack: Stack) -> None:
    # vLLM 0.33 no longer exports the old KV-cache gauge: a rule on it would select nothing.
    assert stack.prometheus.series('vllm:gpu_cache_usage_perc{namespace="default"}', stack.started) == []
    assert "vllm:gpu_cache_usage_perc" not in set(stack.prometheus.api("label/__name__/values"))
