"""A watch-fed cache of the objects the reconcile reads (the owners, their children and pods), so that an
idle resync costs the API server no read per object at all, only a fixed number of LISTs per pass.

It is fed the way an informer is: kopf's watch streams deliver every change (`upsert`/`remove`), and a full
LIST per kind (`relist`: the owners on every resync pass of the leader, every kind on some) replaces a
kind's contents, which also drops an entry whose deletion a reconnecting watch missed. Events that arrive
while a LIST is in flight are replayed over it when they are newer (by resourceVersion), so a LIST never
rolls an object back.

Until a kind has been listed once, reads of it go to the API server (`fallback`).

What the reconcile itself writes (an applied child, a status) is `remember`ed from the API server's answer,
so the next reconcile sees it before its watch event arrives; that event then carries a resourceVersion the
cache already holds, and `upsert` answers False: an echo of our own write, which wakes nobody.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from kubemoe.controller.kube import Kind, NotFound, Reader
from kubemoe.render.meta import MANAGED_BY

Key = tuple[str, str]  # (namespace, name)
T = TypeVar("T")
_ATOMS = frozenset({str, int, float, bool, type(None)})


def json_copy(obj: Any) -> Any:
    """A deep copy of a JSON document (dicts, lists and scalars, as a watch or an answer parses): about a
    third of what `copy.deepcopy` costs, which spends most of its time on a memo that JSON never needs.
    Anything else inside is handed to `copy.deepcopy`."""
    t = type(obj)
    if t is dict:
        return {k: v if type(v) in _ATOMS else json_copy(v) for k, v in obj.items()}
    if t is list:
        return [v if type(v) in _ATOMS else json_copy(v) for v in obj]
    if t in _ATOMS:
        return obj
    return copy.deepcopy(obj)


#: Every child and pod of ours carries its owner's name in this label, and every reconcile lists its own by
#: it: an index on it keeps those lists from scanning every cached object (N models, N reads of N each).
INDEX_LABEL = "app.kubernetes.io/instance"


def _index_key(key: Key, obj: dict[str, Any]) -> tuple[str, str] | None:
    value = (obj["metadata"].get("labels") or {}).get(INDEX_LABEL)
    return (key[0], str(value)) if value is not None else None


def _rv(obj: dict[str, Any]) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def parse_selector(selector: str) -> dict[str, str] | None:
    """`a=b,c=d` as a dict; None for anything else (set-based selectors go to the API server)."""
    out: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, sep, value = term.partition("=")
        if not sep or value.startswith("=") or key.endswith("!") or not key:
            return None
        out[key.strip()] = value.strip()
    return out


class WatchCache:
    """A `Reader`. Thread-safe: kopf's handlers write on the event loop, reconciles read in worker threads."""

    def __init__(self, fallback: Reader, kinds: Iterable[Kind], *, label_selectors: dict[str, str]) -> None:
        self.fallback = fallback
        self.kinds = {k.kind: k for k in kinds}
        #: kind -> the selector its watch and its LIST use (children: managed-by; MoEModels: none).
        self.label_selectors = label_selectors
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {}
        #: kind -> (namespace, INDEX_LABEL value) -> keys of the objects that carry it.
        self._index: dict[str, dict[tuple[str, str], set[Key]]] = {}
        self._listing: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._relisting = threading.Lock()  # one relist at a time (the resync and a new leader may both ask)

    # ------------------------------------------------------------------ feeding
    def upsert(self, kind: str, obj: dict[str, Any], *, owned: bool = False) -> bool:
        """A watch event's object; True when it is news (a resourceVersion the cache did not hold yet, or
        a kind not listed yet), False for what the cache already held (an echo of our own write).
        `owned`: the caller hands `obj` over and never touches it again (no copy is made)."""
        return self._event(kind, "upsert", obj, owned=owned)

    def remove(self, kind: str, obj: dict[str, Any]) -> bool:
        """A deletion; True unless the cache already knew the object was gone."""
        return self._event(kind, "remove", obj)

    def remember(self, kind: str, obj: dict[str, Any] | None) -> None:
        """What the API server answered to one of our writes (write-through)."""
        if obj and obj.get("metadata", {}).get("name"):
            self._event(kind, "upsert", obj)

    def held(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """What the cache holds (never a read of the API server); None also when `kind` is not listed."""
        with self._lock:
            obj = (self._objects.get(kind) or {}).get((namespace, name))
            return json_copy(obj) if obj is not None else None

    def peek(self, kind: str, namespace: str, name: str, fn: Callable[[dict[str, Any] | None], T]) -> T:
        """`fn` of what the cache holds (None when absent), under the lock and without a copy: for a look
        that only reads (a watch handler comparing old with new). `fn` must not keep or change it."""
        with self._lock:
            return fn((self._objects.get(kind) or {}).get((namespace, name)))

    def listed(self, kind: str) -> bool:
        with self._lock:
            return kind in self._objects

    def _event(self, kind: str, op: str, obj: dict[str, Any], *, owned: bool = False) -> bool:
        if kind not in self.kinds:
            return True
        obj = obj if owned else json_copy(obj)
        obj.setdefault("kind", kind)
        obj.setdefault("apiVersion", self.kinds[kind].api_version)
        with self._lock:
            if kind in self._listing:
                self._listing[kind].append((op, obj))
            return self._apply(kind, op, obj)

    def _apply(self, kind: str, op: str, obj: dict[str, Any]) -> bool:
        objects = self._objects.get(kind)
        if objects is None:
            return True  # not listed yet: reads go to the API server anyway
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        held = objects.get(key)
        if op == "remove":
            if held is None:
                return False
            if _rv(held) <= _rv(obj) or not _rv(obj):
                self._put(kind, key, held, None)
                return True
            return False
        if held is None or _rv(obj) > _rv(held):
            self._put(kind, key, held, obj)
            return True
        if _rv(obj) == _rv(held):
            self._put(kind, key, held, obj)
        return False

    def _put(self, kind: str, key: Key, held: dict[str, Any] | None, obj: dict[str, Any] | None) -> None:
        """Replace `held` (None: absent) by `obj` (None: remove) under `key`, keeping the index."""
        index = self._index.setdefault(kind, {})
        old = _index_key(key, held) if held is not None else None
        new = _index_key(key, obj) if obj is not None else None
        if old != new and old is not None:
            keys = index.get(old)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[old]
        if new is not None:
            index.setdefault(new, set()).add(key)
        if obj is None:
            self._objects[kind].pop(key, None)
        else:
            self._objects[kind][key] = obj

    def _reindex(self, kind: str) -> None:
        index: dict[tuple[str, str], set[Key]] = {}
        for key, obj in self._objects[kind].items():
            ik = _index_key(key, obj)
            if ik is not None:
                index.setdefault(ik, set()).add(key)
        self._index[kind] = index

    def relist(self, kube: Reader, namespaces: list[str | None], kinds: Iterable[str] | None = None) -> int:
        """LIST every cached kind, or those of `kinds` (per namespace, or cluster-wide for [None]);
        returns the reads made."""
        with self._relisting:
            return self._relist(kube, namespaces, None if kinds is None else set(kinds))

    def _relist(self, kube: Reader, namespaces: list[str | None], only: set[str] | None) -> int:
        reads = 0
        for name, kind in self.kinds.items():
            if only is not None and name not in only:
                continue
            with self._lock:
                self._listing[name] = []
            items: list[dict[str, Any]] = []
            try:
                for ns in namespaces:
                    reads += 1
                    items += kube.list(kind, ns, self.label_selectors.get(name, ""))
            except NotFound:  # the API (a CRD) is not installed: nothing of it exists
                items = []
            except BaseException:
                with self._lock:
                    self._listing.pop(name, None)
                raise
            with self._lock:
                fresh = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in items}
                self._objects[name] = fresh
                self._reindex(name)
                for op, obj in self._listing.pop(name):
                    self._apply(name, op, obj)
        return reads

    # ------------------------------------------------------------------ reading
    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self._lock:
            objects = self._objects.get(kind.kind)
            if objects is not None:
                obj = objects.get((namespace or "", name))
                return json_copy(obj) if obj is not None else None
        return self.fallback.get(kind, namespace, name)

    def list(self, kind: Kind, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        wanted = parse_selector(label_selector)
        base = parse_selector(self.label_selectors.get(kind.kind, "")) or {}
        with self._lock:
            objects = self._objects.get(kind.kind)
            # Served here only when the cache holds a superset of the answer (its own selector is implied).
            if (
                objects is not None
                and wanted is not None
                and all(wanted.get(k) == v for k, v in base.items())
            ):
                candidates: Iterable[tuple[Key, dict[str, Any]]] = objects.items()
                if namespace is not None and INDEX_LABEL in wanted:
                    keys = self._index.get(kind.kind, {}).get((namespace, wanted[INDEX_LABEL]), set())
                    candidates = [(k, objects[k]) for k in sorted(keys) if k in objects]
                return [
                    json_copy(o)
                    for (ns, _), o in candidates
                    if (namespace is None or ns == namespace)
                    and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
                ]
        return self.fallback.list(kind, namespace, label_selector)


CHILD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
