"""kopf wiring: thin event handlers that feed the cache and enqueue keys, the process's start-up (health
and metrics endpoints, workers, resync, election: `controller.runtime`) and its clean exit.

kopf is used for what it is good at -- watching and reconnecting. Every watch event feeds the cache first;
one that only echoes a write of ours (the cache holds its resourceVersion already) wakes nobody. Events of
children and pods queue their owner in the queue's urgent lane (controller.queue).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import kopf
from aiohttp import web

from kubemoe.api.common import GROUP, VERSION
from kubemoe.controller.config import OperatorConfig, operator_settings
from kubemoe.controller.health import serve_health
from kubemoe.controller.kube import KINDS
from kubemoe.controller.observe import pod_change_matters, workload_change_matters
from kubemoe.controller.queue import Key
from kubemoe.controller.runtime import (
    CHILD_RESOURCES,
    OWNER_KINDS,
    POD_OWNER_KINDS,
    WORKLOAD_KINDS,
    Runtime,
    build_runtime,
    log,
    run_election,
    run_resync,
    run_worker,
)
from kubemoe.render.meta import MANAGED_BY


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
        rt.tasks += [asyncio.create_task(run_worker(rt), name=f"worker-{i}") for i in range(rt.cfg.workers)]
        rt.tasks.append(asyncio.create_task(run_resync(rt), name="resync"))
        if rt.elector is None:
            rt.leading_event.set()
        else:
            rt.tasks.append(asyncio.create_task(run_election(rt, rt.elector), name="leader-election"))
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
