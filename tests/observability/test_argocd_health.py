"""Argo CD health checks for MoEModel and MoAPipeline, evaluated by Argo CD's own code.

hack/argocd-health (built by hack/tools-observability from github.com/argoproj/argo-cd/v3 on the Go module
proxy) runs every fixture of deploy/argocd/resource_customizations twice: as argo-cd's built-in-check test
harness does (util/lua VM.ExecuteHealthLua) and as `argocd admin settings resource-overrides health` does with
deploy/argocd/argocd-cm-health.yaml (util/settings reads the argocd-cm keys, gitops-engine's
health.GetResourceHealth runs them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.api.moemodel import MoEModel

from .tools import REPO, tool

ARGOCD = REPO / "deploy" / "argocd"
CUSTOMIZATIONS = ARGOCD / "resource_customizations"
ARGOCD_CM = ARGOCD / "argocd-cm-health.yaml"
KINDS = {"MoEModel": MoEModel, "MoAPipeline": MoAPipeline}
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended"}


def evaluate(root: Path, cm: Path) -> tuple[int, list[dict[str, Any]], str]:
    out = subprocess.run(
        [str(tool("ARGOCD_HEALTH")), str(root), str(cm)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.returncode, [json.loads(line) for line in out.stdout.splitlines()], out.stderr


def cases_of(kind: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load((CUSTOMIZATIONS / "kubemoe.io" / kind / "health_test.yaml").read_text())
    tests: list[dict[str, Any]] = doc["tests"]
    return tests


def test_argo_cd_evaluates_every_fixture_as_expected() -> None:
    rc, results, stderr = evaluate(CUSTOMIZATIONS, ARGOCD_CM)
    assert rc == 0, [r for r in results if not r["ok"]] or stderr
    fixtures = sum(len(cases_of(k)) for k in KINDS)
    assert len(results) == 2 * fixtures
    assert {r["mode"] for r in results} == {"builtin", "argocd-cm"}
    assert all(r["ok"] for r in results)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_health_status_is_covered(kind: str) -> None:
    assert {t["healthStatus"]["status"] for t in cases_of(kind)} == STATUSES
    messages = {t["inputPath"]: t["healthStatus"]["message"] for t in cases_of(kind)}
    assert "generation" in messages["testdata/stale_generation.yaml"]
    assert all(messages.values())


def test_a_wrong_expectation_fails_the_evaluation(tmp_path: Path) -> None:
    root = tmp_path / "resource_customizations"
    shutil.copytree(CUSTOMIZATIONS, root)
    path = root / "kubemoe.io" / "MoEModel" / "health_test.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["tests"][0]["healthStatus"]["status"] = "Degraded"
    path.write_text(yaml.safe_dump(doc))
    rc, results, _ = evaluate(root, ARGOCD_CM)
    assert rc == 1
    (bad,) = {r["path"] for r in results if not r["ok"]}
    assert bad.endswith(doc["tests"][0]["inputPath"])


def test_a_broken_script_in_argocd_cm_fails(tmp_path: Path) -> None:
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    cm["data"]["resource.customizations.health.kubemoe.io_MoEModel"] = (
        "hs = {} hs.status = 'Healthy' return hs end"
    )
    path = tmp_path / "argocd-cm.yaml"
    path.write_text(yaml.safe_dump(cm))
    rc, results, _ = evaluate(CUSTOMIZATIONS, path)
    assert rc == 1
    failed = [r for r in results if not r["ok"]]
    assert failed
    assert all(r["mode"] == "argocd-cm" for r in failed)
    assert all(r["error"] for r in failed)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_argocd_cm_snippet_carries_the_shipped_scripts(kind: str) -> None:
    data = yaml.safe_load(ARGOCD_CM.read_text())["data"]
    script = (CUSTOMIZATIONS / "kubemoe.io" / kind / "health.lua").read_text()
    assert data[f"resource.customizations.health.kubemoe.io_{kind}"] == script


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fixtures_are_valid_objects_and_all_are_tested(kind: str) -> None:
    directory = CUSTOMIZATIONS / "kubemoe.io" / kind
    listed = {t["inputPath"] for t in cases_of(kind)}
    assert listed == {f"testdata/{p.name}" for p in (directory / "testdata").glob("*.yaml")}
    for rel in listed:
        KINDS[kind].model_validate(yaml.safe_load((directory / rel).read_text()))
