"""The chart's Grafana dashboards: valid against Grafana's dashboard schema (grafana-foundation-sdk's Go types,
strict, hack/grafana-validate), data source as a variable, the panels the issue asks for, and shipped as
sidecar-labelled ConfigMaps by the chart (real helm). Their PromQL runs against the live stack in
test_prometheus_live.py."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .dashboards import DASHBOARDS
from .helm_chart import charts, template
from .tools import tool

PROMETHEUS_DS = {"type": "prometheus", "uid": "${datasource}"}
PANELS = {
    "moe-models.json": {"Request rate", "Time to first token", "End-to-end latency", "Tokens per second",
                        "KV-cache usage", "Waiting and running requests", "Serving replicas", "Plan cost"},
    "moa-pipelines.json": {"Latency", "Error rate", "Agent latency", "Agent errors", "Quorum short-circuits",
                           "Shed requests"},
}  # fmt: skip


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("GRAFANA_VALIDATE")), *map(str, paths)], check=False, capture_output=True, text=True
    )


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def test_both_dashboards_are_shipped() -> None:
    assert [p.name for p in DASHBOARDS] == ["moa-pipelines.json", "moe-models.json"]


def test_dashboards_pass_grafanas_schema() -> None:
    result = validate(*DASHBOARDS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK ") == len(DASHBOARDS)


@pytest.mark.parametrize(
    ("where", "mutate"),
    [
        ("dashboard", lambda d: d.update(refreshh="30s")),
        ("panel options", lambda d: d["panels"][0]["options"]["legend"].update(displayMode=3)),
        ("prometheus query", lambda d: d["panels"][0]["targets"][0].update(exprr="up")),
        ("variable", lambda d: d["templating"]["list"][1].update(multi="yes")),
    ],
)
def test_the_schema_check_rejects_a_broken_dashboard(where: str, mutate: Any, tmp_path: Path) -> None:
    doc = copy.deepcopy(load(DASHBOARDS[0]))
    mutate(doc)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    result = validate(path)
    assert result.returncode == 1, f"{where}: {result.stdout}"
    assert "FAIL" in result.stdout


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_datasource_is_a_variable_everywhere(path: Path) -> None:
    doc = load(path)
    (ds,) = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert (ds["name"], ds["query"]) == ("datasource", "prometheus")
    for panel in doc["panels"]:
        assert panel["datasource"] == PROMETHEUS_DS, panel["title"]
        assert all(t["datasource"] == PROMETHEUS_DS for t in panel["targets"]), panel["title"]
    assert all(v["datasource"] == PROMETHEUS_DS for v in doc["templating"]["list"] if v["type"] == "query")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_have_the_panels_operators_look_for(path: Path) -> None:
    doc = load(path)
    assert {p["title"] for p in doc["panels"]} >= PANELS[path.name]
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])


def test_chart_ships_the_dashboards_as_sidecar_configmaps(tmp_path: Path) -> None:
    for chart in charts(tmp_path):
        assert [
            d for d in template(chart) if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]
        ] == []
        docs = template(
            chart, "grafanaDashboards.enabled=true", "grafanaDashboards.annotations.grafana_folder=kubemoe"
        )
        maps = {
            d["metadata"]["name"]: d
            for d in docs
            if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]
        }
        assert sorted(maps) == ["rel-dashboard-moa-pipelines", "rel-dashboard-moe-models"]
        for cm in maps.values():
            assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
            assert cm["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel"
            assert cm["metadata"]["annotations"] == {"grafana_folder": "kubemoe"}
            ((key, text),) = cm["data"].items()
            assert json.loads(text) == load(next(p for p in DASHBOARDS if p.name == key))
        custom = template(chart, "grafanaDashboards.enabled=true", "grafanaDashboards.labels.team=ml")
        labels = next(d for d in custom if d["kind"] == "ConfigMap")["metadata"]["labels"]
        assert labels["team"] == "ml"
        assert (
            "grafana_dashboard" not in labels
        )  # labels given replace the default, for a sidecar set otherwise
