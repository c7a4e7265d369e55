"""Make the cluster match the rendered children: apply what changed, prune what is no longer desired.

An unchanged child is never written. Each applied child carries a hash of what we applied
(`kubemoe.io/applied-hash`); a child is re-applied when the desired hash differs (the spec changed, also by
removing a field) or when the live object no longer contains what we applied (someone edited or
deleted it: drift). So a resync of an unchanged, undrifted object makes no write at all.

Keys someone adds by hand are decided per field, by what they change:

- restored (the extra key removed): a Service's `spec.selector` -- one more key selects no pod, an outage;
  listed in `EXACT_MAPS`. Server-side apply alone keeps a key another manager owns, so the extra keys are
  removed with a merge patch before the apply;
- immutable: the `spec.selector` of a Deployment or LeaderWorkerSet (the API server refuses any edit);
- kept: labels and annotations, on the children and on pod templates (tools add their own; none changes
  what is served).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubemoe.controller import metrics
from kubemoe.controller.cache import json_copy
from kubemoe.controller.kube import Kind, KubeClient, KubeError, Reader, kind_of, remember

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


class ChildRejected(Exception):
    """The API server refused one child (a dry run or the apply itself); nothing after it was applied."""

    def __init__(self, child: str, error: KubeError) -> None:
        super().__init__(f"{child}: {error.message}")
        self.child = child
        self.error = error


#: kind -> paths of maps that must equal what we render (no extra keys).
EXACT_MAPS: dict[str, list[tuple[str, ...]]] = {"Service": [("spec", "selector")]}


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def extra_keys(live: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that removes the keys `live` has beyond `desired` in its kind's `EXACT_MAPS`
    ({} when there are none)."""
    patch: dict[str, Any] = {}
    for path in EXACT_MAPS.get(str(desired.get("kind")), []):
        have, want = _at(live, path), _at(desired, path)
        if not isinstance(have, dict) or not isinstance(want, dict):
            continue
        extra = {k: None for k in have if k not in want}
        if extra:
            node = patch
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = extra
    return patch


def _stamped(obj: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json_copy(dict(obj))
    out["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = desired_hash(obj)
    return out


def _keys(patch: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in patch.items():
        out += _keys(v) if isinstance(v, dict) else [k]
    return out


def _name(obj: Mapping[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


#: Children of one reconcile are written concurrently (and reconciles of different keys run side by side);
#: one pool for the process, so the API server sees a bounded number of our requests at once.
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kubemoe-apply")


def _each(kube: KubeClient, objects: list[dict[str, Any]], *, dry_run: bool) -> list[Any]:
    """Apply `objects` concurrently (every one is tried); per object, the live object or the KubeError."""

    def one(obj: dict[str, Any]) -> dict[str, Any] | KubeError:
        try:
            return kube.apply(obj, dry_run=dry_run)
        except KubeError as exc:
            return exc

    if len(objects) == 1:  # no thread hop for the common case of one changed child
        return [one(objects[0])]
    return list(_POOL.map(one, objects))


def _first_rejection(objects: list[dict[str, Any]], outcomes: list[Any]) -> None:
    """Raise ChildRejected for the first child (in render order) the API server refused."""
    for obj, outcome in zip(objects, outcomes, strict=True):
        if isinstance(outcome, KubeError):
            raise ChildRejected(_name(obj), outcome) from outcome


#: Applied after every other child of a new set, so nothing runs pods unless the rest was accepted.
WORKLOAD_KINDS = frozenset({"Deployment", "LeaderWorkerSet"})


def apply_children(
    kube: KubeClient, objects: Iterable[Mapping[str, Any]], reader: Reader | None = None
) -> SyncResult:
    """Apply every child that differs from the cluster, all or none, with as few requests as that allows:

    - one changed child: its apply alone is all or none;
    - a new set (every changed child is absent, as on a first rollout): the other children are applied
      first, the workload last; when the API server refuses one, the children this call created are
      deleted again and the workload is never applied. So a route the API server rejects leaves no
      Deployment behind, and no pod ever starts;
    - changes to existing children: each is first applied as a server-side dry run (schema, admission
      webhooks, quota, RBAC all answer), and only when every one passes are they applied for real.

    (A failure between two real applies -- the API server going away -- can still leave some applied;
    the next reconcile finishes the set.) Applies of one step go out concurrently; what the API server
    answers is remembered by a write-through reader (the cache)."""
    reader = reader or kube
    result = SyncResult()
    changed: list[dict[str, Any]] = []
    new = True
    for obj in objects:
        kind = kind_of(obj)
        meta = obj["metadata"]
        stamped = _stamped(obj)
        live = reader.get(kind, meta["namespace"], meta["name"])
        extra = extra_keys(live, stamped) if live is not None else {}
        if extra:
            remember(reader, kind.kind, kube.merge_patch(kind, meta["namespace"], meta["name"], extra))
            metrics.WRITES.labels(verb="patch", kind=kind.kind).inc()
            result.applied.append(f"{_name(stamped)} (removed hand-added {sorted(_keys(extra))})")
            new = False
            live = None  # re-read by the apply below
        if live is None or not contains(live, stamped):
            changed.append(stamped)
            new = new and live is None
        else:
            result.live[(kind.kind, meta["name"])] = live
    if len(changed) > 1 and new:
        first = [o for o in changed if o["kind"] not in WORKLOAD_KINDS]
        last = [o for o in changed if o["kind"] in WORKLOAD_KINDS]
        outcomes = _each(kube, first, dry_run=False)
        done = _record(reader, result, first, outcomes)
        try:
            _first_rejection(first, outcomes)
            outcomes = _each(kube, last, dry_run=False) if last else []
            done += _record(reader, result, last, outcomes)
            _first_rejection(last, outcomes)
        except ChildRejected:
            _roll_back(kube, done)
            raise
        return result
    if len(changed) > 1:
        _first_rejection(changed, _each(kube, changed, dry_run=True))
    outcomes = _each(kube, changed, dry_run=False) if changed else []
    _record(reader, result, changed, outcomes)
    _first_rejection(changed, outcomes)
    return result


def _record(
    reader: Reader, result: SyncResult, objects: list[dict[str, Any]], outcomes: list[Any]
) -> list[dict[str, Any]]:
    """Count, remember and report the applies that succeeded (even when a sibling was refused: they are
    on the API server now); returns their objects."""
    done = []
    for stamped, live in zip(objects, outcomes, strict=True):
        if isinstance(live, KubeError):
            continue
        metrics.WRITES.labels(verb="apply", kind=stamped["kind"]).inc()
        remember(reader, stamped["kind"], live)
        result.applied.append(_name(stamped))
        result.live[(stamped["kind"], stamped["metadata"]["name"])] = live
        done.append(stamped)
    return done


def _roll_back(kube: KubeClient, created: list[dict[str, Any]]) -> None:
    """Delete the children this reconcile created of a set the API server refused in part. Best effort:
    should a delete fail too, the retry of the reconcile (it failed) meets them and takes the dry-run path."""
    for obj in created:
        meta = obj["metadata"]
        try:
            kube.delete(kind_of(obj), meta["namespace"], meta["name"])
        except KubeError:
            continue
        metrics.WRITES.labels(verb="delete", kind=obj["kind"]).inc()


def prune_children(
    kube: KubeClient,
    *,
    namespace: str,
    owner_uid: str,
    selector: str,
    kinds: Iterable[Kind],
    keep: set[tuple[str, str]],
    reader: Reader | None = None,
) -> list[str]:
    """Delete our children of `kinds` that are no longer desired (routing removed, Deployment replaced by a
    LeaderWorkerSet, ...). Only objects this owner controls are touched."""
    pruned = []
    for kind in kinds:
        for obj in (reader or kube).list(kind, namespace, selector):
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
