"""Model and instance tables (YAML data) and their loader."""

from kubemoe.catalog.loader import Catalog, CatalogError, default_catalog, load_catalog
from kubemoe.catalog.schema import InstanceEntry, ModelEntry, Recipe

__all__ = [
    "Catalog",
    "CatalogError",
    "InstanceEntry",
    "ModelEntry",
    "Recipe",
    "default_catalog",
    "load_catalog",
]
