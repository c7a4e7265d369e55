"""The aggregator stream's two clocks (an absolute deadline and an idle timeout) on one timer.

`asyncio.timeout` per chunk costs a timer handle and a reschedule for every token; here a chunk only stores a
float. The timer fires at most once per idle period: if the stream moved meanwhile, it re-arms; if not, or
once the deadline has passed, it cancels the task that waits on the upstream, and `expired` says why. It
never cancels while the caller is busy elsewhere (writing to the client): only time spent waiting counts as
idle, and a deadline that passes meanwhile is reported when the next wait starts.
"""

from __future__ import annotations

import asyncio
from typing import Literal

Expiry = Literal["deadline", "idle"]


class StreamWatchdog:
    """Use as `start_wait()` before awaiting the next chunk and `stop_wait()` after; `close()` at the end."""

    def __init__(self, *, deadline_seconds: float, idle_seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.give_up = self._loop.time() + deadline_seconds
        self._idle = idle_seconds
        self._since = self._loop.time()
        self._waiting = False
        self._handle: asyncio.TimerHandle | None = None
        self.expired: Expiry | None = None

    def start_wait(self) -> None:
        """Start a wait for the upstream; raises TimeoutError at once if the deadline has already passed."""
        now = self._loop.time()
        if now >= self.give_up:
            self.expired = "deadline"
            raise TimeoutError
        self._since = now
        self._waiting = True
        if self._handle is None:
            self._handle = self._loop.call_at(min(self.give_up, now + self._idle), self._check)

    def stop_wait(self) -> None:
        self._waiting = False

    def cancelled_by_me(self) -> bool:
        """Whether a CancelledError seen while waiting came from this watchdog (and only from it)."""
        return self.expired is not None and self._task.uncancel() == 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if not self._waiting:
            return  # re-armed by the next start_wait
        now = self._loop.time()
        if now >= self.give_up:
            self.expired = "deadline"
        elif now >= self._since + self._idle:
            self.expired = "idle"
        else:
            self._handle = self._loop.call_at(min(self.give_up, self._since + self._idle), self._check)
            return
        self._task.cancel()
