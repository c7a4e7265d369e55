"""The Python twins of the admission rules, on the shared hostile-input table (`tests/cases`).

The same rows run on the real API server in tests/e2e/test_hostile_inputs.py: a row refused here must be
refused at `kubectl apply` too, and an admitted row must be admitted there; together the two files hold
every CEL rule against its Python twin.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cases.hostile import Row, rows
from kubemoe.api.crd import all_crds
from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.api.moemodel import MoEModel
from kubemoe.catalog.loader import load_catalog
from kubemoe.documents import DocumentError, parse_resource
from kubemoe.planner import PlanningError, plan_placement
from kubemoe.router.prompts import check_pipeline_templates

ROWS = rows()
KUBEMOE = str(Path(sys.executable).parent / "kubemoe")


def test_the_table_has_fifty_hostile_rows_of_both_kinds() -> None:
    assert len(ROWS) >= 50
    assert {r.kind for r in ROWS} == {"MoEModel", "MoAPipeline"}
    assert sum(r.rejected for r in ROWS) >= 40


@pytest.mark.parametrize("row", [r for r in ROWS if r.rejected], ids=lambda r: r.id)
def test_python_refuses_what_the_api_server_refuses(row: Row) -> None:
    with pytest.raises(DocumentError) as info:
        parse_resource(row.doc, row.id)
    assert row.python is not None
    assert row.python in str(info.value), str(info.value)


@pytest.mark.parametrize("row", [r for r in ROWS if not r.rejected], ids=lambda r: r.id)
def test_admitted_rows_parse_and_fail_later_with_their_reason(row: Row) -> None:
    obj = parse_resource(row.doc, row.id)
    if row.checked_by == "planner":
        assert isinstance(obj, MoEModel)
        with pytest.raises(PlanningError) as info:
            plan_placement(obj.spec, load_catalog())
        assert info.value.reason.value == row.condition
    elif row.checked_by == "templates":
        assert isinstance(obj, MoAPipeline)
        problem = check_pipeline_templates(obj.spec)
        assert problem is not None
        assert problem.reason == row.condition
        assert "prompt template of agent" in problem.message, problem.message
    else:  # the operator's to report (tests/e2e/test_hostile_inputs.py asserts admission)
        assert row.checked_by == "controller"


def _crd_messages(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [v["message"] for v in node.get("x-kubernetes-validations", [])]
        return found + [m for v in node.values() for m in _crd_messages(v)]
    if isinstance(node, list):
        return [m for v in node for m in _crd_messages(v)]
    return []


def test_every_cel_rule_of_the_crds_has_a_row() -> None:
    messages = {m for crd in all_crds().values() for m in _crd_messages(crd)}
    fragments = [r.api for r in ROWS if r.api]
    uncovered = sorted(m for m in messages if not any(f in m for f in fragments))
    assert not uncovered


@pytest.mark.parametrize(
    "row_id", ["name-59-chars-leading-digit", "memory-limit-below-request", "route-hostname-not-a-host"]
)
def test_kubemoe_render_refuses_the_row(row_id: str) -> None:
    row = next(r for r in ROWS if r.id == row_id)
    proc = subprocess.run(
        [KUBEMOE, "render", "-f", "-"],
        input=yaml.safe_dump(row.doc),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert row.python is not None
    assert row.python in proc.stderr
    assert "Traceback" not in proc.stderr
