"""Status conditions (`api.common.Condition`, the metav1.Condition shape), set by one function so naming,
observedGeneration, transition times and message length stay consistent. Types and reasons are the enums
of `api.conditions`: a misspelt one does not type-check."""

from __future__ import annotations

from datetime import UTC, datetime

from kubemoe.api.common import Condition
from kubemoe.api.conditions import ConditionType, Reason
from kubemoe.planner import PlanReason

MAX_MESSAGE = 1024

AnyReason = Reason | PlanReason


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    status: bool | None,
    *,
    reason: AnyReason,
    message: str,
    generation: int | None,
) -> None:
    """Set `type_` in place. lastTransitionTime changes only when the status flips, so an unchanged
    observation leaves the condition identical (and the status write is skipped)."""
    value = "Unknown" if status is None else ("True" if status else "False")
    message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
    for i, cond in enumerate(conditions):
        if cond.type == type_:
            flipped = cond.status != value or cond.last_transition_time is None
            conditions[i] = Condition(
                type=type_.value,
                status=value,
                reason=reason.value,
                message=message,
                last_transition_time=_now() if flipped else cond.last_transition_time,
                observed_generation=generation,
            )
            return
    conditions.append(
        Condition(
            type=type_.value,
            status=value,
            reason=reason.value,
            message=message,
            last_transition_time=_now(),
            observed_generation=generation,
        )
    )


def condition(conditions: list[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: ConditionType) -> bool:
    cond = condition(conditions, type_)
    return cond is not None and cond.status == "True"
