"""Per-key token buckets (`auth.requestsPerSecond`, `auth.burst`): in the process, or shared by the workers.

With `--workers N` the kernel spreads connections, not requests, over the processes: a client on one
keep-alive connection always reaches the same worker. Split buckets (rate / N each) would hold such a client
to a N-th of its limit, while one on many connections got all of it. So the workers share one bucket per key
instead: `SharedBuckets` keeps them in a small file that every worker maps (the parent creates it, empty,
before the workers start), and a take is an exclusive `lockf` on it, a read and a write of one 32-byte slot,
and the unlock (microseconds; a worker that dies holding the lock loses it with its process). The clock is
CLOCK_MONOTONIC, the same in every process. The total a key gets is then exactly its configured rate and
burst, whatever the connections.

The table has `SLOTS` slots, found by the key name's digest with linear probing; key names are few (one per
file of the keys Secret). A key that finds the table full gets a bucket of its own in each worker, with the
N-th share of rate and burst (logged once).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("kubemoe.router")

#: (name digest, tokens, last refill time); an all-zero digest marks a free slot.
_SLOT = struct.Struct("<16sdd")
SLOTS = 4096
FILE_BYTES = SLOTS * _SLOT.size


def refill(tokens: float, at: float, now: float, *, rate: float, burst: float) -> float:
    """The bucket's tokens at `now` (a time before `at`, from another process's clock read, adds none)."""
    return min(burst, tokens + max(0.0, now - at) * rate)


class Buckets(Protocol):
    def take(self, name: str, now: float) -> float:
        """Take one token from `name`'s bucket: 0.0 if granted, else the seconds until one is there."""
        ...


@dataclass
class _Bucket:
    tokens: float
    at: float


class LocalBuckets:
    """Buckets in this process (one router process, or the overflow of `SharedBuckets`)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(self, name: str, now: float) -> float:
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(self.burst, now)
        bucket.tokens = refill(bucket.tokens, bucket.at, now, rate=self.rate, burst=self.burst)
        bucket.at = max(bucket.at, now)
        if bucket.tokens < 1:
            return (1 - bucket.tokens) / self.rate
        bucket.tokens -= 1
        return 0.0


def create_shared_file(path: str) -> None:
    """The empty table, before any worker maps it (a restarted pod starts from full buckets)."""
    with open(path, "wb") as f:
        f.truncate(FILE_BYTES)


class SharedBuckets:
    """Buckets in the file at `path` (`create_shared_file`), shared by every process that maps it;
    `workers`: how many share it (for the fallback's share when the table is full)."""

    def __init__(self, path: str, rate: float, burst: float, *, workers: int) -> None:
        self.rate = rate
        self.burst = burst
        self._fd = os.open(path, os.O_RDWR)
        if os.fstat(self._fd).st_size != FILE_BYTES:
            os.close(self._fd)
            raise ValueError(f"{path} is not a bucket table of {FILE_BYTES} bytes")
        self._map = mmap.mmap(self._fd, FILE_BYTES)
        self._slots: dict[str, int] = {}
        self._overflow = LocalBuckets(rate / workers, max(1.0, math.ceil(burst / workers)))

    def take(self, name: str, now: float) -> float:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            slot = self._slot(name)
            if slot < 0:
                return self._overflow.take(name, now)
            offset = slot * _SLOT.size
            digest, tokens, at = _SLOT.unpack_from(self._map, offset)
            if at == 0.0 and tokens == 0.0:  # claimed just now: a full bucket
                tokens, at = self.burst, now
            tokens = refill(tokens, at, now, rate=self.rate, burst=self.burst)
            wait = 0.0
            if tokens < 1:
                wait = (1 - tokens) / self.rate
            else:
                tokens -= 1
            _SLOT.pack_into(self._map, offset, digest, tokens, max(at, now))
            return wait
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _slot(self, name: str) -> int:
        """`name`'s slot, claimed if new (under the lock); -1 if the table is full."""
        found = self._slots.get(name)
        if found is not None:
            return found
        digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=16).digest()
        start = int.from_bytes(digest[:8], "little") % SLOTS
        for i in range(SLOTS):
            slot = (start + i) % SLOTS
            offset = slot * _SLOT.size
            held = bytes(self._map[offset : offset + 16])
            if held == digest:
                break
            if held == bytes(16):
                _SLOT.pack_into(self._map, offset, digest, 0.0, 0.0)
                break
        else:
            log.warning("rate-limit table full (%d keys): key %s is limited per worker", SLOTS, name)
            self._slots[name] = -1
            return -1
        self._slots[name] = slot
        return slot

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
