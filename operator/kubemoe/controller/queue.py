"""A work queue of object keys, in the manner of controller-runtime's: every trigger enqueues a key, a key
waiting or being processed is held once, a key that changes while it is processed is run again after,
and a failed key comes back after an exponential backoff (never hot: 1 s doubling to 5 minutes).

Two lanes: a key woken by its children or pods (a workload became available, a child was deleted) is
`urgent`. Keys woken by a spec change or a resync go first, since their reconciles start the cluster's
own work (the pods); but after `NORMAL_BURST` of them in a row a waiting urgent key gets its turn, so
"now Ready" or "restore the deleted Deployment" never waits behind a thousand first reconciles. A key
waiting in the normal lane moves to the urgent one when it becomes urgent.

A resync's keys wait in a third lane, taken only when the other two are empty: the safety net must not
hold up the first reconcile of a model created meanwhile. A resync key that gets a real trigger moves to
that trigger's lane.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import NamedTuple

from kubemoe.controller import metrics

MAX_BACKOFF_SECONDS = 300.0
#: The cap when the API server itself did not answer (unreachable, 429, 5xx): nothing about the object is
#: wrong, so once the API server is back every such key is retried within this, not minutes later.
TRANSIENT_MAX_BACKOFF_SECONDS = 30.0
NORMAL_BURST = 4


class Key(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def backoff_seconds(failures: int, *, transient: bool = False) -> float:
    cap = TRANSIENT_MAX_BACKOFF_SECONDS if transient else MAX_BACKOFF_SECONDS
    return float(min(cap, 2 ** max(0, failures - 1)))


class WorkQueue:
    def __init__(self) -> None:
        self._urgent: deque[Key] = deque()
        self._normal: deque[Key] = deque()
        self._idle: deque[Key] = deque()
        self._ready = asyncio.Event()
        self._burst = 0
        self._waiting: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        #: Keys whose pending re-run (dirty) is urgent.
        self._dirty_urgent: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    def add(
        self,
        key: Key,
        *,
        delay: float = 0.0,
        resync: bool = False,
        urgent: bool = False,
        keep_backoff: bool = False,
    ) -> None:
        """Queue `key`. A resync (or an add with `keep_backoff`: events of a child or pod) leaves a key
        that is backing off alone: its retry is already scheduled, and retrying it on every such trigger
        would defeat the backoff -- a failed reconcile's own children coming and going included. Changes of
        the object itself still queue it at once."""
        if (resync or keep_backoff) and key in self._timers:
            return
        if delay > 0:
            if key not in self._timers:
                loop = asyncio.get_running_loop()
                self._timers[key] = loop.call_later(delay, self._add_later, key)
            return
        if key in self._active:
            self._dirty.add(key)
            if urgent:
                self._dirty_urgent.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            (self._urgent if urgent else self._idle if resync else self._normal).append(key)
            self._ready.set()
        elif not resync and key in self._idle:  # a real trigger for a key the resync queued
            self._idle.remove(key)
            (self._urgent if urgent else self._normal).append(key)
        elif urgent and key in self._normal:  # move it up
            self._normal.remove(key)
            self._urgent.append(key)
        metrics.QUEUE_DEPTH.set(len(self._waiting))

    def _add_later(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _pop(self) -> Key:
        if not self._normal and not self._urgent:
            return self._idle.popleft()
        if self._normal and (not self._urgent or self._burst < NORMAL_BURST):
            self._burst += 1
            return self._normal.popleft()
        self._burst = 0
        return self._urgent.popleft()

    async def get(self) -> Key:
        while not self._urgent and not self._normal and not self._idle:
            self._ready.clear()
            await self._ready.wait()
        key = self._pop()
        self._waiting.discard(key)
        self._active.add(key)
        metrics.QUEUE_DEPTH.set(len(self._waiting))
        return key

    def __len__(self) -> int:
        return len(self._waiting)

    def backing_off(self, key: Key) -> bool:
        """Whether a retry of `key` is scheduled (it failed and waits out its backoff)."""
        return key in self._timers

    def failures(self, key: Key) -> int:
        """How many tries of `key` failed in a row (0 after a success)."""
        return self._failures.get(key, 0)

    def done(self, key: Key, *, failed: bool, transient: bool = False) -> float | None:
        """Finish `key`; returns the retry delay when it failed (`transient`: the API server's fault)."""
        self._active.discard(key)
        urgent = key in self._dirty_urgent
        self._dirty_urgent.discard(key)
        retry: float | None = None
        if failed:
            self._failures[key] = self._failures.get(key, 0) + 1
            retry = backoff_seconds(self._failures[key], transient=transient)
            self._dirty.discard(key)
            self.add(key, delay=retry)
        else:
            self._failures.pop(key, None)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key, urgent=urgent)
        return retry

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
