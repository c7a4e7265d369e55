"""The contract every benchmark module in ``hack/bench/`` follows (the runner is ``hack/bench/run.py``).

A subject lives in its own module ``hack/bench/<subject>.py`` and exposes::

    def run(ctx: Context) -> list[Figure]: ...

It measures side by side in the same run (kubemoe against its floor or peer), so every verdict is a
ratio or a count, never a bare absolute time. ``ctx.quick`` asks for the CI smoke size (the whole
quick suite must finish within 3 minutes on 2 cores; the full one within 20). Raw results go to
``ctx.results_dir`` as JSON (``ctx.save_json``), plots (PNG) are registered with ``ctx.add_plot``.
Loopback and the dev cluster's own addresses only; every request loop is bounded in count and time.

Run from the repository root: ``python -m hack.bench.run [--quick] [subject ...]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One line of the summary table.

    ``goal`` is human-readable (``"<= 1.15"``); ``passed`` is None for figures reported without a goal.
    ``bound`` is the generous limit CI's quick run fails on (None: never fails CI), so a noisy shared
    machine does not turn the smoke run red while a real regression still does.
    """

    subject: str
    figure: str
    value: float
    unit: str = ""
    goal: str = ""
    passed: bool | None = None
    bound: str = ""
    bound_passed: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    quick: bool
    results_dir: Path
    plots: list[Path] = field(default_factory=list)

    def save_json(self, name: str, data: Any) -> Path:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{name}.json"
        path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
        return path

    def add_plot(self, path: Path) -> None:
        self.plots.append(path)
