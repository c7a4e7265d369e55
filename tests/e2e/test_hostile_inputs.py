"""The hostile-input table (`tests/cases/hostile_inputs.yaml`) on the real API server.

Every row is applied with `kubectl apply`, as a user would. A row the table marks refused must be refused
at apply with its message (the CEL rule or schema check) and must also be refused by the Python twin
(`kubemoe render`'s parser); an admitted row must be admitted by both, and names the condition reason the
operator reports for it (asserted where a pure function can tell today: tests/unit/test_admission_table.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from cases.hostile import Row, rows
from kubemoe.documents import DocumentError, parse_resource

from .harness import KubeCluster, wait_for
from .operator_harness import *  # noqa: F403 - fixtures and helpers
from .operator_harness import Kube, OperatorProcess, sample, wait_ready

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ROWS = rows()


@pytest.fixture(scope="module")
def crds_installed(kube_cluster: KubeCluster) -> KubeCluster:
    kube_cluster.kubectl("apply", "--server-side", "--field-manager=kubemoe-tests", "-f", str(ROOT / "crds"))
    kube_cluster.wait_established("moemodels.kubemoe.io", "moapipelines.kubemoe.io")
    return kube_cluster


def _python_refusal(row: Row) -> str | None:
    try:
        parse_resource(row.doc, row.id)
    except DocumentError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_each_hostile_cr_is_refused_at_apply_or_admitted_for_a_condition(
    crds_installed: KubeCluster, namespace: str, row: Row
) -> None:
    doc = {**row.doc, "metadata": {**row.doc["metadata"], "namespace": namespace}}
    proc = crds_installed.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    python = _python_refusal(row)
    if row.rejected:
        assert proc.returncode != 0, f"admitted: {proc.stdout}"
        assert row.api is not None
        assert row.api in proc.stderr, proc.stderr
        assert python is not None, "the API server refuses it but kubemoe render would not"
    else:
        assert proc.returncode == 0, proc.stderr
        assert python is None, python
        kind = "moe" if row.kind == "MoEModel" else "moa"
        got = crds_installed.kubectl("get", kind, doc["metadata"]["name"], "-n", namespace, "-o", "yaml")
        assert yaml.safe_load(got.stdout)["metadata"]["name"] == doc["metadata"]["name"]
        # The reason the operator must report for it: row.condition (see the table's header).


def _peak_rss_kib(op: OperatorProcess) -> int:
    assert op.proc is not None
    for line in Path(f"/proc/{op.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_template_bombs_take_neither_memory_nor_workers_from_the_operator(
    operator_factory: Callable[..., OperatorProcess], kube: Kube, namespace: str
) -> None:
    # The two bombs: 'x' * 600000000 took the operator from 77 MiB to 2,249 MiB, and two nested
    # range(100000) pipelines held both workers so a valid model was not reconciled for 90 s.
    op = operator_factory()
    before = _peak_rss_kib(op)
    bombs = [r for r in ROWS if r.id in ("template-string-bomb", "template-nested-range-loops")]
    for i, row in enumerate(bombs * 2):  # two of each: more bombs than the operator has workers
        doc = {**row.doc, "metadata": {"name": f"bomb-{i}"}}
        kube.apply(doc, namespace)

    def tried(name: str) -> bool:  # the operator reported on it: a status condition or a log line
        got = kube.kubectl("get", "moa", name, "-n", namespace, "-o", "yaml", check=False)
        status = (yaml.safe_load(got.stdout) or {}).get("status") or {} if got.returncode == 0 else {}
        return bool(status.get("conditions")) or f"/{name} " in op.log()

    wait_for("the operator to try every bomb", lambda: all(tried(f"bomb-{i}") for i in range(4)) or None, 60)
    start = time.monotonic()
    kube.apply(sample("mixtral-8x7b-p4de.yaml"), namespace)
    wait_ready(kube, namespace, "mixtral-8x7b", timeout_s=60)
    ready_after = time.monotonic() - start
    growth_mib = (_peak_rss_kib(op) - before) / 1024
    assert op.alive()
    assert growth_mib < 100, f"operator peak RSS grew by {growth_mib:.0f} MiB"
    print(
        f"valid model Ready {ready_after:.1f} s after 4 bomb pipelines; peak RSS growth {growth_mib:.1f} MiB"
    )
