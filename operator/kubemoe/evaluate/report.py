"""Per-configuration figures (accuracy, latency p50/p95, tokens, cost), the table, the plot, the progress bar."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from kubemoe.evaluate.dataset import EvalError
from kubemoe.evaluate.runner import TaskResult


@dataclass(frozen=True)
class Summary:
    configuration: str
    tasks: int
    correct: int
    accuracy: float
    errors: int
    latency_p50_seconds: float
    latency_p95_seconds: float
    prompt_tokens: int
    completion_tokens: int
    tokens: int
    cost: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was observed, no interpolation."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(results: Sequence[TaskResult], order: Sequence[str]) -> list[Summary]:
    out = []
    for label in order:
        rs = [r for r in results if r.configuration == label]
        if not rs:
            continue
        latencies = [r.latency_seconds for r in rs]
        prompt = sum(r.prompt_tokens for r in rs)
        completion = sum(r.completion_tokens for r in rs)
        correct = sum(r.correct for r in rs)
        out.append(
            Summary(
                configuration=label,
                tasks=len(rs),
                correct=correct,
                accuracy=correct / len(rs),
                errors=sum(r.detail.startswith(("error:", "judge failed:")) for r in rs),
                latency_p50_seconds=percentile(latencies, 50),
                latency_p95_seconds=percentile(latencies, 95),
                prompt_tokens=prompt,
                completion_tokens=completion,
                tokens=prompt + completion,
                cost=sum(r.cost for r in rs),
            )
        )
    return out


def table(summaries: Sequence[Summary]) -> str:
    width = max([len("configuration"), *(len(s.configuration) for s in summaries)])
    head = f"{'configuration':<{width}}  {'accuracy':>8}  {'correct':>9}  {'p50 s':>7}  {'p95 s':>7}  {'tokens':>8}  {'cost':>9}  errors"
    rows = [
        f"{s.configuration:<{width}}  {s.accuracy:>8.1%}  {f'{s.correct}/{s.tasks}':>9}  {s.latency_p50_seconds:>7.3f}  "
        f"{s.latency_p95_seconds:>7.3f}  {s.tokens:>8}  {s.cost:>9.4f}  {s.errors}"
        for s in summaries
    ]
    return "\n".join([head, "-" * len(head), *rows])


def plot(summaries: Sequence[Summary], path: str | Path, *, title: str) -> Path:
    """Accuracy against p50 latency, one labelled point per configuration (PNG)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise EvalError("--plot needs matplotlib (pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in summaries:
        marker = "s" if s.configuration.startswith("model:") else "o"
        ax.scatter([s.latency_p50_seconds], [s.accuracy], marker=marker)
        ax.annotate(
            s.configuration,
            (s.latency_p50_seconds, s.accuracy),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("latency p50 (s)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


class ProgressBar:
    """`[#####.....] 12/40 label` on a terminal (redrawn in place); a line per tenth otherwise (CI logs)."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self._last_tenth = -1

    def __call__(self, done: int, total: int, label: str) -> None:
        filled = self.width * done // max(1, total)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {label}"
        if self.stream.isatty():
            self.stream.write("\r" + line[:120].ljust(120) + ("\n" if done == total else ""))
        else:
            tenth = 10 * done // max(1, total)
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
            self.stream.write(line + "\n")
        self.stream.flush()
