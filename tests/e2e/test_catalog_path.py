"""`KUBEMOE_CATALOG_PATH` reaches the running operator (`kubemoe run`), not only the CLI (issue 14).

An instance type that exists only in the override file is planned by an operator started with the
variable, and refused as unknown (a Planned=False condition) by one started without it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cases.catalog_override import EXTRA_INSTANCE

from .harness import wait_for
from .operator_harness import *  # noqa: F403 - fixtures and helpers
from .operator_harness import Kube, OperatorProcess, cond, moe_doc

pytestmark = pytest.mark.e2e


def _planned(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = kube.get("MoEModel", namespace, name)
        planned = cond(obj, "Planned")
        return planned if planned.get("status") in ("True", "False") else None

    return wait_for(f"MoEModel {namespace}/{name} Planned", probe, timeout_s=60)


def test_the_operator_plans_on_an_instance_type_from_the_catalog_path(
    operator_factory: Callable[..., OperatorProcess],
    kube: Kube,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = moe_doc(
        "envtest", "mistralai/Mixtral-8x7B-Instruct-v0.1", placement={"instanceTypes": ["x9.envtest"]}
    )

    without = operator_factory()
    kube.apply(doc, namespace)
    planned = _planned(kube, namespace, "envtest")
    assert (planned["status"], planned["reason"]) == ("False", "UnknownInstanceType"), planned
    without.kill()

    extra = tmp_path / "catalog" / "extra.yaml"
    extra.parent.mkdir()
    extra.write_text(EXTRA_INSTANCE)
    monkeypatch.setitem(kube.cluster.env, "KUBEMOE_CATALOG_PATH", str(extra.parent))
    operator_factory()

    def planned_true() -> dict[str, Any] | None:
        planned = _planned(kube, namespace, "envtest")
        return planned if planned["status"] == "True" else None

    planned = wait_for("Planned=True on x9.envtest", planned_true, timeout_s=60)
    assert planned["reason"] == "Planned"
    obj = kube.get("MoEModel", namespace, "envtest")
    assert obj is not None
    assert obj["status"]["plan"]["instanceType"] == "x9.envtest"
