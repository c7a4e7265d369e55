"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from kubemoe.catalog.loader import Catalog, load_catalog


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """The shipped catalogs, loaded once per test module."""
    return load_catalog()
