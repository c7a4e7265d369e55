"""The operator process: its state (the queue, the cache, the Lease, the contexts), the workers that run
the one reconcile frame, the resync, and leader election on a Lease. `controller.wiring` connects kopf's
watches to it and serves the health and metrics endpoints.

    kopf watch events (MoEModel, or a labelled child)  ──► WorkQueue ──► workers ──► controller.frame
    resync every N seconds                             ──┘   (workers and resync run on the leader only)

Nothing keeps per-object handler state: every trigger runs the same idempotent reconcile.

/readyz answers 200 while the process does its part: the leader (or a standalone process) whose last
resync listing succeeded within three resync periods, or a follower that read the Lease within one lease
duration; 503 otherwise (starting, or the API server unreachable). The body says `leader` or `standby`;
the `kubemoe_leader` gauge is 1 on the leader and 0 elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client, config

from kubemoe.api.conditions import Reason
from kubemoe.catalog.loader import load_catalog
from kubemoe.controller import metrics
from kubemoe.controller.cache import CHILD_SELECTOR, WatchCache
from kubemoe.controller.config import OperatorConfig
from kubemoe.controller.frame import ReconcileFailed
from kubemoe.controller.kube import KINDS, KubeClient, KubeError
from kubemoe.controller.leader import LeaderElector
from kubemoe.controller.moapipeline import PipelineContext, reconcile_moapipeline, referenced_models
from kubemoe.controller.moemodel import ReconcileContext, reconcile_moemodel
from kubemoe.controller.queue import Key, WorkQueue
from kubemoe.planner.settings import PlannerSettings

log = logging.getLogger("kubemoe.operator")

#: Children watched by label: a change or deletion of one re-reconciles its owner within seconds.
CHILD_RESOURCES = [
    ("apps", "v1", "Deployment"),
    ("", "v1", "Service"),
    ("", "v1", "ConfigMap"),
    ("leaderworkerset.x-k8s.io", "v1", "LeaderWorkerSet"),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
    ("monitoring.coreos.com", "v1", "PrometheusRule"),
    ("monitoring.coreos.com", "v1", "ServiceMonitor"),
]
#: What the reconcile reads, served from the watch-fed cache (controller.cache): the owners too.
OWNER_CACHED = ("MoEModel", "MoAPipeline")
CACHED_KINDS = [KINDS[k] for _, _, k in CHILD_RESOURCES] + [KINDS[k] for k in ("Pod", *OWNER_CACHED)]
#: A resync pass re-lists the owners (the key list, and the check that the API server answers); every
#: RELIST_EVERY-th pass, and on becoming leader, every cached kind (dropping what a reconnecting watch
#: missed). Between full passes the children come from the watch alone.
RELIST_EVERY = 5
#: Pods of ours are told apart by their app.kubernetes.io/name label.
POD_OWNER_KINDS = {"moemodel": "MoEModel", "moapipeline": "MoAPipeline"}
OWNER_KINDS = {"MoEModel", "MoAPipeline"}
#: Children whose status the owner's status follows; their events are filtered (observe.workload_change_matters).
WORKLOAD_KINDS = frozenset({"Deployment", "LeaderWorkerSet"})


@dataclass
class Runtime:
    cfg: OperatorConfig
    identity: str
    kube: KubeClient
    ctx: ReconcileContext
    pipelines: PipelineContext
    cache: WatchCache | None = None
    elector: LeaderElector | None = None  # None: standalone, always leading
    queue: WorkQueue = field(default_factory=WorkQueue)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started: bool = False
    #: Monotonic time of the last successful resync listing.
    last_ok: float = 0.0
    #: (namespace, MoEModel) -> pipelines that refer to it, so a model's change re-reconciles them.
    model_users: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    leading_event: asyncio.Event = field(default_factory=asyncio.Event)
    #: The metadata.generation last seen in a watch event, per owner key.
    generations: dict[Key, int | None] = field(default_factory=dict)
    #: Resync passes made; every RELIST_EVERY-th re-lists every cached kind.
    passes: int = 0

    def wake(self, key: Key, body: kopf.Body, type_: str | None) -> None:
        """Queue `key` for a watch event of the owner itself -- except one that changes only its status
        (the same generation) while the key waits out a backoff: our own failure's status write would
        otherwise cut every backoff short and retry in a hot loop."""
        generation = body.get("metadata", {}).get("generation")
        seen = self.generations.get(key, -1)
        if type_ == "DELETED":
            self.generations.pop(key, None)
        else:
            self.generations[key] = generation
        if type_ != "DELETED" and generation == seen and self.queue.backing_off(key):
            return
        self.queue.add(key)

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.leading

    def healthy(self) -> bool:
        if not self.started:
            return False
        if self.elector is not None and not self.elector.leading:
            return time.monotonic() - self.elector.last_contact <= self.cfg.lease_seconds
        return time.monotonic() - self.last_ok <= max(3 * self.cfg.resync_seconds, 5.0)

    def reconcile(self, key: Key, attempt: int = 0) -> str:
        if key.kind == "MoEModel":
            return reconcile_moemodel(self.ctx, key.namespace, key.name, attempt=attempt)
        if key.kind == "MoAPipeline":
            return reconcile_moapipeline(self.pipelines, key.namespace, key.name, attempt=attempt)
        return "ignored"

    def note_pipeline(self, namespace: str, name: str, obj: dict[str, Any] | None) -> None:
        """Remember which models a pipeline uses (from its watch event), forgetting the old references."""
        for users in self.model_users.values():
            users.discard(name)
        for model in referenced_models(obj or {}):
            self.model_users.setdefault((namespace, model), set()).add(name)

    def pipelines_using(self, namespace: str, model: str) -> set[str]:
        return set(self.model_users.get((namespace, model), ()))


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    except config.ConfigException:
        api: client.ApiClient = config.new_client_from_config()  # type: ignore[no-untyped-call]
        return api


def build_runtime(cfg: OperatorConfig) -> Runtime:
    api = _api_client()
    # Room for every worker's concurrent child applies (controller.sync) without dropping connections.
    api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
    kube = KubeClient(api)
    selectors = {k.kind: CHILD_SELECTOR for k in CACHED_KINDS if k.kind not in OWNER_CACHED}
    cache = WatchCache(kube, CACHED_KINDS, label_selectors=selectors)
    ctx = ReconcileContext(
        kube=kube, catalog=load_catalog(cfg.catalog_paths), planner=PlannerSettings(), reader=cache
    )
    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    pipelines = PipelineContext(kube=kube, router_image=cfg.router_image, reader=cache)
    elector = None
    if not cfg.standalone:
        elector = LeaderElector(
            kube,
            namespace=cfg.resolved_lease_namespace(),
            name=cfg.lease_name,
            identity=identity,
            lease_seconds=cfg.lease_seconds,
            renew_deadline_seconds=cfg.renew_deadline_seconds,
            retry_seconds=cfg.retry_seconds,
        )
    else:
        metrics.LEADER.set(1)
    return Runtime(
        cfg=cfg, identity=identity, kube=kube, ctx=ctx, pipelines=pipelines, cache=cache, elector=elector
    )


# ------------------------------------------------------------------------------------------- workers


async def run_worker(rt: Runtime) -> None:
    while True:
        await rt.leading_event.wait()
        key = await rt.queue.get()
        if not rt.leading:  # lost the Lease while waiting: leave the key for whoever leads next
            rt.queue.done(key, failed=False)
            rt.queue.add(key)
            await rt.leading_event.wait()
            continue
        started = time.monotonic()
        try:
            outcome = await asyncio.to_thread(rt.reconcile, key, rt.queue.failures(key))
        except ReconcileFailed as exc:  # the status says why; the frame counted the error
            retry = rt.queue.done(key, failed=True, transient=exc.reason == Reason.API_UNAVAILABLE)
            result = "failed"
            log.warning("reconcile %s failed (%s); retrying in %.0fs", key, exc, retry or 0)
        except Exception as exc:  # the object could not even be read: nothing to write a status to
            api = isinstance(exc, KubeError)
            retry = rt.queue.done(key, failed=True, transient=api)
            result = "api-error" if api else "error"
            reason = Reason.API_UNAVAILABLE if api else Reason.RECONCILE_ERROR
            metrics.RECONCILE_ERRORS.labels(kind=key.kind, reason=reason.value).inc()
            log.warning("reconcile %s failed (%s); retrying in %.0fs", key, exc, retry or 0, exc_info=not api)
        else:
            rt.queue.done(key, failed=False)
            result = outcome
        metrics.RECONCILES.labels(kind=key.kind, result=result).inc()
        metrics.RECONCILE_DURATION.labels(kind=key.kind).observe(time.monotonic() - started)


# ------------------------------------------------------------------------------- leadership, resync


def _all_keys(rt: Runtime) -> list[Key]:
    namespaces: list[str | None] = list(rt.cfg.namespaces) or [None]
    reader = rt.cache if rt.cache is not None else rt.kube
    keys = []
    for kind in OWNER_CACHED:
        for ns in namespaces:
            for obj in reader.list(KINDS[kind], ns):
                meta = obj["metadata"]
                keys.append(Key(kind, meta["namespace"], meta["name"]))
                if kind == "MoAPipeline":
                    rt.note_pipeline(meta["namespace"], meta["name"], obj)
    return keys


async def resync_once(rt: Runtime, *, full: bool = True) -> None:
    """Queue every owner. A fixed number of LISTs per pass, however many objects there are: the owner kinds
    every pass, every cached kind on a `full` one; the reconciles then read the cache only."""
    namespaces: list[str | None] = list(rt.cfg.namespaces) or [None]
    if rt.cache is not None:
        kinds = None if full else OWNER_CACHED
        await asyncio.to_thread(rt.cache.relist, rt.kube, namespaces, kinds)
    for key in await asyncio.to_thread(_all_keys, rt):
        rt.queue.add(key, resync=True)
    rt.last_ok = time.monotonic()
    metrics.RESYNC_PASSES.inc()


async def run_resync(rt: Runtime) -> None:
    """Level-triggered safety net: every object is reconciled periodically, whatever events were missed.
    An unchanged object costs reads only (see controller.sync). Any failure (an API server outage shows
    as KubeError; anything else is a bug) is logged and the loop goes on: it must outlive outages."""
    while True:
        try:
            if rt.leading:
                await resync_once(rt, full=rt.passes % RELIST_EVERY == 0)
                rt.passes += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("resync listing failed: %s", exc, exc_info=not isinstance(exc, KubeError))
        await asyncio.sleep(rt.cfg.resync_seconds)


async def run_election(rt: Runtime, elector: LeaderElector) -> None:
    """Try for the Lease every retry period; on becoming leader, reconcile everything at once."""
    while True:
        was = elector.leading
        try:
            leading = await asyncio.to_thread(elector.step)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in the elector must not end the election: log, stand by, retry
            log.exception("leader election step failed")
            leading = False
        if leading:
            rt.leading_event.set()
            if not was:
                try:
                    await resync_once(rt)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the periodic resync retries; the election must go on
                    log.warning(
                        "listing after becoming leader failed: %s",
                        exc,
                        exc_info=not isinstance(exc, KubeError),
                    )
        else:
            rt.leading_event.clear()
        await asyncio.sleep(elector.retry_seconds)
