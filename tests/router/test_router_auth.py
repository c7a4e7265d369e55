"""Client keys over real sockets: 401/403 in OpenAI's format, rotation without a restart (in the kubelet's
own Secret layout), per-key rate limits, and the key's name, never the key, in logs and metrics."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from moa_stub import StubBackend
from router_harness import RouterFactory, make_config
from test_router_pipeline import USER_PARAM, _post

from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.render.moapipeline import CLIENT_KEYS_DIR, render_moapipeline

TEAM_A = "sk-client-a-5d8e1f0c9b7a6234"
TEAM_B = "sk-client-b-0f1e2d3c4b5a6978"


class SecretVolume:
    """A directory laid out as the kubelet mounts a Secret: `..<timestamp>/` holds the files, `..data` links
    to it, and each key is a link `name -> ..data/name`. `update` swaps `..data` atomically, like the kubelet."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir()
        self.generation = 0

    def update(self, data: dict[str, str]) -> None:
        self.generation += 1
        payload = self.root / f"..2026_12_01_00_00_00.{self.generation}"
        payload.mkdir()
        for name, value in data.items():
            (payload / name).write_text(value + "\n")
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(payload.name)
        os.replace(tmp, self.root / "..data")
        for name in data:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        for stale in os.listdir(self.root):
            if not stale.startswith(".") and stale not in data:
                os.unlink(self.root / stale)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}{path}", headers=headers) as resp:
        return resp.status, await resp.text()


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    vol = SecretVolume(tmp_path / "client-keys")
    vol.update({"team-a": TEAM_A, "team-b": TEAM_B})
    return vol


def _config(url: str, volume: SecretVolume, **auth: Any) -> Any:
    return make_config(
        url, [("a",)], auth={"enabled": True, "keysDir": str(volume.root), "reloadSeconds": 0.05, **auth}
    )


async def test_requests_need_a_known_key_and_get_openai_errors(
    stub: StubBackend, start_router: RouterFactory, volume: SecretVolume, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = await start_router(_config(stub.url, volume))

    status, body = await _post(base, {})
    assert status == 401
    assert body["error"]["code"] == "missing_api_key"
    assert body["error"]["type"] == "invalid_request_error"
    status, body = await _post(base, {}, headers=_auth("sk-guess-123456"))
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert "sk-guess" not in str(body)  # a wrong key is not repeated back
    assert stub.received == []  # nothing reached a backend

    status, body = await _post(base, {}, headers=_auth(TEAM_A))
    assert status == 200, body
    # The official client sees OpenAI's exception types.
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="moa-test", messages=USER_PARAM)
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=TEAM_B, max_retries=0) as client:
        done = await client.chat.completions.create(model="moa-test", messages=USER_PARAM)
        assert done.choices[0].message.content
        assert [m.id async for m in client.models.list()] == ["moa-test"]

    # /v1/models needs a key too; probes, metrics and the schema do not.
    assert (await _get(base, "/v1/models"))[0] == 401
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert (await _get(base, path))[0] == 200, path
    status, metrics = await _get(base, "/metrics")
    assert 'kubemoe_router_client_requests_total{code="200",key="team-a"} 1.0' in metrics
    assert 'kubemoe_router_client_requests_total{code="200",key="team-b"} 1.0' in metrics
    assert 'kubemoe_router_auth_failures_total{reason="invalid_api_key"} 2.0' in metrics
    for text, where in ((metrics, "metrics"), (caplog.text, "logs")):
        assert TEAM_A not in text, where
        assert TEAM_B not in text, where
    assert "team-a" in caplog.text  # the loaded keys are logged by name


async def test_a_revoked_key_gets_403(
    stub: StubBackend, start_router: RouterFactory, volume: SecretVolume
) -> None:
    base = await start_router(_config(stub.url, volume, revokedKeys=["team-b"]))
    status, body = await _post(base, {}, headers=_auth(TEAM_B))
    assert status == 403
    assert body["error"]["code"] == "permission_denied"
    assert "'team-b'" in body["error"]["message"]
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=TEAM_B, max_retries=0) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="moa-test", messages=USER_PARAM)
    assert (await _post(base, {}, headers=_auth(TEAM_A)))[0] == 200


async def test_keys_rotate_without_a_restart(
    stub: StubBackend, start_router: RouterFactory, volume: SecretVolume
) -> None:
    base = await start_router(_config(stub.url, volume))
    assert (await _post(base, {}, headers=_auth(TEAM_A)))[0] == 200
    rotated = "sk-client-a-rotated-77aa01"
    volume.update({"team-a": rotated})  # team-a rotated, team-b removed
    await asyncio.sleep(0.2)  # > reloadSeconds
    assert (await _post(base, {}, headers=_auth(TEAM_A)))[0] == 401
    assert (await _post(base, {}, headers=_auth(TEAM_B)))[0] == 401
    assert (await _post(base, {}, headers=_auth(rotated)))[0] == 200


async def test_per_key_rate_limit(
    stub: StubBackend, start_router: RouterFactory, volume: SecretVolume
) -> None:
    base = await start_router(_config(stub.url, volume, requestsPerSecond=0.5, burst=2))
    codes = [(await _post(base, {}, headers=_auth(TEAM_A)))[0] for _ in range(3)]
    assert codes == [200, 200, 429]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/v1/chat/completions",
            json={"model": "moa-test", "messages": [{"role": "user", "content": "x"}]},
            headers=_auth(TEAM_A),
        ) as resp,
    ):
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"  # one token at 0.5/s
        assert "'team-a'" in (await resp.json())["error"]["message"]
    # Another key has its own bucket.
    assert (await _post(base, {}, headers=_auth(TEAM_B)))[0] == 200


async def test_not_ready_until_the_secret_has_keys(
    stub: StubBackend, start_router: RouterFactory, tmp_path: Path
) -> None:
    missing = tmp_path / "client-keys"  # an optional Secret volume that does not exist yet
    config = make_config(
        stub.url, [("a",)], auth={"enabled": True, "keysDir": str(missing), "reloadSeconds": 0.05}
    )
    base = await start_router(config)
    status, text = await _get(base, "/readyz")
    assert status == 503
    assert "no client keys" in text
    assert (await _post(base, {}, headers=_auth(TEAM_A)))[0] == 401
    SecretVolume(missing).update({"team-a": TEAM_A})
    await asyncio.sleep(0.2)
    assert (await _get(base, "/readyz"))[0] == 200
    assert (await _post(base, {}, headers=_auth(TEAM_A)))[0] == 200


def _pipeline(**auth: Any) -> MoAPipeline:
    spec: dict[str, Any] = {
        "layers": [{"agents": [{"name": "a", "moeModelRef": {"name": "m"}}]}],
        "aggregator": {"moeModelRef": {"name": "m"}},
    }
    if auth:
        spec["auth"] = auth
    return MoAPipeline.model_validate({"metadata": {"name": "moa", "namespace": "ml"}, "spec": spec})


def test_renderer_mounts_the_client_keys_secret_by_default() -> None:
    import yaml

    objs = {o["kind"]: o for o in render_moapipeline(_pipeline())}
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    volume = {
        "name": "client-keys",
        "secret": {"secretName": "moa-client-keys", "defaultMode": 0o440, "optional": True},
    }
    assert volume in pod["volumes"]
    mount = {"name": "client-keys", "mountPath": CLIENT_KEYS_DIR, "readOnly": True}
    assert mount in pod["containers"][0]["volumeMounts"]
    auth = yaml.safe_load(objs["ConfigMap"]["data"]["router.yaml"])["auth"]
    assert auth == {"enabled": True, "keysDir": CLIENT_KEYS_DIR, "revokedKeys": [], "reloadSeconds": 1.0}

    named = {o["kind"]: o for o in render_moapipeline(_pipeline(secretName="keys", requestsPerSecond=5))}
    assert named["Deployment"]["spec"]["template"]["spec"]["volumes"][-1]["secret"]["secretName"] == "keys"
    assert yaml.safe_load(named["ConfigMap"]["data"]["router.yaml"])["auth"]["requestsPerSecond"] == 5

    off = {o["kind"]: o for o in render_moapipeline(_pipeline(enabled=False))}
    assert all(v["name"] != "client-keys" for v in off["Deployment"]["spec"]["template"]["spec"]["volumes"])
    assert yaml.safe_load(off["ConfigMap"]["data"]["router.yaml"])["auth"] == {
        "enabled": False,
        "revokedKeys": [],
        "reloadSeconds": 1.0,
    }


def test_burst_needs_a_rate() -> None:
    with pytest.raises(ValueError, match="burst needs requestsPerSecond"):
        _pipeline(burst=3)
