"""kopf wiring: thin event handlers that enqueue keys, workers that run the one reconcile frame, a resync,
leader election on a Lease, and the health and metrics endpoints.

    kopf watch events (MoEModel, or a labelled child)  ──► WorkQueue ──► workers ──► controller.frame
    resync every N seconds                             ──┘   (workers and resync run on the leader only)

kopf is used for what it is good at -- watching and reconnecting -- and nothing keeps per-object handler
state: every trigger runs the same idempotent reconcile. Every watch event feeds the cache first; one that
only echoes a write of ours (the cache holds its resourceVersion already) wakes nobody. Events of children
and pods queue their owner in the queue's urgent lane (controller.queue).

/readyz answers 200 while the process does its part: the leader (or a standalone process) whose last
resync listing succeeded within three resync periods, or a follower that read the Lease within one lease
duration; 503 otherwise (starting, or the API server unreachable). The body says `leader` or `standby`;
the `kubemoe_leader` gauge is 1 on the leader and 0 elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import kopf
from aiohttp import web
from kubernetes import client, config

from kubemoe.api.common import GROUP, VERSION
from kubemoe.api.conditions import Reason
from kubemoe.catalog.loader import load_catalog
from kubemoe.controller import metrics
from kubemoe.controller.cache import CHILD_SELECTOR, WatchCache
from kubemoe.controller.config import OperatorConfig, operator_settings
from kubemoe.controller.frame import ReconcileFailed
from kubemoe.controller.health import serve_health
from kubemoe.controller.kube import KINDS, KubeClient, KubeError
from kubemoe.controller.leader import LeaderElector
from kubemoe.controller.moapipeline import PipelineContext, reconcile_moapipeline, referenced_models
from kubemoe.controller.moemodel import ReconcileContext, reconcile_moemodel
from kubemoe.controller.observe import pod_change_matters, workload_change_matters
from kubemoe.controller.queue import Key, WorkQueue
from kubemoe.planner.settings import PlannerSettings
from kubemoe.render.meta import MANAGED_BY

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


async def _worker(rt: Runtime) -> None:
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


async def _resync_once(rt: Runtime, *, full: bool = True) -> None:
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


async def _resync(rt: Runtime) -> None:
    """Level-triggered safety net: every object is reconciled periodically, whatever events were missed.
    An unchanged object costs reads only (see controller.sync). Any failure (an API server outage shows
    as KubeError; anything else is a bug) is logged and the loop goes on: it must outlive outages."""
    while True:
        try:
            if rt.leading:
                await _resync_once(rt, full=rt.passes % RELIST_EVERY == 0)
                rt.passes += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("resync listing failed: %s", exc, exc_info=not isinstance(exc, KubeError))
        await asyncio.sleep(rt.cfg.resync_seconds)


async def _elect(rt: Runtime, elector: LeaderElector) -> None:
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
                    await _resync_once(rt)
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


# --------------------------------------------------------------------------------------- kopf wiring


def build_registry(rt: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    runner: list[web.AppRunner] = []

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A private registry gets none of kopf's default handlers: authenticate as the kubernetes client
        # does (in-cluster service account, else $KUBECONFIG).
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def _startup(**_: Any) -> None:
        try:
            runner.append(
                await serve_health(
                    rt.cfg.health_host,
                    rt.cfg.health_port,
                    healthy=rt.healthy,
                    role=lambda: "leader" if rt.leading else "standby",
                )
            )
        except OSError as exc:  # a taken port never frees itself: stop with a clear error, not a retry loop
            raise kopf.PermanentError(
                f"cannot serve /healthz and /metrics on port {rt.cfg.health_port}: {exc}"
            ) from exc
        rt.tasks += [asyncio.create_task(_worker(rt), name=f"worker-{i}") for i in range(rt.cfg.workers)]
        rt.tasks.append(asyncio.create_task(_resync(rt), name="resync"))
        if rt.elector is None:
            rt.leading_event.set()
        else:
            rt.tasks.append(asyncio.create_task(_elect(rt, rt.elector), name="leader-election"))
        rt.started = True
        log.warning(  # WARNING: kopf's loggers are quiet by default, and this line says who we are
            "kubemoe operator %s started (%s, resync every %.0fs)",
            rt.identity,
            "standalone"
            if rt.elector is None
            else f"Lease {rt.elector.namespace}/{rt.elector.name}, {rt.cfg.lease_seconds:.0f}s",
            rt.cfg.resync_seconds,
        )

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        rt.queue.close()
        rt.leading_event.clear()
        if rt.elector is not None:
            await asyncio.to_thread(rt.elector.release)
        for task in rt.tasks:
            task.cancel()
        for task in rt.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for r in runner:
            await r.cleanup()

    def _matters(kind: str, body: kopf.Body, type_: str | None, matters: Any) -> bool:
        """`matters(old, new)` of the cached object and this event's (new None: deleted), read before the
        event is fed; True while the kind is not listed yet (nothing to compare with)."""
        if rt.cache is None or not rt.cache.listed(kind):
            return True
        new = None if type_ == "DELETED" else dict(body)
        meta = body.get("metadata", {})
        return bool(
            rt.cache.peek(
                kind, meta.get("namespace") or "", meta.get("name", ""), lambda old: matters(old, new)
            )
        )

    def _feed(kind: str, body: kopf.Body, type_: str | None) -> bool:
        """Into the cache; whether the event is news (not the echo of a write of ours the cache holds)."""
        if rt.cache is None:
            return True
        # The body is kopf's fresh parse of one watch event, dropped once the handlers ran: the cache
        # takes it as it is, without the deep copy it makes of objects others may still hold.
        obj = dict(body)
        return rt.cache.remove(kind, obj) if type_ == "DELETED" else rt.cache.upsert(kind, obj, owned=True)

    @kopf.on.event(GROUP, VERSION, "moemodels", registry=registry)
    async def _model_event(
        *, namespace: str | None, name: str, body: kopf.Body, type: str | None, **_: Any
    ) -> None:
        news = _feed("MoEModel", body, type)
        if namespace:
            if news:
                rt.wake(Key("MoEModel", namespace, name), body, type)
            # Their readiness and URLs follow the model's status, which our own writes change too.
            for pipeline in rt.pipelines_using(namespace, name):
                rt.queue.add(Key("MoAPipeline", namespace, pipeline))

    @kopf.on.event(GROUP, VERSION, "moapipelines", registry=registry)
    async def _pipeline_event(
        *, namespace: str | None, name: str, body: kopf.Body, type: str | None, **_: Any
    ) -> None:
        news = _feed("MoAPipeline", body, type)
        if namespace:
            rt.note_pipeline(namespace, name, None if type == "DELETED" else dict(body))
            if news:
                rt.wake(Key("MoAPipeline", namespace, name), body, type)

    def _child_handler(kind: str) -> Any:
        workload = kind in WORKLOAD_KINDS

        async def _child_event(*, body: kopf.Body, namespace: str | None, type: str | None, **_: Any) -> None:
            matters = not workload or _matters(kind, body, type, workload_change_matters)
            if not _feed(kind, body, type) or not namespace:
                return  # an echo of our own apply: the reconcile that made it already saw it
            if not matters:
                return  # only timestamps and messages of its status moved
            for ref in body.get("metadata", {}).get("ownerReferences", []):
                if (
                    ref.get("controller")
                    and ref.get("kind") in OWNER_KINDS
                    and ref.get("apiVersion", "").startswith(GROUP)
                ):
                    rt.queue.add(Key(ref["kind"], namespace, ref["name"]), urgent=True, keep_backoff=True)

        return _child_event

    for group, version, kind in CHILD_RESOURCES:
        kopf.on.event(
            group or None,
            version,
            KINDS[kind].plural,
            labels={"app.kubernetes.io/managed-by": MANAGED_BY},
            registry=registry,
            id=f"child-{KINDS[kind].plural}",
        )(_child_handler(kind))

    @kopf.on.event(
        "", "v1", "pods", labels={"app.kubernetes.io/managed-by": MANAGED_BY}, registry=registry, id="pods"
    )
    async def _pod_event(*, body: kopf.Body, namespace: str | None, type: str | None, **_: Any) -> None:
        """Pods feed the cache, and wake their owner when what its status says of pods may change (a crash
        loop shows without waiting a resync); a healthy pod's start-up is told by its workload's status."""
        matters = _matters("Pod", body, type, pod_change_matters)
        if not _feed("Pod", body, type) or not matters:
            return
        labels = body.get("metadata", {}).get("labels") or {}
        owner = POD_OWNER_KINDS.get(labels.get("app.kubernetes.io/name", ""))
        instance = labels.get("app.kubernetes.io/instance")
        if namespace and owner and instance:
            rt.queue.add(Key(owner, namespace, instance), urgent=True, keep_backoff=True)

    check_events_only(registry)
    return registry


def check_events_only(registry: kopf.OperatorRegistry) -> None:
    """Only kopf.on.event handlers: config.EventsOnlyDiffBase gives kopf no diff base, which an on.create,
    on.update or daemon handler would silently miss."""
    changing = registry._changing.get_all_handlers()  # kopf has no public view of the registry
    spawning = registry._spawning.get_all_handlers()
    if changing or spawning:
        ids = sorted(str(h.id) for h in [*changing, *spawning])
        raise RuntimeError(f"only kopf.on.event handlers are supported (diff base is off), got {ids}")


def run_operator(cfg: OperatorConfig) -> None:
    """Run until SIGTERM/SIGINT."""
    rt = build_runtime(cfg)
    asyncio.run(
        kopf.operator(
            registry=build_registry(rt),
            settings=operator_settings(cfg),
            identity=rt.identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
            standalone=True,  # leadership is our Lease (controller.leader), not kopf's peering
            clusterwide=cfg.clusterwide,
            namespaces=cfg.namespaces,
        )
    )
