"""Load the model and instance tables, then layer run-time overrides on top.

The shipped tables live in `catalog/data/`. Overrides use the same format (a YAML mapping with `models:`
and/or `instances:`), come from files or directories (a mounted ConfigMap is a directory of files), and
replace a shipped entry with the same id/name whole, or add a new one. `KUBEMOE_CATALOG_PATH` (a
`os.pathsep`-separated list) and `--catalog` (CLI and operator) name them; `load_catalog` reads both, so
every entry point (`kubemoe plan/render/catalog`, `kubemoe run`) sees the same catalog.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubemoe.catalog.schema import (
    AcceleratorEntry,
    AcceleratorTable,
    InstanceEntry,
    InstanceTable,
    ModelEntry,
    ModelTable,
)

CATALOG_PATH_ENV = "KUBEMOE_CATALOG_PATH"


class CatalogError(ValueError):
    """A catalog file is missing, malformed or fails validation."""


@dataclass(frozen=True)
class Catalog:
    """The model and instance tables, keyed by id (case-insensitive) and instance name."""

    models: dict[str, ModelEntry] = field(default_factory=dict)
    instances: dict[str, InstanceEntry] = field(default_factory=dict)
    accelerators: dict[str, AcceleratorEntry] = field(default_factory=dict)

    def find_model(self, name: str) -> ModelEntry | None:
        """The entry for a model id or alias, compared case-insensitively."""
        key = name.lower()
        for entry in self.models.values():
            if entry.id.lower() == key or key in (a.lower() for a in entry.aliases):
                return entry
        return None

    def find_instance(self, name: str) -> InstanceEntry | None:
        return self.instances.get(name)

    def capability(self, instance: InstanceEntry) -> AcceleratorEntry | None:
        """The capability entry of an instance's accelerator, or None when the table has none."""
        return self.accelerators.get(instance.accelerator_model)

    def merged(
        self,
        models: Iterable[ModelEntry],
        instances: Iterable[InstanceEntry],
        accelerators: Iterable[AcceleratorEntry] = (),
    ) -> Catalog:
        new_models = dict(self.models)
        new_models.update({m.id: m for m in models})
        new_instances = dict(self.instances)
        new_instances.update({i.name: i for i in instances})
        new_accelerators = dict(self.accelerators)
        new_accelerators.update({a.model: a for a in accelerators})
        return Catalog(models=new_models, instances=new_instances, accelerators=new_accelerators)


Tables = tuple[list[ModelEntry], list[InstanceEntry], list[AcceleratorEntry]]


def _parse(text: str, origin: str) -> Tables:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{origin}: not valid YAML: {exc}") from exc
    if data is None:
        return [], [], []
    if not isinstance(data, dict) or not set(data) <= {"models", "instances", "accelerators"}:
        raise CatalogError(
            f"{origin}: a catalog file is a mapping with `models:`, `instances:` and/or `accelerators:`"
        )
    try:
        models = ModelTable.model_validate({"models": data.get("models") or []}).models
        instances = InstanceTable.model_validate({"instances": data.get("instances") or []}).instances
        accelerators = AcceleratorTable.model_validate(
            {"accelerators": data.get("accelerators") or []}
        ).accelerators
    except ValidationError as exc:
        raise CatalogError(f"{origin}: {exc}") from exc
    return models, instances, accelerators


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        # A mounted ConfigMap also holds `..data` links and dot-files; take only the keys.
        return sorted(
            p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
        )
    if path.is_file():
        return [path]
    raise CatalogError(f"{path}: no such catalog file or directory")


def catalog_paths(
    overrides: Iterable[str | Path] = (), environ: Mapping[str, str] | None = None
) -> list[str | Path]:
    """The override files in the order they apply: `$KUBEMOE_CATALOG_PATH`, then `overrides` (which win)."""
    env = (os.environ if environ is None else environ).get(CATALOG_PATH_ENV, "")
    return [p for p in env.split(os.pathsep) if p] + list(overrides)


def load_catalog(
    overrides: Iterable[str | Path] = (), *, environ: Mapping[str, str] | None = None
) -> Catalog:
    """The shipped tables with `$KUBEMOE_CATALOG_PATH` and then `overrides` (files or directories) applied.

    `environ` defaults to the process environment; pass `{}` for the shipped tables and `overrides` only.
    """
    catalog = _shipped_catalog()
    for item in catalog_paths(overrides, environ):
        for file in _files(Path(item)):
            catalog = catalog.merged(*_parse(file.read_text(), str(file)))
    return catalog


@lru_cache(maxsize=1)
def _shipped_catalog() -> Catalog:
    catalog = Catalog()
    data = resources.files("kubemoe.catalog") / "data"
    for name in ("models.yaml", "instances.yaml", "accelerators.yaml"):
        catalog = catalog.merged(*_parse((data / name).read_text(), f"kubemoe/catalog/data/{name}"))
    return catalog
