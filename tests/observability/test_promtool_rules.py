"""Every rendered PrometheusRule (all samples, via `kubemoe render`) and the chart's operator rules, checked by
the real promtool: `check rules` (syntax, PromQL, templates) and `test rules` (each alert's behaviour)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promtool_cases import BUILDERS, cases
from .rendered import alerting_rules, peer_prometheus_rules, prometheus_rules, rule_file
from .tools import tool

SAMPLE_RULES = prometheus_rules()
PEER_RULES = peer_prometheus_rules()
RULES = {**SAMPLE_RULES, **PEER_RULES}
PAGER_LABELS = {"severity", "namespace"}
PAGER_ANNOTATIONS = {"summary", "description", "runbook"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("PROMTOOL")), *map(str, args)], check=False, capture_output=True, text=True, timeout=120
    )


def test_every_sample_renders_prometheus_rules() -> None:
    # Four MoEModel samples and one MoAPipeline: a sample that silently stopped rendering rules fails here.
    assert len(SAMPLE_RULES) == 5, sorted(SAMPLE_RULES)
    # ... and the pipeline made decentralised: its peers' alerts, the stability one among them.
    (peers,) = PEER_RULES.values()
    assert "KubeMoEPeerNearInstability" in {r["alert"] for r in alerting_rules(peers["spec"])}


@pytest.mark.parametrize("key", sorted(RULES))
def test_promtool_check_rules_passes_on_rendered_rules(key: str, tmp_path: Path) -> None:
    path = rule_file(RULES[key], tmp_path, key)
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_rules_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check above can fail: a rule with a PromQL syntax error is refused."""
    bad = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "sum(rate(x[5m])"}]}]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = promtool("check", "rules", path)
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


@pytest.mark.parametrize("key", sorted(RULES))
def test_every_alert_has_what_a_pager_needs(key: str) -> None:
    for rule in alerting_rules(RULES[key]["spec"]):
        owner = {"model", "pipeline"} & set(rule["labels"])
        assert owner, f"{rule['alert']} names neither its model nor its pipeline"
        assert rule["labels"]["namespace"] == RULES[key]["metadata"]["namespace"]
        assert set(rule["labels"]) >= PAGER_LABELS, rule["alert"]
        assert set(rule["annotations"]) >= PAGER_ANNOTATIONS, rule["alert"]
        assert rule["alert"] in BUILDERS, f"{rule['alert']} has no promtool test case"


def _unit_test_file(tmp_path: Path, rules_path: Path, alerts: list[dict[str, Any]]) -> Path:
    tests = [case for rule in alerts for case in cases(rule)]
    path = tmp_path / "tests.yaml"
    path.write_text(
        yaml.safe_dump(
            {"rule_files": [rules_path.name], "evaluation_interval": "1m", "tests": tests}, sort_keys=False
        )
    )
    return path


@pytest.mark.parametrize("key", sorted(RULES))
def test_promtool_test_rules_for_every_alert(key: str, tmp_path: Path) -> None:
    rules_path = rule_file(RULES[key], tmp_path, key)
    alerts = alerting_rules(RULES[key]["spec"])
    result = promtool("test", "rules", _unit_test_file(tmp_path, rules_path, alerts))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fail_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The generated cases can fail: the same cases against a rule whose threshold was raised do not pass."""
    key = sorted(RULES)[0]
    spec = yaml.safe_load(yaml.safe_dump(RULES[key]["spec"]))
    rule = next(r for r in alerting_rules(spec) if r["alert"] == "KubeMoEKVCacheNearlyFull")
    cases_for = cases(rule)
    rule["expr"] = rule["expr"].rsplit(">", 1)[0] + "> 0.999"
    rules_path = tmp_path / "raised.rules.yaml"
    rules_path.write_text(yaml.safe_dump(spec))
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [rules_path.name], "tests": cases_for}))
    result = promtool("test", "rules", path)
    assert result.returncode != 0
    assert "KubeMoEKVCacheNearlyFull" in result.stdout + result.stderr
