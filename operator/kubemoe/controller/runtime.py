"""kopf wiring: thin event handlers that enqueue keys, workers that run the one reconcile, a leader-gated
resync, and the health and metrics endpoints.

    kopf watch events (MoEModel, or a labelled child)  ──► WorkQueue ──► workers ──► reconcile_moemodel
    resync every N seconds (peering leader only)       ──┘

kopf is used for what it is good at -- watching, reconnecting, peering -- and nothing keeps per-object
handler state: every trigger runs the same idempotent reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from aiohttp import web
from kubernetes import client, config
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubemoe.api.common import GROUP, VERSION
from kubemoe.catalog.loader import load_catalog
from kubemoe.controller import metrics
from kubemoe.controller.config import OperatorConfig, operator_settings
from kubemoe.controller.kube import KINDS, KubeClient, KubeError
from kubemoe.controller.moapipeline import PipelineContext, reconcile_moapipeline, referenced_models
from kubemoe.controller.moemodel import ReconcileContext, reconcile_moemodel
from kubemoe.controller.queue import Key, WorkQueue
from kubemoe.planner.settings import PlannerSettings
from kubemoe.render.meta import MANAGED_BY

log = logging.getLogger("kubemoe.operator")

#: Children watched by label: a change or deletion of one re-reconciles its owner within seconds.
CHILD_RESOURCES = [
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets"),
    ("gateway.networking.k8s.io", "v1", "httproutes"),
    ("monitoring.coreos.com", "v1", "prometheusrules"),
    ("monitoring.coreos.com", "v1", "servicemonitors"),
]
OWNER_KINDS = {"MoEModel", "MoAPipeline"}


@dataclass
class Runtime:
    cfg: OperatorConfig
    identity: str
    kube: KubeClient
    ctx: ReconcileContext
    pipelines: PipelineContext
    queue: WorkQueue = field(default_factory=WorkQueue)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ready: bool = False
    #: (namespace, MoEModel) -> pipelines that refer to it, so a model's change re-reconciles them.
    model_users: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def reconcile(self, key: Key) -> str:
        if key.kind == "MoEModel":
            return reconcile_moemodel(self.ctx, key.namespace, key.name)
        if key.kind == "MoAPipeline":
            return reconcile_moapipeline(self.pipelines, key.namespace, key.name)
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
    kube = KubeClient(_api_client())
    ctx = ReconcileContext(kube=kube, catalog=load_catalog(cfg.catalog_paths), planner=PlannerSettings())
    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    pipelines = PipelineContext(kube=kube, router_image=cfg.router_image)
    return Runtime(cfg=cfg, identity=identity, kube=kube, ctx=ctx, pipelines=pipelines)


# ------------------------------------------------------------------------------------------- workers


async def _worker(rt: Runtime) -> None:
    while True:
        key = await rt.queue.get()
        started = time.monotonic()
        try:
            outcome = await asyncio.to_thread(rt.reconcile, key)
        except Exception as exc:
            retry = rt.queue.done(key, failed=True)
            result = "api-error" if isinstance(exc, KubeError) else "error"
            log.warning(
                "reconcile %s failed (%s); retrying in %.0fs",
                key,
                exc,
                retry or 0,
                exc_info=not isinstance(exc, KubeError),
            )
        else:
            rt.queue.done(key, failed=False)
            result = outcome
        metrics.RECONCILES.labels(kind=key.kind, result=result).inc()
        metrics.RECONCILE_DURATION.labels(kind=key.kind).observe(time.monotonic() - started)


# -------------------------------------------------------------------------------------------- resync


def is_leader(rt: Runtime) -> bool:
    """Whether this process is the peering leader: the highest priority among live peers, as kopf decides
    (a tie pauses everyone in kopf, so it is no leadership here either). Standalone: always."""
    if rt.cfg.standalone:
        return True
    peering = _read_peering(rt)
    now = datetime.now(UTC)
    for peer_id, info in (peering.get("status") or {}).items():
        if peer_id == rt.identity:
            continue
        try:
            seen = datetime.fromisoformat(str(info.get("lastseen")).replace("Z", "+00:00"))
            if seen.tzinfo is None:
                seen = seen.replace(tzinfo=UTC)
            alive = (now - seen).total_seconds() < float(info.get("lifetime", 60))
        except (TypeError, ValueError):
            continue
        if alive and int(info.get("priority", 0)) >= rt.cfg.priority:
            return False
    return True


def _read_peering(rt: Runtime) -> dict[str, Any]:
    name = rt.cfg.peering_name
    if rt.cfg.clusterwide:
        path = f"/apis/kopf.dev/v1/clusterkopfpeerings/{name}"
    else:
        path = f"/apis/kopf.dev/v1/namespaces/{rt.cfg.namespaces[0]}/kopfpeerings/{name}"
    try:
        obj: dict[str, Any] = rt.kube._call("GET", path)
        return obj
    except KubeError:
        return {}


def _all_keys(rt: Runtime) -> list[Key]:
    namespaces: list[str | None] = list(rt.cfg.namespaces) or [None]
    keys = []
    for kind in ("MoEModel", "MoAPipeline"):
        for ns in namespaces:
            for obj in rt.kube.list(KINDS[kind], ns):
                meta = obj["metadata"]
                keys.append(Key(kind, meta["namespace"], meta["name"]))
                if kind == "MoAPipeline":
                    rt.note_pipeline(meta["namespace"], meta["name"], obj)
    return keys


async def _resync(rt: Runtime) -> None:
    """Level-triggered safety net: every object is reconciled periodically, whatever events were missed.
    An unchanged object costs reads only (see controller.sync)."""
    while True:
        try:
            if await asyncio.to_thread(is_leader, rt):
                for key in await asyncio.to_thread(_all_keys, rt):
                    rt.queue.add(key, resync=True)
            rt.ready = True
        except KubeError as exc:
            log.warning("resync listing failed: %s", exc)
        await asyncio.sleep(rt.cfg.resync_seconds)


# ------------------------------------------------------------------------------------- health server


async def _serve_health(rt: Runtime) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ready" if rt.ready else "starting", status=200 if rt.ready else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.add_routes(
        [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_view)]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, rt.cfg.health_host, rt.cfg.health_port).start()
    return runner


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
            runner.append(await _serve_health(rt))
        except OSError as exc:  # a taken port never frees itself: stop with a clear error, not a retry loop
            raise kopf.PermanentError(
                f"cannot serve /healthz and /metrics on port {rt.cfg.health_port}: {exc}"
            ) from exc
        rt.tasks += [asyncio.create_task(_worker(rt), name=f"worker-{i}") for i in range(rt.cfg.workers)]
        rt.tasks.append(asyncio.create_task(_resync(rt), name="resync"))
        log.info(
            "kubemoe operator %s started (priority %d, %s)",
            rt.identity,
            rt.cfg.priority,
            "standalone" if rt.cfg.standalone else f"peering {rt.cfg.peering_name!r}",
        )

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        rt.queue.close()
        for task in rt.tasks:
            task.cancel()
        for task in rt.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for r in runner:
            await r.cleanup()

    @kopf.on.event(GROUP, VERSION, "moemodels", registry=registry)
    async def _model_event(*, namespace: str | None, name: str, **_: Any) -> None:
        if namespace:
            rt.queue.add(Key("MoEModel", namespace, name))
            for pipeline in rt.pipelines_using(namespace, name):  # their readiness and URLs follow the model
                rt.queue.add(Key("MoAPipeline", namespace, pipeline))

    @kopf.on.event(GROUP, VERSION, "moapipelines", registry=registry)
    async def _pipeline_event(
        *, namespace: str | None, name: str, body: kopf.Body, type: str | None, **_: Any
    ) -> None:
        if namespace:
            rt.note_pipeline(namespace, name, None if type == "DELETED" else dict(body))
            rt.queue.add(Key("MoAPipeline", namespace, name))

    async def _child_event(*, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        if not namespace:
            return
        for ref in body.get("metadata", {}).get("ownerReferences", []):
            if (
                ref.get("controller")
                and ref.get("kind") in OWNER_KINDS
                and ref.get("apiVersion", "").startswith(GROUP)
            ):
                rt.queue.add(Key(ref["kind"], namespace, ref["name"]))

    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(
            group or None,
            version,
            plural,
            labels={"app.kubernetes.io/managed-by": MANAGED_BY},
            registry=registry,
            id=f"child-{plural}",
        )(_child_event)
    return registry


def run_operator(cfg: OperatorConfig) -> None:
    """Run until SIGTERM/SIGINT."""
    rt = build_runtime(cfg)
    asyncio.run(
        kopf.operator(
            registry=build_registry(rt),
            settings=operator_settings(cfg),
            identity=rt.identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
            standalone=cfg.standalone,
            priority=cfg.priority,
            peering_name=None if cfg.standalone else cfg.peering_name,
            clusterwide=cfg.clusterwide,
            namespaces=cfg.namespaces,
        )
    )
