"""Kubernetes Events for decisions and failures. Posted only when something changed, so a quiet resync
writes no Event either. Posted in the background (in order, by one thread): an Event is best effort, and
the reconcile that decided it does not wait for the API server to store it."""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubemoe.api.conditions import Reason
from kubemoe.controller import metrics
from kubemoe.controller.kube import KINDS, KubeClient, KubeError

log = logging.getLogger(__name__)

_POSTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubemoe-events")


def post_event(
    kube: KubeClient, owner: dict[str, Any], *, reason: str, message: str, warning: bool = False
) -> Future[None]:
    meta = owner["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": "kubemoe"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    return _POSTER.submit(_create, kube, event)


def _create(kube: KubeClient, event: dict[str, Any]) -> None:
    meta = event["involvedObject"]
    try:
        kube.create(KINDS["Event"], meta["namespace"], event)
        metrics.WRITES.labels(verb="create", kind="Event").inc()
    except KubeError as exc:  # an Event is best effort: never fail a reconcile over it
        log.warning(
            "could not post event %s for %s/%s: %s", event["reason"], meta["namespace"], meta["name"], exc
        )


def announce_sync(
    kube: KubeClient,
    owner: dict[str, Any],
    *,
    applied: list[str],
    pruned: list[str],
    planned: str | None = None,
) -> None:
    """Say what a reconcile changed, in one Event and a log line: `Planned` (why, then what it applied) when
    the plan changed, else `Synced`; nothing when it changed nothing. One Event, not one per decision: at
    a rollout of many models each Event is an API write the floor does not pay for."""
    what = ", ".join([*(f"applied {a}" for a in applied), *(f"deleted {p}" for p in pruned)])
    if planned is not None:
        post_event(
            kube, owner, reason=Reason.PLANNED.value, message=f"{planned}; {what}" if what else planned
        )
    elif what:
        post_event(kube, owner, reason="Synced", message=what)
    else:
        return
    log.info("%s/%s: %s", owner["metadata"]["namespace"], owner["metadata"]["name"], what or planned)
