"""The playground page in headless Chromium: agent answers stream in before the final answer.

Needs Debian's `chromium` and the npm package `playwright-core` (no bundled browser is downloaded). Skipped,
with the reason, when either is missing. CI installs them with:

    apt-get install -y chromium
    npm install --prefix /opt/playwright playwright-core
    export PLAYWRIGHT_NODE_PATH=/opt/playwright/node_modules

`CHROMIUM` overrides the browser path (default: `chromium` on PATH).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
from conftest import RouterFactory, make_config
from moa_stub import Behavior, StubBackend

HERE = Path(__file__).parent
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    extra = os.environ.get("PLAYWRIGHT_NODE_PATH")
    if extra:
        env["NODE_PATH"] = os.pathsep.join(p for p in (extra, env.get("NODE_PATH")) if p)
    return env


def _playwright_core_missing() -> str | None:
    if NODE is None:
        return "node is not installed"
    probe = subprocess.run(
        [NODE, "-e", "require.resolve('playwright-core')"],
        env=_node_env(),
        capture_output=True,
        timeout=20,
        check=False,
    )
    return (
        None if probe.returncode == 0 else "npm package playwright-core not found (set PLAYWRIGHT_NODE_PATH)"
    )


_MISSING = (
    "chromium is not installed (apt-get install chromium)" if CHROMIUM is None else _playwright_core_missing()
)

if _MISSING is not None and os.environ.get("KUBEMOE_BROWSER") == "require":
    # CI installs the browser (.ci/run): there a missing one is a broken install step, not a reason to skip.
    raise RuntimeError(f"KUBEMOE_BROWSER=require but {_MISSING}")

needs_browser = pytest.mark.skipif(_MISSING is not None, reason=f"browser test skipped: {_MISSING}")


@needs_browser
async def test_playground_shows_agent_answers_then_streams_the_final_answer(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(
        a=Behavior(reply="alpha <b>not html</b>", latency=0.05),
        b=Behavior(reply="beta", latency=0.1),
        c=Behavior(reply="gamma", latency=0.6),
        d=Behavior(reply="delta", latency=0.6),
        agg=Behavior(reply="Paris is the capital of France.", chunk_delay=0.05),
    )
    base = await start_router(make_config(stub.url))
    proc = await asyncio.create_subprocess_exec(
        str(NODE),
        str(HERE / "playground_check.cjs"),
        base,
        str(CHROMIUM),
        env=_node_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=40)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, stderr.decode()
    seen = json.loads(stdout)

    assert seen["consoleErrors"] == []
    assert seen["foreignRequests"] == []  # nothing from a CDN or any other origin
    assert seen["finalWhenFirstAgentDone"] == ""  # the agent's answer arrived before the aggregator's
    assert seen["agentA"] == "alpha <b>not html</b>"  # shown as text, never as HTML
    assert seen["agentALatency"].endswith(" ms")
    assert seen["agentC"] == "gamma"
    assert seen["layers"] == 2
    assert seen["final"] == "Paris is the capital of France."
    assert "tokens in all" in seen["finalMeta"]
    assert seen["history"] == ["user: Capital of France?", "assistant: Paris is the capital of France."]
    # The conversation went through the router's streaming endpoint with the trace extension.
    assert stub.calls("agg")[0].body["stream"] is True


async def test_playground_is_served_with_a_strict_csp(stub: StubBackend, start_router: RouterFactory) -> None:
    base = await start_router(make_config(stub.url))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as resp:
            assert resp.status == 200
            assert "connect-src 'self'" in resp.headers["Content-Security-Policy"]
            assert "playground.js" in await resp.text()
        async with http.get(f"{base}/static/playground.js") as resp:
            assert resp.status == 200
