"""Helpers the router tests import by name: the router factory's type and a config of stub agents.

Kept out of conftest.py so that tests import them from a module of their own name: `from router_harness import`
resolves to whichever conftest module was imported first, which is tests/peer's when pytest is given both
directories (`pytest tests/router tests/peer` failed to collect)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from kubemoe.router.config import RouterConfig

RouterFactory = Callable[[RouterConfig], Awaitable[str]]


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
    auth: dict[str, Any] | None = None,
) -> RouterConfig:
    """A config whose agents are named like their stub models (agent `a` calls model `a`).

    Unless `policy` says otherwise, every layer waits for all its agents (minResponses = smallest layer), so a
    test's outcome never depends on which stub answers first. Client auth is off unless `auth` is given
    (test_router_auth covers it).
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
            "auth": auth or {"enabled": False},
        }
    )
