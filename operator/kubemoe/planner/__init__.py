"""The placement planner: a pure function from a MoEModel spec and the catalogs to a Plan."""

from kubemoe.planner.errors import PlanningError
from kubemoe.planner.search import plan_placement
from kubemoe.planner.settings import PlannerSettings
from kubemoe.planner.types import Alternative, Plan, PlanReason

__all__ = ["Alternative", "Plan", "PlanReason", "PlannerSettings", "PlanningError", "plan_placement"]
