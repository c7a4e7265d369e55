"""PNG line plots for the benchmarks (matplotlib, headless). Not a subject: it defines no ``run``.

matplotlib comes with the ``bench`` extra (``pip install -e '.[bench]'``, done by ``make bench``); without
it a plot is an error that names what is missing, never a silently absent picture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hack.bench.common import Context

Series = tuple[Sequence[float], Sequence[float]]


def line_plot(
    ctx: Context,
    name: str,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    series: Mapping[str, Series],
    logx: bool = False,
) -> Path:
    """Draw ``series`` (label -> (xs, ys)) into ``<results>/<name>.png`` and register it with ``ctx``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(
            "matplotlib is missing: install the bench extra (`.venv/bin/pip install -e '.[bench]'`, "
            "or run `make bench`)"
        ) from exc
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.results_dir / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    ctx.add_plot(path)
    return path
