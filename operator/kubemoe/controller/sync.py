"""Make the cluster match the rendered children: apply what changed, prune what is no longer desired.

An unchanged child is never written. Each applied child carries a hash of what we applied
(`kubemoe.io/applied-hash`); a child is re-applied when the desired hash differs (the spec changed, also by
removing a field) or when the live object no longer contains what we applied (someone edited or
deleted it: drift). So a resync of an unchanged, undrifted object makes no write at all.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubemoe.controller import metrics
from kubemoe.controller.kube import Kind, KubeClient, kind_of

HASH_ANNOTATION = "kubemoe.io/applied-hash"


def desired_hash(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` holds everything in `desired` (extra fields, e.g. server defaults, are fine).
    Lists must match item by item, so removing an item counts as a difference."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(contains, live, desired))
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    if isinstance(desired, (int, float)) and isinstance(live, (int, float)):
        return float(live) == float(desired)
    return bool(live == desired)


@dataclass
class SyncResult:
    applied: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    live: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


def _stamped(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(obj))
    out["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = desired_hash(obj)
    return out


def apply_children(kube: KubeClient, objects: Iterable[Mapping[str, Any]]) -> SyncResult:
    result = SyncResult()
    for obj in objects:
        kind = kind_of(obj)
        meta = obj["metadata"]
        stamped = _stamped(obj)
        live = kube.get(kind, meta["namespace"], meta["name"])
        if live is None or not contains(live, stamped):
            live = kube.apply(stamped)
            metrics.WRITES.labels(verb="apply", kind=kind.kind).inc()
            result.applied.append(f"{kind.kind}/{meta['name']}")
        result.live[(kind.kind, meta["name"])] = live
    return result


def prune_children(
    kube: KubeClient,
    *,
    namespace: str,
    owner_uid: str,
    selector: str,
    kinds: Iterable[Kind],
    keep: set[tuple[str, str]],
) -> list[str]:
    """Delete our children of `kinds` that are no longer desired (routing removed, Deployment replaced by a
    LeaderWorkerSet, ...). Only objects this owner controls are touched."""
    pruned = []
    for kind in kinds:
        for obj in kube.list(kind, namespace, selector):
            meta = obj["metadata"]
            owned = any(
                ref.get("uid") == owner_uid and ref.get("controller")
                for ref in meta.get("ownerReferences", [])
            )
            if owned and (kind.kind, meta["name"]) not in keep:
                kube.delete(kind, namespace, meta["name"])
                metrics.WRITES.labels(verb="delete", kind=kind.kind).inc()
                pruned.append(f"{kind.kind}/{meta['name']}")
    return pruned
