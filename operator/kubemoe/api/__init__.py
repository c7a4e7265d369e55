"""The kubemoe API: custom-resource spec and status models (pydantic v2), the single source of truth.

The same models validate a CR in `kubemoe render`, generate the CRD schema in `crds/` (`api.crd`) and
give `kubectl explain` its text (every field's description).
"""

from kubemoe.api.common import GROUP, VERSION, Condition, ConditionStatus
from kubemoe.api.moapipeline import MoAPipeline, MoAPipelineSpec, MoAPipelineStatus
from kubemoe.api.moemodel import MoEModel, MoEModelSpec, MoEModelStatus

__all__ = [
    "GROUP",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "MoAPipeline",
    "MoAPipelineSpec",
    "MoAPipelineStatus",
    "MoEModel",
    "MoEModelSpec",
    "MoEModelStatus",
]
