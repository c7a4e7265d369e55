"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics (and its field names), so
`kubectl get lease` shows who leads and every Kubernetes tool understands it:

- a candidate takes the Lease when it is free (no holder) or expired: its record (holderIdentity,
  renewTime) has not changed for `leaseDurationSeconds` as observed on the candidate's own clock (so
  clock skew between nodes does not matter);
- the holder renews it every `retry_seconds`; writes are PUTs with the read resourceVersion, so two
  candidates cannot both win (one gets 409 Conflict);
- it fails closed: a holder that could not renew for `renew_deadline_seconds` (any error: 403, 5xx, no
  answer) stops leading before the Lease can expire for others (renew deadline < lease duration);
- on a clean exit the holder releases the Lease (holder emptied), so a successor takes over at once rather
  than after the lease duration. Release ends the election for good: it waits for a step in flight (steps
  run in a worker thread) and no step after it renews, so a renewal cannot race the release (as one did in
  CI: the step renewed, then the release's PUT got 409 and the Lease kept our name).

Only the leader reconciles; a follower keeps its watches (and caches) warm and takes over within about
one lease duration after the leader dies.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubemoe.controller import metrics
from kubemoe.controller.kube import KINDS, Conflict, KubeClient, KubeError, NotFound

log = logging.getLogger("kubemoe.leader")
LEASE = KINDS["Lease"]


def _micro_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # metav1.MicroTime


@dataclass
class LeaderElector:
    kube: KubeClient
    namespace: str
    name: str
    identity: str
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    leading: bool = False
    #: The holder and renewTime last seen, and when (our monotonic clock) that record last changed.
    _observed: tuple[str, str] = ("", "")
    _observed_at: float = field(default=0.0)
    _last_renew: float = field(default=0.0)
    #: When the API server last answered us about the Lease (readiness of a follower).
    last_contact: float = field(default=0.0)
    #: Set by release(): no step may take or renew the Lease afterwards.
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "leader election needs retry < renew deadline < lease duration, got "
                f"{self.retry_seconds} / {self.renew_deadline_seconds} / {self.lease_seconds}"
            )
        metrics.LEADER.set(0)

    def step(self) -> bool:
        """One try to acquire or renew (call every `retry_seconds`); returns whether we lead now."""
        with self._lock:
            if self.closed:
                return False
            return self._step()

    def _step(self) -> bool:
        now = time.monotonic()
        try:
            ok = self._try_acquire_or_renew(now)
            self.last_contact = now
        except KubeError as exc:
            ok = False
            log.warning(
                "leader election: cannot read or write Lease %s/%s: %s", self.namespace, self.name, exc
            )
        if ok:
            self._last_renew = now
            self._set(True)
        elif self.leading and now - self._last_renew >= self.renew_deadline_seconds:
            log.warning(
                "leader election: could not renew Lease %s/%s for %.0fs; stepping down",
                self.namespace,
                self.name,
                now - self._last_renew,
            )
            self._set(False)
        elif not self.leading:
            self._set(False)
        return self.leading

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            log.warning(  # WARNING: seen at the default level, as is standing by
                "%s leader of Lease %s/%s (%s)",
                "became" if leading else "no longer",
                self.namespace,
                self.name,
                self.identity,
            )
        self.leading = leading
        metrics.LEADER.set(1 if leading else 0)

    def _spec(self, prior: dict[str, Any], *, acquire: bool) -> dict[str, Any]:
        now = _micro_time(datetime.now(UTC))
        spec = dict(prior)
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=int(self.lease_seconds), renewTime=now)
        if acquire:
            spec["acquireTime"] = now
            # client-go's count: every take-over of an existing Lease is a transition, a released one's
            # (holder emptied) too; only the Lease's creation starts at 0.
            spec["leaseTransitions"] = int(prior.get("leaseTransitions") or 0) + (1 if prior else 0)
        return spec

    def _try_acquire_or_renew(self, now: float) -> bool:
        lease = self.kube.get(LEASE, self.namespace, self.name)
        if lease is None:
            body = {
                "apiVersion": LEASE.api_version,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec({}, acquire=True),
            }
            try:
                self.kube.create(LEASE, self.namespace, body)
            except Conflict:  # created by another candidate just now
                return False
            return True
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False  # held by a live leader
        lease["spec"] = self._spec(spec, acquire=holder != self.identity)
        try:
            updated = self.kube.replace(LEASE, self.namespace, self.name, lease)
        except (Conflict, NotFound):
            return False
        new = updated.get("spec") or {}
        self._observed = (str(new.get("holderIdentity") or ""), str(new.get("renewTime") or ""))
        self._observed_at = now
        return True

    def release(self) -> None:
        """Give the Lease up on a clean exit, so that a successor need not wait for it to expire; no step
        takes or renews it afterwards. A 409 (our own renewal or a candidate's write in between) is retried
        on a fresh read, a few times: a Lease left in our name costs the successor a lease duration."""
        with self._lock:
            was_leading, self.closed = self.leading, True
            self._set(False)
            if not was_leading:
                return
            for attempt in range(3):
                try:
                    lease = self.kube.get(LEASE, self.namespace, self.name)
                    if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                        return  # gone, or already taken by a successor: nothing of ours to give up
                    lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
                    self.kube.replace(LEASE, self.namespace, self.name, lease)
                    log.warning("released Lease %s/%s", self.namespace, self.name)
                    return
                except Conflict as exc:
                    if attempt == 2:
                        log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
                except KubeError as exc:
                    log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
                    return
