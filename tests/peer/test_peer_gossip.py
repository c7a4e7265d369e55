"""Decentralised peers over real loopback sockets: gossip fan-out, selection, losing peers, streaming."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kubemoe.testing.standin import StandIn, start_peers

NAMES = ["alpha", "beta", "gamma", "delta", "eps"]


def query(content: str = "What is 2+2?", **extra: Any) -> dict[str, Any]:
    return {"model": "moa-peers", "messages": [{"role": "user", "content": content}], **extra}


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(("k", "m"), [(1, 1), (2, 2), (3, 3), (0, 2)])
async def test_query_reaches_k_neighbours_per_layer(
    standin: StandIn, http: aiohttp.ClientSession, k: int, m: int
) -> None:
    peers = await start_peers(standin.url, NAMES, topology={"neighbours": k, "layers": m})
    try:
        status, body = await post(http, peers[0].url, query(moa_trace=True))
        assert status == 200, body
        chosen = body["moa_peers"]
        assert len(chosen) == k
        assert len(set(chosen)) == k
        assert "alpha" not in chosen
        # The entry peer's model: one proposal per layer plus the aggregation; each neighbour: one per layer.
        assert standin.count("alpha") == m + 1
        for name in NAMES[1:]:
            assert standin.count(name) == (m if name in chosen else 0)
        assert len(standin.calls) == (k + 1) * m + 1
        layers = body["moa_trace"]["layers"]
        assert [sorted(a["agent"] for a in layer["agents"]) for layer in layers] == [
            sorted(["alpha", *chosen])
        ] * m
        assert body["choices"][0]["message"]["content"] == "alpha says hi"
    finally:
        for p in peers:
            await p.stop()


async def test_later_layers_see_previous_answers(standin: StandIn, http: aiohttp.ClientSession) -> None:
    peers = await start_peers(standin.url, NAMES[:3], topology={"neighbours": 2, "layers": 2})
    try:
        status, _ = await post(http, peers[1].url, query())
        assert status == 200
        second = [b for m, b in standin.calls if m == "gamma"][1]
        system = second["messages"][0]["content"]
        assert "alpha says hi" in system
        assert "beta says hi" in system
        assert "gamma says hi" in system
        # The neighbour used its own model name and sampling settings, not the entry peer's request.
        assert second["model"] == "gamma"
        assert second["max_tokens"] == 64
    finally:
        for p in peers:
            await p.stop()


async def test_random_selection_varies_per_query(standin: StandIn, http: aiohttp.ClientSession) -> None:
    peers = await start_peers(standin.url, NAMES, topology={"neighbours": 2, "layers": 1})
    try:
        sets = set()
        for _ in range(12):
            status, body = await post(http, peers[0].url, query())
            assert status == 200
            sets.add(tuple(sorted(body["moa_peers"])))
        assert len(sets) > 2  # 6 possible pairs; a fixed choice would give 1
    finally:
        for p in peers:
            await p.stop()


async def test_ring_and_graph_selection_are_fixed(standin: StandIn, http: aiohttp.ClientSession) -> None:
    ring = await start_peers(standin.url, NAMES, topology={"neighbours": 2, "layers": 1, "selection": "ring"})
    try:
        for _ in range(3):
            assert (await post(http, ring[3].url, query()))[1]["moa_peers"] == ["eps", "alpha"]
    finally:
        for p in ring:
            await p.stop()
    graph = [{"member": n, "neighbours": [m for m in reversed(NAMES) if m != n]} for n in NAMES]
    peers = await start_peers(
        standin.url, NAMES, topology={"neighbours": 2, "layers": 1, "selection": "graph", "graph": graph}
    )
    try:
        assert (await post(http, peers[0].url, query()))[1]["moa_peers"] == ["eps", "delta"]
        assert (await post(http, peers[4].url, query()))[1]["moa_peers"] == ["delta", "gamma"]
    finally:
        for p in peers:
            await p.stop()


async def test_down_peer_is_skipped_then_avoided(standin: StandIn, http: aiohttp.ClientSession) -> None:
    peers = await start_peers(
        standin.url, NAMES[:4], topology={"neighbours": 3, "layers": 2}, policy={"layerTimeoutSeconds": 2}
    )
    try:
        await peers[2].stop()  # gamma's peer process is gone: connection refused
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        status, body = await post(http, peers[0].url, query(moa_trace=True))
        assert status == 200, body
        assert loop.time() - t0 < 2  # refused fast, well within the layer deadline
        failed = [a for layer in body["moa_trace"]["layers"] for a in layer["agents"] if a["status"] != "ok"]
        assert {a["agent"] for a in failed} == {"gamma"}
        async with http.get(f"{peers[0].url}/status") as resp:
            status_body = await resp.json()
        assert {p["name"]: p["suspect"] for p in status_body["peers"]} == {
            "beta": False,
            "gamma": True,
            "delta": False,
        }
    finally:
        for p in (peers[0], peers[1], peers[3]):
            await p.stop()


async def test_losing_a_peer_mid_flight_loses_no_accepted_query(
    standin: StandIn, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """gamma runs as a real `kubemoe peer` process and is SIGKILLed while queries wait on it."""
    standin.service_time = 0.15
    peers = await start_peers(
        standin.url,
        NAMES[:4],
        topology={"neighbours": 2, "layers": 2},
        policy={"layerTimeoutSeconds": 3},
        processes=("gamma",),
        workdir=tmp_path,
    )
    gamma = next(p for p in peers if p.name == "gamma")
    try:
        survivors = [p for p in peers if p is not gamma]
        tasks = [
            asyncio.create_task(post(http, survivors[i % 3].url, query(f"q{i}", moa_trace=True)))
            for i in range(12)
        ]
        for _ in range(500):  # bounded: 5 s; until a call of gamma's is in flight at its model
            if standin.queues.get("gamma") and standin.queues["gamma"].length > 0:
                break
            await asyncio.sleep(0.01)
        assert standin.queues["gamma"].length > 0
        await gamma.kill()
        results = await asyncio.gather(*tasks)
        assert [s for s, _ in results] == [200] * 12, results
        lost = [
            a
            for _, body in results
            for layer in body["moa_trace"]["layers"]
            for a in layer["agents"]
            if a["agent"] == "gamma" and a["status"] == "error"
        ]
        assert lost  # some accepted queries did lose gamma's answer, and still completed
    finally:
        for p in peers:
            await p.stop()


async def test_own_model_down_a_neighbour_aggregates(standin: StandIn, http: aiohttp.ClientSession) -> None:
    peers = await start_peers(standin.url, NAMES[:3], topology={"neighbours": 2, "layers": 1})
    try:
        standin.down.add("alpha")
        status, body = await post(http, peers[0].url, query())
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] in ("beta says hi", "gamma says hi")
    finally:
        for p in peers:
            await p.stop()


async def test_vote_aggregation_makes_no_extra_call(standin: StandIn, http: aiohttp.ClientSession) -> None:
    standin.reply = lambda model, body: "4" if model != "beta" else "five"
    peers = await start_peers(
        standin.url, NAMES[:3], topology={"neighbours": 2, "layers": 1, "aggregation": "vote"}
    )
    try:
        status, body = await post(http, peers[1].url, query())
        assert status == 200
        assert body["choices"][0]["message"]["content"] == "4"
        assert len(standin.calls) == 3
    finally:
        for p in peers:
            await p.stop()


async def test_streaming_query(standin: StandIn, http: aiohttp.ClientSession) -> None:
    standin.reply = lambda model, body: f"{model} streams three words"
    peers = await start_peers(standin.url, NAMES[:3], topology={"neighbours": 1, "layers": 1})
    try:
        body = query(stream=True, stream_options={"include_usage": True})
        async with http.post(f"{peers[0].url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = [line[6:] for line in (await resp.text()).splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "alpha streams three words"
        assert chunks[-1]["usage"]["total_tokens"] == 15 * 3  # two proposals + the aggregation
    finally:
        for p in peers:
            await p.stop()


async def test_errors_are_openai_shaped(standin: StandIn, http: aiohttp.ClientSession) -> None:
    peers = await start_peers(standin.url, NAMES[:2], topology={"neighbours": 1, "layers": 1})
    try:
        status, body = await post(http, peers[0].url, {**query(), "model": "nope"})
        assert status == 404
        assert body["error"]["param"] == "model"
        async with http.post(f"{peers[0].url}/v1/chat/completions", data=b"{not json") as resp:
            assert resp.status == 400
        standin.down.update(NAMES[:2])
        status, body = await post(http, peers[0].url, query())
        assert status == 502
        assert "no agent answered" in body["error"]["message"]
    finally:
        for p in peers:
            await p.stop()
