"""The operator's /healthz, /readyz and /metrics endpoints (aiohttp), served from the kopf event loop."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubemoe.controller import metrics


async def serve_health(
    host: str, port: int, *, healthy: Callable[[], bool], role: Callable[[], str]
) -> web.AppRunner:
    """/readyz answers 200 while `healthy()`, with `role()` (leader or standby) as the body."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if healthy():
            return web.Response(text=role())
        return web.Response(text=f"{role()}: not started or the API server unreachable", status=503)

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
    await web.TCPSite(runner, host, port).start()
    return runner
