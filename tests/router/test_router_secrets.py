"""Upstream API keys: sent as bearer tokens, never echoed to clients, never logged, rotatable."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from moa_stub import Behavior, StubBackend
from router_harness import RouterFactory, make_config
from test_router_pipeline import _post

from kubemoe.router.upstream import ApiKey

FILE_KEY = "sk-file-0123456789abcdef"
ENV_KEY = "sk-env-fedcba9876543210"


async def test_keys_are_sent_but_never_echoed_or_logged(
    stub: StubBackend,
    start_router: RouterFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "api-key"
    key_file.write_text(FILE_KEY + "\n")  # mounted Secrets often end with a newline
    monkeypatch.setenv("AGENT_B_KEY", ENV_KEY)
    # Both agents fail with a body that quotes the Authorization header back, as careless backends do.
    stub.behaviors.update(
        a=Behavior(status=401, error_message="invalid key", echo_auth_in_error=True),
        b=Behavior(status=500, error_message=f"bad key {ENV_KEY}", echo_auth_in_error=True),
    )
    config = make_config(
        stub.url,
        [("a", "b")],
        agent_extra={"a": {"apiKeyFile": str(key_file)}, "b": {"apiKeyEnv": "AGENT_B_KEY"}},
    )
    base = await start_router(config)

    for body in ({}, {"moa_trace": True}, {"stream": True, "moa_trace": True}):
        status, result = await _post(base, body)
        # A traced stream has sent its headers already; the error arrives as its last event.
        assert status == (200 if body.get("stream") else 502)
        text = str(result)
        assert "invalid key" in text  # the backend's message is kept...
        assert "***" in text  # ...with the key redacted
        assert FILE_KEY not in text
        assert ENV_KEY not in text

    assert stub.calls("a")[0].authorization == f"Bearer {FILE_KEY}"
    assert stub.calls("b")[0].authorization == f"Bearer {ENV_KEY}"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "agent a" in logged  # failures are logged...
    assert FILE_KEY not in logged  # ...without the keys
    assert ENV_KEY not in logged
    assert FILE_KEY not in repr(config)


def test_api_key_repr_hides_the_value_and_rotation_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("first-key")
    key = ApiKey(file=str(path))
    assert key.get() == "first-key"
    assert "first-key" not in repr(key)
    path.write_text("second-key")
    os.utime(path, (1, 1))  # a new mtime, as when the kubelet swaps the Secret's files
    assert key.get() == "second-key"


async def test_unreadable_key_file_fails_the_agent_without_leaking(
    stub: StubBackend, start_router: RouterFactory, tmp_path: Path
) -> None:
    missing = tmp_path / "not-mounted"
    config = make_config(
        stub.url, [("a",)], policy={"onAgentError": "fail"}, agent_extra={"a": {"apiKeyFile": str(missing)}}
    )
    base = await start_router(config)
    status, body = await _post(base, {})
    assert status == 502
    assert "agent 'a'" in body["error"]["message"]
    assert "cannot read API key" in body["error"]["message"]
    assert stub.received == []
