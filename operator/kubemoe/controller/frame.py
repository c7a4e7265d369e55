"""The frame every reconcile shares: read the object, let the body update a copy of its status, write the
status back only when it changed (so an unchanged resync writes nothing)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from kubemoe.controller import metrics
from kubemoe.controller.kube import Kind, KubeClient

#: body(obj, status, conditions, generation) -> outcome word; it edits `status` and `conditions` in place.
Body = Callable[[dict[str, Any], dict[str, Any], list[dict[str, Any]], int | None], str]


def reconcile_object(kube: KubeClient, kind: Kind, namespace: str, name: str, body: Body) -> str:
    obj = kube.get(kind, namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return "gone"  # owner references let the garbage collector remove the children
    status0 = obj.get("status") or {}
    status = copy.deepcopy(status0)
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    generation = obj["metadata"].get("generation")
    outcome = body(obj, status, conditions, generation)
    status["observedGeneration"] = generation
    if status != status0:
        kube.patch_status(kind, namespace, name, status)
        metrics.WRITES.labels(verb="status", kind=kind.kind).inc()
    return outcome
