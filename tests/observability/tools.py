"""Where the real tools are: hack/tools-observability installs them outside the repo and prints their paths.

A missing tool fails the test that needs it, naming the tool and the command that installs it; nothing is
skipped silently (`make test` and `.ci/run` install them first).
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "tools-observability"


@cache
def _paths() -> dict[str, Path]:
    out = subprocess.run([str(SCRIPT), "paths"], check=True, capture_output=True, text=True).stdout
    return {k: Path(v) for k, v in (line.split("=", 1) for line in out.splitlines() if "=" in line)}


def tool(name: str) -> Path:
    """Path of PROMETHEUS, PROMTOOL or ARGOCD_HEALTH; fails the test when it is not installed."""
    path = _paths()[name]
    if not path.is_file():
        pytest.fail(f"{name.lower()} is not installed at {path}: run `hack/tools-observability install`")
    return path
