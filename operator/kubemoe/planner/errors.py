"""Planning failures. Each carries a stable reason (the `Planned` condition's) and a message saying what to do.

PlanningError
  (reason: UnknownModel | UnknownInstanceType | NoMatchingInstance | InsufficientMemory |
           InvalidParallelism | InvalidServing)
"""

from __future__ import annotations

from kubemoe.planner.types import Alternative, PlanReason


class PlanningError(Exception):
    """No plan: the spec cannot be placed as written."""

    def __init__(
        self, reason: PlanReason, message: str, alternatives: list[Alternative] | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.alternatives = alternatives or []
