"""Sizing: the upstream pool follows the concurrency limit, and the shipped defaults serve 256 concurrent
requests instead of refusing most of them (they refused 92-94 % with a 64 cap in front of a 32-socket pool)."""

from __future__ import annotations

import asyncio
import collections

import aiohttp
from moa_stub import Behavior, StubBackend
from router_harness import RouterFactory, make_config
from test_router_pipeline import USER

from kubemoe.router.config import DEFAULT_MAX_CONCURRENT_REQUESTS, Limits

CONCURRENT = 256


def test_pool_is_derived_from_the_concurrency_limit() -> None:
    # Two proposers on one host in a layer: each admitted request opens two connections to it at once.
    config = make_config("http://127.0.0.1:9/v1", [("a", "b"), ("c",)], limits={"maxConcurrentRequests": 100})
    assert config.calls_per_host() == 2
    assert config.pool_size == 200
    spread = make_config("http://127.0.0.1:9/v1", [("a",)])
    assert spread.calls_per_host() == 1
    assert spread.pool_size == DEFAULT_MAX_CONCURRENT_REQUESTS
    pinned = make_config("http://127.0.0.1:9/v1", [("a", "b")], limits={"upstream": {"poolSize": 7}})
    assert pinned.pool_size == 7
    assert Limits().max_concurrent_requests >= CONCURRENT


async def test_shipped_defaults_serve_256_concurrent_requests(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    # 0.3 s per call keeps all 256 requests in flight together; three proposers share the stub's host.
    stub.behaviors.update(a=Behavior(latency=0.3), b=Behavior(latency=0.3), c=Behavior(latency=0.3))
    config = make_config(stub.url, [("a", "b", "c")])  # default limits
    base = await start_router(config)
    codes: collections.Counter[int] = collections.Counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def one() -> None:
            payload = {"model": "moa-test", "messages": USER}
            async with http.post(f"{base}/v1/chat/completions", json=payload) as resp:
                await resp.read()
                codes[resp.status] += 1

        await asyncio.gather(*(one() for _ in range(CONCURRENT)))
    assert codes == {200: CONCURRENT}, codes
    # The proposers' calls really ran side by side: far more than the old 32-connection pool allowed.
    assert stub.peak_in_flight > CONCURRENT, stub.peak_in_flight
