"""Client keys on a peer's two doors, over real loopback sockets: user queries (`/v1/`) as on the router,
and gossip (`/peer/v1/`), which carries the caller's own key (kubemoe.peer.auth)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kubemoe.peer.config import PeerConfig
from kubemoe.peer.server import build_app
from kubemoe.testing.standin import PeerProcess, StandIn, start_peers

NAMES = ["alpha", "beta", "gamma"]
KEY = "k-e2e-0123456789"


def keys_dir(tmp_path: Path, name: str, keys: dict[str, str]) -> Path:
    d = tmp_path / name
    d.mkdir()
    for key_name, value in keys.items():
        (d / key_name).write_text(value + "\n")
    return d


def auth(directory: Path, **extra: Any) -> dict[str, Any]:
    return {"auth": {"enabled": True, "keysDir": str(directory), **extra}}


def query(**extra: Any) -> dict[str, Any]:
    return {"model": "moa-peers", "messages": [{"role": "user", "content": "2+2?"}], **extra}


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], key: str | None, path: str = "/v1"
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with http.post(f"{url}{path}/chat/completions", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def stop(peers: list[PeerProcess]) -> None:
    for p in peers:
        await p.stop()


async def test_user_queries_need_a_known_key_and_gossip_forwards_it(
    standin: StandIn, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    d = keys_dir(tmp_path, "keys", {"team-a": KEY, "old": "k-revoked-000"})
    peers = await start_peers(
        standin.url,
        NAMES,
        topology={"neighbours": 2, "layers": 2},
        extra=auth(d, revokedKeys=["old"]),
    )
    try:
        status, body = await post(http, peers[0].url, query(), None)
        assert status == 401
        assert body["error"]["code"] == "missing_api_key"
        status, body = await post(http, peers[0].url, query(), "k-wrong")
        assert status == 401
        assert body["error"]["code"] == "invalid_api_key"
        status, _ = await post(http, peers[0].url, query(), "k-revoked-000")
        assert status == 403
        assert standin.calls == []  # nothing refused reached a model
        status, body = await post(http, peers[0].url, query(moa_trace=True), KEY)
        assert status == 200, body
        # Both neighbours accepted the forwarded key: each answered in both layers.
        assert sorted(body["moa_peers"]) == ["beta", "gamma"]
        assert standin.count("beta") == 2
        assert standin.count("gamma") == 2
        outcomes = [a["status"] for layer in body["moa_trace"]["layers"] for a in layer["agents"]]
        assert outcomes == ["ok"] * 6
    finally:
        await stop(peers)


async def test_peer_calls_without_a_key_are_refused_and_never_reach_the_model(
    standin: StandIn, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    d = keys_dir(tmp_path, "keys", {"team-a": KEY})
    peers = await start_peers(standin.url, NAMES[:2], topology={"neighbours": 1, "layers": 1}, extra=auth(d))
    try:
        for key in (None, "k-wrong"):
            status, body = await post(http, peers[1].url, query(), key, path="/peer/v1")
            assert status == 401, body
        assert standin.count("beta") == 0
        status, body = await post(http, peers[1].url, query(), KEY, path="/peer/v1")
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == "beta says hi"
    finally:
        await stop(peers)


async def serve(config: dict[str, Any]) -> PeerProcess:
    runner = web.AppRunner(
        build_app(PeerConfig.model_validate(config)), handler_cancellation=True, shutdown_timeout=0.2
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return PeerProcess(config["model"]["name"], runner, f"http://{host}:{port}")


async def test_a_neighbour_that_does_not_know_the_key_is_skipped_and_the_query_still_answered(
    standin: StandIn, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # gamma's keys differ (a rotation its kubelet has not synced yet): it refuses alpha's forwarded key.
    shared = keys_dir(tmp_path, "shared", {"team-a": KEY})
    other = keys_dir(tmp_path, "other", {"team-b": "k-other-0000"})
    one = {"neighbours": 0, "layers": 1}
    peers = await start_peers(standin.url, ["beta"], topology=one, extra=auth(shared))
    peers += await start_peers(standin.url, ["gamma"], topology=one, extra=auth(other))
    try:
        alpha = await serve(
            {
                "pipeline": "moa-peers",
                "model": {"name": "alpha", "url": standin.url, "model": "alpha", "maxTokens": 64},
                "peers": [{"name": p.name, "url": p.url} for p in peers],
                "topology": {"mode": "decentralised", "neighbours": 2, "layers": 1},
                "policy": {"layerTimeoutSeconds": 5},
                **auth(shared),
            }
        )
        peers.append(alpha)
        status, body = await post(http, alpha.url, query(moa_trace=True), KEY)
        assert status == 200, body
        assert standin.count("beta") == 1
        assert standin.count("gamma") == 0  # refused at gamma's door
        agents = {a["agent"]: a for a in body["moa_trace"]["layers"][0]["agents"]}
        assert "401" in str(agents["gamma"].get("error")), agents["gamma"]
        assert agents["beta"]["status"] == "ok"
        assert agents["gamma"]["status"] == "error"
    finally:
        await stop(peers)


async def test_with_auth_off_both_doors_are_open(standin: StandIn, http: aiohttp.ClientSession) -> None:
    peers = await start_peers(standin.url, NAMES[:2], topology={"neighbours": 1, "layers": 1})
    try:
        status, _ = await post(http, peers[0].url, query(), None)
        assert status == 200
        status, _ = await post(http, peers[1].url, query(), None, path="/peer/v1")
        assert status == 200
    finally:
        await stop(peers)


@pytest.mark.parametrize("files", [{}, {"empty": ""}])
async def test_not_ready_without_keys(
    standin: StandIn, http: aiohttp.ClientSession, tmp_path: Path, files: dict[str, str]
) -> None:
    d = keys_dir(tmp_path, "keys", files)
    peers = await start_peers(standin.url, NAMES[:2], topology={"neighbours": 1, "layers": 1}, extra=auth(d))
    try:
        async with http.get(f"{peers[0].url}/readyz") as resp:
            assert resp.status == 503
            assert "no client keys" in (await resp.json())["reason"]
        (d / "team-a").write_text(KEY)  # re-read within reloadSeconds, no restart
        for _ in range(40):
            async with http.get(f"{peers[0].url}/readyz") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert resp.status == 200
    finally:
        await stop(peers)
