"""Render the chart's monitoring templates with the real helm (the toolchain's, hack/toolchain).

The chart's Chart.yaml, values.yaml and _helpers.tpl come from the install work; until they are in this tree the
templates are rendered inside a scaffold chart that has only those three files, with a `kubemoe.labels` helper
of its own. When charts/kubemoe/Chart.yaml exists, the real chart is rendered as well.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .tools import REPO

CHART = REPO / "charts" / "kubemoe"
OWN = ("templates/prometheusrule.yaml", "templates/grafana-dashboards.yaml", "rules", "dashboards")
SCAFFOLD_LABELS = {"app.kubernetes.io/name": "kubemoe", "app.kubernetes.io/instance": "RELEASE"}


def helm() -> Path:
    out = subprocess.run(
        [str(REPO / "hack" / "toolchain"), "bin-dir"], capture_output=True, text=True, check=True
    )
    path = Path(out.stdout.strip()) / "helm"
    if not path.exists():
        pytest.fail(f"helm is not built at {path}: run `hack/toolchain build`")
    return path


def scaffold(tmp: Path) -> Path:
    chart = tmp / "kubemoe"
    (chart / "templates").mkdir(parents=True)
    for rel in OWN:
        src = CHART / rel
        if src.is_dir():
            shutil.copytree(src, chart / rel)
        else:
            shutil.copy(src, chart / rel)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: kubemoe\nversion: 0.0.0-scaffold\n")
    (chart / "values.yaml").write_text(
        "prometheusRule: {enabled: false, additionalLabels: {}}\n"
        "grafanaDashboards: {enabled: false, labels: {}, annotations: {}}\n"
    )
    (chart / "templates" / "_helpers.tpl").write_text(
        '{{- define "kubemoe.labels" -}}\n'
        "app.kubernetes.io/name: kubemoe\n"
        "app.kubernetes.io/instance: {{ .Release.Name }}\n"
        "{{- end }}\n"
    )
    return chart


def template(chart: Path, *sets: str) -> list[dict[str, Any]]:
    args = [str(helm()), "template", "rel", str(chart), "--namespace", "kubemoe-system"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def charts(tmp: Path) -> list[Path]:
    found = [scaffold(tmp)]
    if (CHART / "Chart.yaml").exists():
        found.append(CHART)
    return found
