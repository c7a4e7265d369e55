"""Fixtures: a stub backend and routers served over real loopback sockets (127.0.0.1, ephemeral ports)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from moa_stub import StubBackend
from router_harness import RouterFactory

from kubemoe.router.config import RouterConfig
from kubemoe.router.server import build_app


@pytest.fixture
async def stub() -> AsyncIterator[StubBackend]:
    backend = StubBackend()
    await backend.start()
    yield backend
    await backend.close()


@pytest.fixture
async def start_router() -> AsyncIterator[RouterFactory]:
    """Start routers for configs; returns each one's base URL (http://127.0.0.1:PORT)."""
    runners: list[web.AppRunner] = []

    async def start(config: RouterConfig) -> str:
        # handler_cancellation=True, as run_router sets it: a client disconnect cancels the request.
        runner = web.AppRunner(build_app(config), handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()
