"""Kubernetes Events for decisions and failures. Posted only when something changed, so a quiet resync
writes no Event either."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from kubemoe.controller import metrics
from kubemoe.controller.kube import KINDS, KubeClient, KubeError

log = logging.getLogger(__name__)


def post_event(
    kube: KubeClient, owner: dict[str, Any], *, reason: str, message: str, warning: bool = False
) -> None:
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
    try:
        kube.create(KINDS["Event"], meta["namespace"], event)
        metrics.WRITES.labels(verb="create", kind="Event").inc()
    except KubeError as exc:  # an Event is best effort: never fail a reconcile over it
        log.warning("could not post event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], exc)


def announce_sync(kube: KubeClient, owner: dict[str, Any], *, applied: list[str], pruned: list[str]) -> None:
    """Say what a reconcile changed (an Event and a log line); say nothing when it changed nothing."""
    if not applied and not pruned:
        return
    what = ", ".join([*(f"applied {a}" for a in applied), *(f"deleted {p}" for p in pruned)])
    post_event(kube, owner, reason="Synced", message=what)
    log.info("%s/%s: %s", owner["metadata"]["namespace"], owner["metadata"]["name"], what)
