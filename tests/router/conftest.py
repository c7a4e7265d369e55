"""Fixtures: a stub backend and routers served over real loopback sockets (127.0.0.1, ephemeral ports)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiohttp import web
from moa_stub import StubBackend

from kubemoe.router.config import RouterConfig
from kubemoe.router.server import build_app

RouterFactory = Callable[[RouterConfig], Awaitable[str]]


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


def make_config(
    url: str,
    layers: Sequence[Sequence[str]] = (("a", "b"), ("c", "d")),
    *,
    name: str = "moa-test",
    aggregator: str = "agg",
    policy: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    agent_extra: dict[str, dict[str, Any]] | None = None,
    aggregator_extra: dict[str, Any] | None = None,
) -> RouterConfig:
    """A config whose agents are named like their stub models (agent `a` calls model `a`).

    Unless `policy` says otherwise, every layer waits for all its agents (minResponses = smallest layer), so a
    test's outcome never depends on which stub answers first.
    """
    extra = agent_extra or {}
    policy = {"minResponses": min(len(layer) for layer in layers), **(policy or {})}
    return RouterConfig.model_validate(
        {
            "name": name,
            "layers": [
                {"agents": [{"name": n, "url": url, "model": n, **extra.get(n, {})} for n in layer]}
                for layer in layers
            ],
            "aggregator": {"name": aggregator, "url": url, "model": aggregator, **(aggregator_extra or {})},
            "policy": policy,
            "limits": limits or {},
        }
    )
