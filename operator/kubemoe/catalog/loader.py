"""Load the model and instance tables, then layer run-time overrides on top.

The shipped tables live in `catalog/data/`. Overrides use the same format (a YAML mapping with `models:`
and/or `instances:`), come from files or directories (a mounted ConfigMap is a directory of files), and
replace a shipped entry with the same id/name whole, or add a new one. `KUBEMOE_CATALOG_PATH` (a
`os.pathsep`-separated list) names them for the operator; the CLI takes `--catalog`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubemoe.catalog.schema import InstanceEntry, InstanceTable, ModelEntry, ModelTable

CATALOG_PATH_ENV = "KUBEMOE_CATALOG_PATH"


class CatalogError(ValueError):
    """A catalog file is missing, malformed or fails validation."""


@dataclass(frozen=True)
class Catalog:
    """The model and instance tables, keyed by id (case-insensitive) and instance name."""

    models: dict[str, ModelEntry] = field(default_factory=dict)
    instances: dict[str, InstanceEntry] = field(default_factory=dict)

    def find_model(self, name: str) -> ModelEntry | None:
        """The entry for a model id or alias, compared case-insensitively."""
        key = name.lower()
        for entry in self.models.values():
            if entry.id.lower() == key or key in (a.lower() for a in entry.aliases):
                return entry
        return None

    def find_instance(self, name: str) -> InstanceEntry | None:
        return self.instances.get(name)

    def merged(self, models: Iterable[ModelEntry], instances: Iterable[InstanceEntry]) -> Catalog:
        new_models = dict(self.models)
        new_models.update({m.id: m for m in models})
        new_instances = dict(self.instances)
        new_instances.update({i.name: i for i in instances})
        return Catalog(models=new_models, instances=new_instances)


def _parse(text: str, origin: str) -> tuple[list[ModelEntry], list[InstanceEntry]]:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{origin}: not valid YAML: {exc}") from exc
    if data is None:
        return [], []
    if not isinstance(data, dict) or not set(data) <= {"models", "instances"}:
        raise CatalogError(f"{origin}: a catalog file is a mapping with `models:` and/or `instances:`")
    try:
        models = ModelTable.model_validate({"models": data.get("models") or []}).models
        instances = InstanceTable.model_validate({"instances": data.get("instances") or []}).instances
    except ValidationError as exc:
        raise CatalogError(f"{origin}: {exc}") from exc
    return models, instances


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        # A mounted ConfigMap also holds `..data` links and dot-files; take only the keys.
        return sorted(
            p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
        )
    if path.is_file():
        return [path]
    raise CatalogError(f"{path}: no such catalog file or directory")


def load_catalog(overrides: Iterable[str | Path] = ()) -> Catalog:
    """The shipped tables with `overrides` (files or directories) applied in order."""
    catalog = _shipped_catalog()
    for item in overrides:
        for file in _files(Path(item)):
            models, instances = _parse(file.read_text(), str(file))
            catalog = catalog.merged(models, instances)
    return catalog


@lru_cache(maxsize=1)
def _shipped_catalog() -> Catalog:
    catalog = Catalog()
    data = resources.files("kubemoe.catalog") / "data"
    for name in ("models.yaml", "instances.yaml"):
        models, instances = _parse((data / name).read_text(), f"kubemoe/catalog/data/{name}")
        catalog = catalog.merged(models, instances)
    return catalog


def default_catalog() -> Catalog:
    """The catalog the operator uses: shipped tables plus `$KUBEMOE_CATALOG_PATH`."""
    env = os.environ.get(CATALOG_PATH_ENV, "")
    return load_catalog([p for p in env.split(os.pathsep) if p])
