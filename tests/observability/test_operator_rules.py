"""The chart's alerts on the operator itself: promtool checks and unit-tests them, their metrics are the
operator's, and the chart's PrometheusRule template embeds them unchanged (real helm)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client.registry import CollectorRegistry

from kubemoe.controller import metrics

from .helm_chart import charts, template
from .rendered import OPERATOR_RULES, alerting_rules, metric_names
from .tools import tool

UNIT_TESTS = Path(__file__).with_name("operator_rules.test.yaml")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("PROMTOOL")), *map(str, args)], check=False, capture_output=True, text=True
    )


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Series names a registry exposes (counters gain _total, histograms _bucket/_sum/_count)."""
    names = set()
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def test_promtool_check_rules_passes() -> None:
    result = promtool("check", "rules", OPERATOR_RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    shutil.copy(OPERATOR_RULES, tmp_path / "operator-rules.yaml")
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    result = promtool("test", "rules", tmp_path / UNIT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_operator_alert_has_a_unit_test() -> None:
    tested = {
        t["alertname"]
        for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for t in case["alert_rule_test"]
    }
    alerts = {r["alert"] for r in alerting_rules(yaml.safe_load(OPERATOR_RULES.read_text()))}
    assert alerts == tested


def test_the_rules_read_metrics_the_operator_exports() -> None:
    used = set().union(
        *(metric_names(r["expr"]) for r in alerting_rules(yaml.safe_load(OPERATOR_RULES.read_text())))
    )
    assert used - exported_names(metrics.REGISTRY) == set()


def test_prometheusrule_template_is_gated_and_embeds_the_rules(tmp_path: Path) -> None:
    rules = yaml.safe_load(OPERATOR_RULES.read_text())
    for chart in charts(tmp_path):
        assert [d for d in template(chart) if d["kind"] == "PrometheusRule"] == []
        docs = template(chart, "prometheusRule.enabled=true", "prometheusRule.additionalLabels.release=kps")
        (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert rule["metadata"]["namespace"] == "kubemoe-system"
        assert rule["metadata"]["labels"]["release"] == "kps"
        assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel"
        # Prometheus' {{ $labels... }} templates survive helm untouched.
        assert rule["spec"] == rules
        path = tmp_path / f"{chart.name}-rendered.yaml"
        path.write_text(yaml.safe_dump(rule["spec"]))
        result = promtool("check", "rules", path)
        assert result.returncode == 0, result.stdout + result.stderr
