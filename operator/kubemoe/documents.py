"""Read CR documents (YAML, possibly several per file) into typed objects, with errors people can act on.

DocumentError  -- malformed YAML, an unknown kind, or a schema violation; the message names the
                  document, the field and what is wrong.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from kubemoe.api.common import API_VERSION
from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.api.moemodel import MoEModel

CustomResource = MoEModel | MoAPipeline
_KINDS: dict[str, type[MoEModel] | type[MoAPipeline]] = {"MoEModel": MoEModel, "MoAPipeline": MoAPipeline}


class DocumentError(ValueError):
    """A document cannot be read as a kubemoe custom resource."""


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One line per problem: `where: spec.placement.tensorParallelSize: must be a power of two`."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `kubectl explain` lists the fields)"
        lines.append(f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}")
    return "\n".join(lines)


def parse_resource(obj: Any, where: str) -> CustomResource:
    if not isinstance(obj, dict):
        raise DocumentError(f"{where}: expected a mapping with apiVersion, kind, metadata and spec")
    kind = obj.get("kind")
    if kind not in _KINDS:
        raise DocumentError(f"{where}: kind {kind!r} is not a kubemoe kind (MoEModel, MoAPipeline)")
    if obj.get("apiVersion") != API_VERSION:
        raise DocumentError(f"{where}: apiVersion must be {API_VERSION}, not {obj.get('apiVersion')!r}")
    name = (obj.get("metadata") or {}).get("name", "?")
    try:
        return _KINDS[kind].model_validate(obj)
    except ValidationError as exc:
        raise DocumentError(format_validation_error(exc, f"{where} ({kind} {name})")) from exc


def load_documents(text: str, origin: str) -> list[CustomResource]:
    """Every non-empty YAML document of `text` as a custom resource."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(f"{origin}: malformed YAML{at}: {problem}") from exc
    if not docs:
        raise DocumentError(f"{origin}: no documents found")
    return [parse_resource(d, f"{origin} document {i + 1}") for i, d in enumerate(docs)]
