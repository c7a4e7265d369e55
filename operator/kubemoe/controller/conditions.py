"""Status conditions in the metav1.Condition shape, set by one function so naming, observedGeneration,
transition times and message length stay consistent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

MAX_MESSAGE = 1024

# Condition types.
PLANNED = "Planned"
PROGRESSING = "Progressing"
AVAILABLE = "Available"
READY = "Ready"
DEGRADED = "Degraded"
CAPACITY_OK = "CapacityOK"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | None,
    *,
    reason: str,
    message: str,
    generation: int | None,
) -> None:
    """Set `type_` in place. lastTransitionTime changes only when the status flips, so an unchanged
    observation leaves the condition byte-identical (and the status write is skipped)."""
    value = "Unknown" if status is None else ("True" if status else "False")
    message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
    for cond in conditions:
        if cond.get("type") == type_:
            if cond.get("status") != value:
                cond["lastTransitionTime"] = _now()
            cond.update(status=value, reason=reason, message=message, observedGeneration=generation)
            return
    conditions.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": _now(),
            "observedGeneration": generation,
        }
    )


def condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    cond = condition(conditions, type_)
    return cond is not None and cond.get("status") == "True"
