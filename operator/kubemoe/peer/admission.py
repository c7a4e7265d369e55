"""Admission control from the decentralised stability condition rho = alpha((k+1)M+1)lambda < 1.

Pure (the clock is passed in), so the arithmetic is tested without sockets or sleeps.

lambda is the rate of user queries this peer *accepted* over a sliding window. Counting shed queries too
would keep rho above the limit for as long as the offered load stays high, and the peer would shed
everything; counting accepted ones lets it settle at the admitted rate the limit allows.

alpha is measured as busy time / completed calls of this peer's own model over the same window, where
"busy" means at least one call outstanding. For a server that takes one call at a time (the design's
queue, and the benchmark's stand-ins) that is exactly the mean service time, queueing excluded. For a
batching server (vLLM) it is the time per call at the current load, which overestimates alpha when the
server is lightly used, so the peer errs towards shedding early rather than late.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from kubemoe.api.moapipeline import PeerAdmission
from kubemoe.router.capacity import DecentralisedCapacity, compute_decentralised_capacity

#: Completions in the window before the measured alpha replaces the configured one.
MIN_SAMPLES = 3


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        self._times: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()

    def add(self, now: float) -> None:
        self._times.append(now)

    def count(self, now: float) -> int:
        self._trim(now)
        return len(self._times)

    def rate(self, now: float) -> float:
        return self.count(now) / self.window


class ServiceTimeMeter:
    """Mean service time of a model: busy seconds / completed calls over a sliding window."""

    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        self.in_flight = 0
        self._busy_since: float | None = None
        self._busy: deque[tuple[float, float]] = deque()
        self._done = RateMeter(window_seconds)
        self.last: float | None = None

    def started(self, now: float) -> None:
        if self.in_flight == 0:
            self._busy_since = now
        self.in_flight += 1

    def finished(self, now: float) -> None:
        self.in_flight -= 1
        self._done.add(now)
        if self.in_flight == 0 and self._busy_since is not None:
            self._busy.append((self._busy_since, now))
            self._busy_since = None

    def busy_seconds(self, now: float) -> float:
        start = now - self.window
        while self._busy and self._busy[0][1] <= start:
            self._busy.popleft()
        total = sum(min(e, now) - max(s, start) for s, e in self._busy)
        if self._busy_since is not None:
            total += now - max(self._busy_since, start)
        return total

    def alpha(self, now: float) -> float | None:
        """The measured alpha; while too few calls completed in the window, the last measured one."""
        done = self._done.count(now)
        if done >= MIN_SAMPLES:
            self.last = self.busy_seconds(now) / done
        return self.last

    def busy_fraction(self, now: float) -> float:
        return min(1.0, self.busy_seconds(now) / self.window)


@dataclass(frozen=True)
class Decision:
    """Admit with `neighbours` (possibly fewer than configured), or shed with Retry-After."""

    admit: bool
    neighbours: int
    rho: float
    retry_after_seconds: int | None = None


class Admission:
    """Decides, per user query, whether it enters and with which k."""

    def __init__(self, settings: PeerAdmission, *, neighbours: int, layers: int) -> None:
        self.settings = settings
        self.neighbours = neighbours
        self.layers = layers
        self.accepted = RateMeter(settings.window_seconds)
        self.offered = RateMeter(settings.window_seconds)
        self.service = ServiceTimeMeter(settings.window_seconds)

    def alpha(self, now: float) -> float | None:
        measured = self.service.alpha(now)
        return measured if measured is not None else self.settings.service_time_seconds

    def capacity(self, now: float, neighbours: int | None = None) -> DecentralisedCapacity | None:
        alpha = self.alpha(now)
        if alpha is None or alpha <= 0:
            return None
        k = self.neighbours if neighbours is None else neighbours
        return compute_decentralised_capacity(neighbours=k, layers=self.layers, service_time_seconds=alpha)

    def rho(self, now: float, neighbours: int | None = None, *, extra: int = 0) -> float:
        """alpha((k+1)M+1)lambda, lambda the accepted rate (plus `extra` arrivals); 0 until alpha is known."""
        cap = self.capacity(now, neighbours)
        if cap is None:
            return 0.0
        lam = (self.accepted.count(now) + extra) / self.accepted.window
        return lam / cap.max_stable_requests_per_second

    def decide(self, now: float) -> Decision:
        """Admit while rho, this query included, stays below maxUtilization; else lower k or shed."""
        self.offered.add(now)
        if self.settings.policy == "none":
            self.accepted.add(now)
            return Decision(True, self.neighbours, self.rho(now))
        limit = self.settings.max_utilization
        candidates = [self.neighbours]
        if self.settings.policy == "reduceNeighbours":
            candidates = list(range(self.neighbours, -1, -1))
        lam_next = (self.accepted.count(now) + 1) / self.accepted.window
        for k in candidates:
            cap = self.capacity(now, k)
            # rho < limit  <=>  alpha*calls*(lambda/limit) < 1, the capacity module's stability test.
            if cap is None or cap.is_stable(lam_next / limit):
                self.accepted.add(now)
                return Decision(True, k, self.rho(now, k))
        return Decision(
            False,
            self.neighbours,
            self.rho(now, extra=1),
            retry_after_seconds=self.settings.retry_after_seconds,
        )
