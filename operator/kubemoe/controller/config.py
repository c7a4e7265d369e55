"""The operator's configuration and every kopf setting, in one place."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from kubemoe.render.moapipeline import DEFAULT_ROUTER_IMAGE

ANNOTATION_PREFIX = "kubemoe.io"


#: Every setting a deployment (the Helm chart, the manifests) may set through the environment; a command-line
#: flag, when given, wins. One table, so the chart's values and the operator's defaults cannot drift.
ENV = {
    "resync_seconds": "KUBEMOE_RESYNC_SECONDS",
    "lease_seconds": "KUBEMOE_LEASE_DURATION_SECONDS",
    "renew_deadline_seconds": "KUBEMOE_LEASE_RENEW_DEADLINE_SECONDS",
    "retry_seconds": "KUBEMOE_LEASE_RETRY_SECONDS",
    "lease_namespace": "KUBEMOE_LEASE_NAMESPACE",
    "workers": "KUBEMOE_WORKERS",
}
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: list[str] = field(default_factory=list)  # empty: every namespace
    #: No leader election: for one replica or development.
    standalone: bool = False
    #: Name of the coordination.k8s.io Lease the replicas elect their leader with (controller.leader).
    lease_name: str = "kubemoe"
    #: Where the Lease lives; empty: the pod's namespace in a cluster, else the first watched namespace,
    #: else `default`.
    lease_namespace: str = ""
    #: How long a silent leader keeps the Lease: a SIGKILLed leader is replaced within about this.
    lease_seconds: float = 15.0
    #: A leader that could not renew for this long stops reconciling (fails closed), before others may take over.
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    resync_seconds: float = 60.0
    workers: int = 2
    health_host: str = "0.0.0.0"
    health_port: int = 8080
    catalog_paths: list[str] = field(default_factory=list)
    router_image: str = DEFAULT_ROUTER_IMAGE

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def resolved_lease_namespace(self) -> str:
        if self.lease_namespace:
            return self.lease_namespace
        if SERVICE_ACCOUNT_NAMESPACE.exists():
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        return self.namespaces[0] if self.namespaces else "default"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> OperatorConfig:
        """Defaults, then the environment (`ENV`), then `overrides` that are not None (the flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        defaults = cls()
        for attr, var in ENV.items():
            if var in env and env[var] != "":
                kind = type(getattr(defaults, attr))
                try:
                    values[attr] = kind(env[var])
                except ValueError as exc:
                    raise ValueError(f"{var}={env[var]!r}: not a {kind.__name__}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        # A lease duration alone keeps client-go's proportions (15 s / 10 s / 2 s).
        if "lease_seconds" in values:
            values.setdefault("renew_deadline_seconds", values["lease_seconds"] * 2 / 3)
            values.setdefault("retry_seconds", min(2.0, values["lease_seconds"] / 5))
        return cls(**values)


class EventsOnlyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf builds the "essence" of every watched body (a deep copy less status and system fields) on every
    watch event, to diff it for on.create/on.update/on.resume handlers and daemons. We have none of those
    (only kopf.on.event, which never looks at a diff; `wiring.build_registry` refuses any other kind), so
    that copy -- a quarter of the operator's CPU during a rollout, children and pods included -- is
    skipped: the essence is empty and nothing is stored or fetched."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def operator_settings(cfg: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # kopf's own peering is off: leadership is our Lease (controller.leader), which gates the workers and
    # the resync while every replica keeps watching, so a follower takes over with warm watches.
    settings.peering.standalone = True
    settings.peering.mandatory = False
    settings.peering.clusterwide = cfg.clusterwide
    # Our handlers only enqueue keys (kopf.on.event), so kopf keeps no handler progress; should it ever,
    # it stays under our own annotation prefix rather than kopf.zalando.org.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = EventsOnlyDiffBase(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # No handler needs one: owner references and the garbage collector remove every child, so deleting a
    # MoEModel never waits for the operator to be running.
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    # Watches end server-side every 5 minutes and are reopened; the client gives the server 30 s more, so a
    # dead API server (restart, network) is noticed and reconnected to instead of hanging.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # kopf gives up a watch once the backoffs run out; an API server outage of any length must be waited
    # out instead (about an hour of retries here; then kopf's own failure handling applies).
    settings.networking.error_backoffs = [1, 2, 5, 10, 20] + [30] * 120
    # kopf would post its own log lines as Events; we post Events for decisions and failures ourselves.
    settings.posting.enabled = False
    settings.posting.level = logging.WARNING
    return settings
