"""A work queue of object keys, in the manner of controller-runtime's: every trigger enqueues a key, a key
waiting or being processed is held once, a key that changes while it is processed is run again after,
and a failed key comes back after an exponential backoff (never hot: 1 s doubling to 5 minutes)."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from kubemoe.controller import metrics

MAX_BACKOFF_SECONDS = 300.0


class Key(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def backoff_seconds(failures: int) -> float:
    return float(min(MAX_BACKOFF_SECONDS, 2 ** max(0, failures - 1)))


class WorkQueue:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._waiting: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    def add(self, key: Key, *, delay: float = 0.0, resync: bool = False) -> None:
        """Queue `key`. A resync leaves a key that is backing off alone: its retry is already scheduled, and
        retrying it every resync period would defeat the backoff. Real events still queue it at once."""
        if resync and key in self._timers:
            return
        if delay > 0:
            if key not in self._timers:
                loop = asyncio.get_running_loop()
                self._timers[key] = loop.call_later(delay, self._add_later, key)
            return
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)
        metrics.QUEUE_DEPTH.set(len(self._waiting))

    def _add_later(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> Key:
        key = await self._queue.get()
        self._waiting.discard(key)
        self._active.add(key)
        metrics.QUEUE_DEPTH.set(len(self._waiting))
        return key

    def done(self, key: Key, *, failed: bool) -> float | None:
        """Finish `key`; returns the retry delay when it failed."""
        self._active.discard(key)
        retry: float | None = None
        if failed:
            self._failures[key] = self._failures.get(key, 0) + 1
            retry = backoff_seconds(self._failures[key])
            self._dirty.discard(key)
            self.add(key, delay=retry)
        else:
            self._failures.pop(key, None)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
        return retry

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
