"""The hostile-input table (`hostile_inputs.yaml`) as rows: one document and one expectation each."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TABLE = Path(__file__).with_name("hostile_inputs.yaml")

#: Stand-ins for values too long to write in the table.
_EXPANSIONS: dict[str, Any] = {
    "LONG_40000": "x" * 40000,
    "LIST_65": [f"--flag-{i}" for i in range(65)],
    "LAYERS_9": [{"agents": [{"name": f"a{i}", "moeModelRef": {"name": "m"}}]} for i in range(9)],
    "MAP_33": {f"example.com/r{i}": 1 for i in range(33)},
}
CHECKED_BY = ("planner", "templates", "controller")


@dataclass(frozen=True)
class Row:
    id: str
    kind: str
    doc: dict[str, Any]
    #: Fragments of the refusal message at apply (api) and in `kubemoe render` (python); None when admitted.
    api: str | None
    python: str | None
    #: The condition reason the operator must report for an admitted row, and what asserts it today.
    condition: str | None
    checked_by: str | None

    @property
    def rejected(self) -> bool:
        return self.condition is None


def _expand(node: Any) -> Any:
    if isinstance(node, str) and node in _EXPANSIONS:
        return copy.deepcopy(_EXPANSIONS[node])
    if isinstance(node, dict):
        return {k: _expand(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v) for v in node]
    return node


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base.get(key), value)
        return out
    return copy.deepcopy(patch)


def rows() -> list[Row]:
    table = yaml.safe_load(TABLE.read_text())
    out = []
    for raw in table["rows"]:
        kind = raw["kind"]
        if "doc" in raw:
            doc = _expand(raw["doc"])
        else:
            doc = {
                "apiVersion": "kubemoe.io/v1alpha1",
                "kind": kind,
                "metadata": {"name": raw.get("name", "h")},
                "spec": _merge(table["base"][kind], _expand(raw.get("spec", {}))),
            }
        shared = raw.get("rejected")
        row = Row(
            id=raw["id"],
            kind=kind,
            doc=doc,
            api=raw.get("api", shared),
            python=raw.get("python", shared),
            condition=raw.get("condition"),
            checked_by=raw.get("checkedBy"),
        )
        assert (row.condition is None) == (row.api is not None and row.python is not None), row.id
        assert row.condition is None or row.checked_by in CHECKED_BY, row.id
        out.append(row)
    assert len({r.id for r in out}) == len(out), "row ids must be unique"
    return out
