"""The playground's Export on a real API server: the MoAPipeline the router exports for an edited pipeline is
admitted by the generated CRD (schema and CEL), server-side dry run and for real, and what the API server
stores is the edit. A router (in this process, on loopback) renders the export, as the page asks it to."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from kubemoe.api.moapipeline import Agent, Aggregator, MoAPipeline, MoAPipelineSpec
from kubemoe.router.config import ResolvedUpstream, RouterConfig
from kubemoe.router.server import build_app

from .harness import KubeCluster

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: Where the references would point in a cluster; nothing is called here (exporting calls no model).
UNUSED = "http://127.0.0.1:9/v1"

DEPLOYED: dict[str, Any] = {
    "layers": [
        {
            "agents": [
                {"name": "qwen", "moeModelRef": {"name": "qwen"}},
                {"name": "llama", "moeModelRef": {"name": "llama"}},
            ]
        },
    ],
    "aggregator": {
        "endpoint": {
            "url": "https://api.example.com/v1",
            "model": "big-model",
            "apiKeySecretRef": {"name": "hosted-key", "key": "token"},
        },
    },
    "policy": {"layerTimeoutSeconds": 30},
    "playground": {"allowOverrides": True, "maxLayers": 4},
}

EDIT: dict[str, Any] = {
    "layers": [
        {
            "agents": [
                {
                    "name": "qwen",
                    "moeModelRef": {"name": "qwen"},
                    "temperature": 1.1,
                    "systemPrompt": "Be terse.",
                },
                {"name": "llama", "moeModelRef": {"name": "llama"}, "topP": 0.9},
            ]
        },
        {"agents": [{"name": "qwen-2", "moeModelRef": {"name": "qwen"}, "maxTokens": 256}]},
    ],
    "aggregator": {
        "moeModelRef": {"name": "llama"},
        "promptTemplate": "Merge:\n{% for r in responses %}- {{ r.content }}\n{% endfor %}",
        "temperature": 0.3,
    },
}


@pytest.fixture(scope="module")
def crds(kube_cluster: KubeCluster) -> KubeCluster:
    kube_cluster.kubectl("apply", "--server-side", "--field-manager=kubemoe-tests", "-f", str(ROOT / "crds"))
    kube_cluster.wait_established("moapipelines.kubemoe.io")
    return kube_cluster


CLIENT_KEY = "sk-e2e-playground"


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[str]:
    """The router as the operator renders it for DEPLOYED, with one client key (auth is on by default)."""
    keys = tmp_path / "client-keys"
    keys.mkdir()
    (keys / "tester").write_text(CLIENT_KEY)

    def resolve(ref: Agent | Aggregator) -> ResolvedUpstream:
        model = ref.moe_model_ref.name if ref.moe_model_ref else "big-model"
        return ResolvedUpstream(url=UNUSED, model=model)

    spec = MoAPipelineSpec.model_validate(DEPLOYED)
    config = RouterConfig.from_spec("moa-demo", spec, resolve, keys_dir=str(keys))
    runner = web.AppRunner(build_app(config), handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def _export(base: str, edit: dict[str, Any]) -> str:
    body = {"name": "moa-demo-edited", "moa_pipeline": edit}
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/playground/export", json=body, headers=headers) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
        text: str = body["yaml"]
        return text


async def test_an_exported_pipeline_is_accepted_by_the_api_server(
    crds: KubeCluster, namespace: str, router: str
) -> None:
    text = await _export(router, EDIT)
    doc = yaml.safe_load(text)
    MoAPipeline.model_validate(doc)  # the unit-level check, on the same text

    dry = crds.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=text)
    assert "moapipeline.kubemoe.io/moa-demo-edited created (server dry run)" in dry.stdout
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=text)
    stored = json.loads(
        crds.kubectl("get", "moapipeline", "moa-demo-edited", "-n", namespace, "-o", "json").stdout
    )
    spec = stored["spec"]
    assert [[a["name"] for a in layer["agents"]] for layer in spec["layers"]] == [
        ["qwen", "llama"],
        ["qwen-2"],
    ]
    assert spec["layers"][0]["agents"][0]["temperature"] == 1.1
    assert spec["layers"][0]["agents"][0]["systemPrompt"] == "Be terse."
    assert spec["layers"][1]["agents"][0]["maxTokens"] == 256
    assert spec["aggregator"]["moeModelRef"] == {"name": "llama"}
    assert spec["aggregator"]["promptTemplate"] == EDIT["aggregator"]["promptTemplate"]
    # The rest of the deployed spec came along, and the API server filled in the CRD's defaults.
    assert spec["policy"]["layerTimeoutSeconds"] == 30
    assert spec["playground"] == {"allowOverrides": True, "maxLayers": 4, "maxAgents": 8, "maxTokens": 2048}
    assert spec["auth"]["enabled"] is True
    # What the API server stores validates with the pydantic model too (defaults and all).
    MoAPipeline.model_validate(stored)


async def test_the_api_server_refuses_what_the_router_would(
    crds: KubeCluster, namespace: str, router: str
) -> None:
    """The control: the same apply fails for a manifest the router refuses (here: a duplicate agent name,
    changed after export), so the test above can fail."""
    doc = yaml.safe_load(await _export(router, EDIT))
    doc["spec"]["layers"][1]["agents"][0]["name"] = "qwen"
    proc = crds.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False
    )
    assert proc.returncode != 0
    assert "agent names must be unique across the pipeline" in proc.stderr
