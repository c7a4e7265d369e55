"""Building :class:`Figure` rows with their verdicts computed, not typed in."""

from __future__ import annotations

import math
import operator as op
from collections.abc import Callable

from hack.bench.common import Context, Figure

#: What a subject has measured so far (``save_partial``): the runner reports it when the subject is stopped
#: or crashes before returning, so a run over its budget still shows its finished phases.
PARTIAL_FIGURES = "partial-figures"

Limit = tuple[str, float]  # ("<=", 1.15)

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": op.le,
    ">=": op.ge,
    "==": op.eq,
    "<": op.lt,
    ">": op.gt,
}


def check(value: float, limit: Limit | None) -> bool | None:
    if limit is None:
        return None
    if math.isnan(value):
        return False
    return _OPS[limit[0]](value, limit[1])


def describe(limit: Limit | None) -> str:
    return "" if limit is None else f"{limit[0]} {limit[1]:g}"


def figure(
    subject: str,
    name: str,
    value: float,
    unit: str = "",
    *,
    goal: Limit | None = None,
    bound: Limit | None = None,
) -> Figure:
    return Figure(
        subject=subject,
        figure=name,
        value=float(value),
        unit=unit,
        goal=describe(goal),
        passed=check(value, goal),
        bound=describe(bound),
        bound_passed=check(value, bound),
    )


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def save_partial(ctx: Context, figures: list[Figure]) -> None:
    ctx.save_json(PARTIAL_FIGURES, {"figures": [f.as_dict() for f in figures]})
