"""Model and instance tables (YAML data) and their loader."""

from kubemoe.catalog.loader import Catalog, CatalogError, catalog_paths, load_catalog
from kubemoe.catalog.schema import InstanceEntry, ModelEntry, Recipe

__all__ = [
    "Catalog",
    "CatalogError",
    "InstanceEntry",
    "ModelEntry",
    "Recipe",
    "catalog_paths",
    "load_catalog",
]
