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
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from moa_stub import Behavior, StubBackend
from playground_fixtures import playground_config
from router_harness import RouterFactory, make_config

from kubemoe.api.moapipeline import MoAPipeline

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


async def _drive(base: str, mode: str) -> dict[str, Any]:
    """Run playground_check.cjs in `mode` against the router at `base`; what it saw, as JSON."""
    proc = await asyncio.create_subprocess_exec(
        str(NODE),
        str(HERE / "playground_check.cjs"),
        base,
        str(CHROMIUM),
        mode,
        env=_node_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, stderr.decode()
    seen: dict[str, Any] = json.loads(stdout)
    return seen


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
    seen = await _drive(base, "chat")

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


@needs_browser
async def test_playground_edits_the_pipeline_runs_twice_compares_and_exports(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    stub.behaviors.update(
        a=Behavior(reply="alpha", latency=0.05),
        b=Behavior(reply="beta", latency=0.05),
        c=Behavior(reply="Paris (merged).", chunk_delay=0.02),
        agg=Behavior(reply="deployed aggregator"),
    )
    # Prices for models a and c only: the runs that also call b say their estimate is partial.
    prices = {
        "a": {"inputUsdPerMillionTokens": 1.0, "outputUsdPerMillionTokens": 2.0},
        "c": {"inputUsdPerMillionTokens": 3.0, "outputUsdPerMillionTokens": 4.0},
    }
    base = await start_router(playground_config(stub.url, prices=prices))
    seen = await _drive(base, "edit")

    # The only console errors: the browser's own line for the one refused (400) run at the end.
    assert [e for e in seen["consoleErrors"] if "status of 400" not in e] == []
    assert len(seen["consoleErrors"]) <= 1
    assert seen["foreignRequests"] == []
    assert seen["layerEditors"] == 2
    assert seen["editLimits"] == "at most 3 layers, 8 agents, 2048 max tokens"
    assert seen["layersRun1"] == 3  # the added layer ran
    # What the router sent: the edits, run twice (temperature 1.3, then 0.2) with the same question.
    a_calls = stub.calls("a")[:2]  # the third is the model alone
    assert [c.body["temperature"] for c in a_calls] == [1.3, 0.2]
    assert {c.system_prompt.strip() for c in a_calls} == {"Be brief, A."}
    assert [c.body["messages"][-1]["content"] for c in a_calls] == ["Capital of France?"] * 2
    new_agent = [c for c in stub.calls("b") if c.body.get("top_p") == 0.5]
    assert len(new_agent) == 2  # layer 3's new agent, on model b, once per run
    # Model c serves layer 2's agent (deployed settings) and the edited aggregator (its prompt and temperature).
    merged = [c for c in stub.calls("c") if c.system_prompt.startswith("Merge")]
    assert [(c.body["temperature"], c.system_prompt.strip()) for c in merged] == [
        (0.1, "Merge 1 answers.")
    ] * 2
    assert len(stub.calls("c")) == 4
    assert stub.calls("agg") == []
    # Two runs side by side: answer, per-agent latency and tokens, total latency.
    assert seen["compared"] == 2
    for run in seen["runs"]:
        assert run["pipeline"] == "edited: 3 layers · 4 agents · aggregator c"
        assert run["answer"] == "Paris (merged)."
        assert run["agentA"].startswith("L1 a (a) ok · ")
        assert run["agentA"].endswith(" tok")
        assert " ms" in run["agentA"]
        assert run["newAgent"].startswith("L3 agent-4 (b) ok")
        assert run["aggregator"].startswith("aggregator (c) ok")
        # 5 calls, of which b's two have no price: a's and c's three are priced at the stand-in's usage.
        assert re.fullmatch(
            r"\d+ ms total · \d+ tokens · ≈ \$0\.\d{6} \(2 of 5 calls unpriced\)", run["total"]
        ), run["total"]
    # Run 2's column says what changed since run 1: the temperature, nothing else.
    assert seen["changes"] == "1 change(s) since run 1layers.1.agents.1.temperature: 1.3 → 0.2"
    # Its timeline: the layers one after another, then the aggregator, on one clock.
    rows = seen["timeline"]
    assert [r["label"] for r in rows] == ["L1 a", "L1 b", "L2 c", "L3 agent-4", "aggregator"]
    # Each bar starts where the trace says (start_ms on the run's clock): a layer's calls together.
    assert rows[0]["left"] == rows[1]["left"]
    assert rows[1]["left"] < rows[2]["left"] < rows[3]["left"] < rows[4]["left"] < 100
    assert all(r["width"] > 0 and r["left"] + r["width"] <= 100.01 for r in rows)
    assert seen["history"] == ["user: Capital of France?", "assistant: Paris (merged)."]
    # Model a alone: one call with the question as the client sent it, priced at a's rates.
    alone = seen["alone"]
    assert alone["pipeline"] == "a alone"
    assert alone["answer"] == "alpha"
    assert alone["aggregator"].startswith("alone (a) ok"), alone
    a_alone = stub.calls("a")[-1]
    assert a_alone.body["messages"] == [{"role": "user", "content": "Capital of France?"}]
    # The stand-in reports 11 prompt and 7 completion tokens per call.
    assert alone["total"].endswith(f"· ≈ ${(11 * 1.0 + 7 * 2.0) / 1e6:.6f}"), alone["total"]
    assert alone["timeline"] == ["alone"]
    assert seen["comparedAfterUntick"] == 2  # run 2 and the model alone
    # The export is a whole MoAPipeline with the edits (the second temperature), valid for the CRD models.
    assert seen["downloadText"] == seen["yaml"]
    doc = yaml.safe_load(seen["yaml"])
    pipeline = MoAPipeline.model_validate(doc)
    assert pipeline.metadata.name == "moa-edited"
    assert seen["downloadName"] == "moa-edited.yaml"
    assert [[a.name for a in layer.agents] for layer in pipeline.spec.layers] == [
        ["a", "b"],
        ["c"],
        ["agent-4"],
    ]
    assert pipeline.spec.layers[0].agents[0].temperature == 0.2
    assert pipeline.spec.layers[2].agents[0].top_p == 0.5
    assert pipeline.spec.aggregator.endpoint is not None
    assert pipeline.spec.aggregator.endpoint.model == "c"
    assert pipeline.spec.aggregator.prompt_template == "Merge {{ responses | length }} answers."
    # The template error is shown as the router words it; nothing more was called.
    assert "template does not parse" in seen["templateError"]
    assert len(stub.calls("a")) == 3  # two runs and the model alone


async def test_playground_is_served_with_a_strict_csp(stub: StubBackend, start_router: RouterFactory) -> None:
    base = await start_router(make_config(stub.url))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as resp:
            assert resp.status == 200
            assert "connect-src 'self'" in resp.headers["Content-Security-Policy"]
            assert "playground.js" in await resp.text()
        async with http.get(f"{base}/static/playground.js") as resp:
            assert resp.status == 200
