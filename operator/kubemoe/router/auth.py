"""Client API keys: who may call the router, and how often.

Keys live in a directory, one file per key: the file name is the key's NAME, the content the key itself
(a mounted Secret: the kubelet swaps its files in place when the Secret changes). The directory is checked at
most every `reloadSeconds`; a changed file set, mtime, inode or size reloads it, so a rotated key works (and
the old one stops) without a restart. Only SHA-256 digests of keys are kept, and lookups go by digest, so
neither a log line nor a timing difference carries a key; logs and metrics name keys by their NAME only.

Per-key rate limits are token buckets (`requestsPerSecond`, `burst`): in the process, or shared by all the
workers of a pod (`router.buckets`), so a key gets its configured rate however its connections spread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable

from kubemoe.router.buckets import Buckets, LocalBuckets
from kubemoe.router.config import ClientAuthConfig
from kubemoe.router.errors import AuthenticationError, OverloadedError, PermissionDeniedError

log = logging.getLogger("kubemoe.router")

#: Files a mounted Secret holds besides its keys (`..data`, `..2026_...`); they start with a dot.
_HIDDEN = "."


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ClientKeys:
    """Authenticates `Authorization` headers against the key directory of a `ClientAuthConfig`."""

    def __init__(
        self,
        config: ClientAuthConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        buckets: Buckets | None = None,
    ) -> None:
        """`buckets`: where the per-key rate limits live (default: in this process)."""
        self._config = config
        self._clock = clock
        self._by_digest: dict[bytes, str] = {}
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None
        self._checked_at = float("-inf")
        self._revoked = frozenset(config.revoked_keys)
        rate = config.requests_per_second
        self._buckets: Buckets | None = None
        if rate is not None:
            self._buckets = buckets or LocalBuckets(rate, bucket_size(config))

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def names(self) -> list[str]:
        """The names of the keys loaded now (for readiness and logs)."""
        self.refresh()
        return sorted(set(self._by_digest.values()))

    def refresh(self, *, force: bool = False) -> None:
        """Reload the directory if it changed (checked at most every `reloadSeconds` unless `force`)."""
        if not self._config.enabled or self._config.keys_dir is None:
            return
        now = self._clock()
        if not force and now - self._checked_at < self._config.reload_seconds:
            return
        self._checked_at = now
        files = self._scan(self._config.keys_dir)
        signature = tuple(sorted((name, st.st_mtime_ns, st.st_ino, st.st_size) for name, st in files))
        if signature == self._signature:
            return
        self._signature = signature
        by_digest: dict[bytes, str] = {}
        for name, _ in sorted(files, key=lambda f: f[0]):
            try:
                with open(
                    os.path.join(self._config.keys_dir, name), encoding="utf-8", errors="surrogateescape"
                ) as f:
                    key = f.read().strip()
            except OSError as exc:
                log.warning("client key %s cannot be read: %s", name, type(exc).__name__)
                continue
            if not key:
                continue
            digest = _digest(key)
            if digest in by_digest:
                log.warning(
                    "client keys %s and %s are the same key; %s is used",
                    by_digest[digest],
                    name,
                    by_digest[digest],
                )
                continue
            by_digest[digest] = name
        self._by_digest = by_digest
        log.info(
            "loaded %d client key(s): %s", len(by_digest), ", ".join(sorted(by_digest.values())) or "none"
        )

    @staticmethod
    def _scan(directory: str) -> list[tuple[str, os.stat_result]]:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return []
        out = []
        for entry in entries:
            if entry.name.startswith(_HIDDEN):
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                continue
            if not entry.is_dir(follow_symlinks=True):
                out.append((entry.name, st))
        return out

    def authenticate(self, header: str | None) -> str | None:
        """The key's name, or None when auth is off; 401 for a missing or unknown key, 403 for a revoked one,
        429 over the key's rate."""
        if not self._config.enabled:
            return None
        self.refresh()
        scheme, _, key = (header or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                code="missing_api_key",
            )
        name = self._by_digest.get(_digest(key))
        if name is None:
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        if name in self._revoked:
            raise PermissionDeniedError(f"the API key {name!r} has been revoked")
        self._take(name)
        return name

    def _take(self, name: str) -> None:
        rate = self._config.requests_per_second
        if rate is None or self._buckets is None:
            return
        wait = self._buckets.take(name, self._clock())
        if wait > 0:
            raise OverloadedError(
                f"the API key {name!r} is over its limit of {rate:g} requests per second",
                retry_after_seconds=max(1, int(wait + 0.999)),
            )


def bucket_size(config: ClientAuthConfig) -> float:
    """`burst`, or by default one second's worth of the rate (at least 1)."""
    return float(config.burst or max(1, int(config.requests_per_second or 1)))
