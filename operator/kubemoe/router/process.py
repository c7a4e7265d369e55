"""The router process: serve the app of `server` until SIGTERM (`serve_one`), or supervise several worker
processes on one port (`run_router` with `workers` > 1: `router.workers`). What a process does once, at
start-up, lives here: the event loop, the listen backlog, freezing start-up objects out of the GC, and the
per-key rate-limit buckets a worker shares with the others.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from pathlib import Path

from aiohttp import web

from kubemoe.router.auth import bucket_size
from kubemoe.router.buckets import SharedBuckets
from kubemoe.router.config import RouterConfig
from kubemoe.router.server import build_app

log = logging.getLogger("kubemoe.router")


def _event_loop(kind: str) -> asyncio.AbstractEventLoop | None:
    """`auto`: uvloop where installed (a faster event loop, a third less CPU per request here), else asyncio's."""
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise
        return None
    return uvloop.new_event_loop()


async def _freeze_start_up_objects(app: web.Application) -> None:
    """Move what start-up built (modules, pydantic schemas, the app, the upstream pool) out of the cyclic GC's
    reach. Python's full collections walk every tracked object: with ~60k of them from start-up, one took
    50 ms under the benchmark (measured with gc.callbacks), a stall of every request in flight. Frozen
    objects are never scanned (nor freed by the GC; they live as long as the process anyway), so a full
    collection then scans only what requests left behind."""
    gc.collect()
    gc.freeze()


def listen_backlog(config: RouterConfig) -> int:
    """The listening socket's accept queue: room for every admitted client connecting at once. aiohttp's
    128 overflows when 256 clients connect together, and a dropped SYN costs the client a 1 s retransmit
    (the kernel caps this at net.core.somaxconn)."""
    return max(128, config.limits.max_concurrent_requests)


def serve_one(
    config: RouterConfig,
    *,
    host: str,
    port: int,
    loop: str = "auto",
    reuse_port: bool = False,
    shared_buckets: tuple[str, int] | None = None,
) -> None:
    """Serve `config` in this process until SIGTERM/SIGINT. `shared_buckets`: (the bucket table's file, how
    many workers share it), for a worker of several (`router.workers`)."""
    log.info(
        "serving pipeline %r (%d layers) on %s:%d, pid %d",
        config.name,
        len(config.layers),
        host,
        port,
        os.getpid(),
    )
    buckets = None
    rate = config.auth.requests_per_second
    if shared_buckets is not None and config.auth.enabled and rate is not None:
        path, workers = shared_buckets
        buckets = SharedBuckets(path, rate, bucket_size(config.auth), workers=workers)
    app = build_app(config, buckets=buckets)
    app.on_startup.append(_freeze_start_up_objects)  # after _upstream_ctx: the pool is built by then
    web.run_app(
        app,
        host=host,
        port=port,
        handler_cancellation=True,
        # Kubernetes sends SIGTERM after removing the pod from endpoints; let in-flight answers finish.
        shutdown_timeout=30.0,
        print=None,
        reuse_port=reuse_port or None,
        backlog=listen_backlog(config),
        loop=_event_loop(loop),
    )


def run_router(
    config_path: str | Path, *, host: str = "0.0.0.0", port: int = 8080, workers: int = 1, loop: str = "auto"
) -> None:
    """Load the config and serve until SIGTERM/SIGINT (what `kubemoe router --config FILE` calls); with
    `workers` > 1, that many processes share the port (`router.workers`)."""
    if workers > 1:
        from kubemoe.router.workers import run_workers

        code = run_workers(str(config_path), host=host, port=port, workers=workers, loop=loop)
        if code:
            raise SystemExit(code)
        return
    serve_one(RouterConfig.from_file(config_path), host=host, port=port, loop=loop)
