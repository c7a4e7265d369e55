"""The operator's configuration and every kopf setting, in one place."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import kopf

from kubemoe.render.moapipeline import DEFAULT_ROUTER_IMAGE

ANNOTATION_PREFIX = "kubemoe.io"


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: list[str] = field(default_factory=list)  # empty: every namespace
    standalone: bool = False
    peering_name: str = "kubemoe"
    #: Peering is "highest priority acts"; replicas of one Deployment would tie (and kopf pauses all on a tie),
    #: so each process draws its own. The winner acts; the rest take over when its heartbeat expires.
    priority: int = field(default_factory=lambda: random.randint(1, 2**31 - 1))
    resync_seconds: float = 60.0
    workers: int = 2
    health_host: str = "0.0.0.0"
    health_port: int = 8080
    catalog_paths: list[str] = field(default_factory=list)
    router_image: str = DEFAULT_ROUTER_IMAGE

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def operator_settings(cfg: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Leader election: only the highest-priority live peer handles events (see OperatorConfig.priority).
    settings.peering.name = cfg.peering_name
    settings.peering.standalone = cfg.standalone
    settings.peering.mandatory = not cfg.standalone
    settings.peering.clusterwide = cfg.clusterwide
    settings.peering.priority = cfg.priority
    # Our handlers only enqueue keys (kopf.on.event), so kopf keeps no handler progress; should it ever,
    # it stays under our own annotation prefix rather than kopf.zalando.org.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
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
    settings.networking.error_backoffs = [1, 2, 5, 10, 20, 30]
    # kopf would post its own log lines as Events; we post Events for decisions and failures ourselves.
    settings.posting.enabled = False
    settings.posting.level = logging.WARNING
    return settings
