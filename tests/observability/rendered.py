"""The PrometheusRules that `kubemoe render` writes for every sample, and the chart's own rules."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from cases.samples import decentralised_pipeline

from .tools import REPO

SAMPLES = sorted((REPO / "manifests" / "samples").glob("*.yaml"))
OPERATOR_RULES = REPO / "charts" / "kubemoe" / "rules" / "operator-rules.yaml"
# A metric name right before its label matchers; every selector our rules and dashboards write has braces.
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})")


@cache
def render(sample: Path) -> tuple[dict[str, Any], ...]:
    """Every object the CLI renders for one sample file (the real `kubemoe render`, run as a process)."""
    cli = Path(sys.executable).with_name("kubemoe")
    out = subprocess.run([str(cli), "render", "-f", str(sample)], check=True, capture_output=True, text=True)
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def prometheus_rules() -> dict[str, dict[str, Any]]:
    """`<sample stem>/<rule name>` -> the PrometheusRule object, for every sample."""
    found = {}
    for sample in SAMPLES:
        for obj in render(sample):
            if obj["kind"] == "PrometheusRule":
                found[f"{sample.stem}/{obj['metadata']['name']}"] = obj
    return found


def peer_prometheus_rules() -> dict[str, dict[str, Any]]:
    """The PrometheusRule of the MoAPipeline sample made decentralised (`kubemoe render` of it): the peers'
    alerts. Not among the samples' rules: the live Prometheus test scrapes a router, not peers."""
    cli = Path(sys.executable).with_name("kubemoe")
    out = subprocess.run(
        [str(cli), "render", "-f", "-"],
        input=yaml.safe_dump(decentralised_pipeline()),
        check=True,
        capture_output=True,
        text=True,
    )
    objs = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "PrometheusRule"]
    return {f"moa-pipeline-decentralised/{o['metadata']['name']}": o for o in objs}


def rule_file(obj: dict[str, Any], directory: Path, stem: str) -> Path:
    """Write a PrometheusRule's spec as a plain Prometheus rule file (what prometheus-operator hands over)."""
    path = directory / f"{stem.replace('/', '_')}.rules.yaml"
    path.write_text(yaml.safe_dump(obj["spec"], sort_keys=False))
    return path


def alerting_rules(groups_doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in groups_doc["groups"] for r in g["rules"] if "alert" in r]


def selectors(expr: str) -> list[str]:
    """`name{matchers}` vector selectors of a PromQL expression."""
    return [m.group(0) for m in _SELECTOR.finditer(expr)]


_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
             "offset", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers that are neither functions, keywords, label names (in
    braces or grouping lists), strings nor durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        if m.group(2) is None and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names
