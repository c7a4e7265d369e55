"""The MoA router on this machine, against STUB backends: one chat completion through the sample pipeline.

The stubs (`kubemoe.testing.stub_backend`, the same the router tests use) stand in for vLLM servers, which cannot run here (no GPU, no
weights): they answer with canned text after a short, model-specific delay. Everything else is real: the
pipeline is the sample MoAPipeline resolved by the same code the operator uses, the router is the real
aiohttp server, and the request goes over a real socket on 127.0.0.1 with the trace extension on.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.documents import load_documents
from kubemoe.router.config import ResolvedUpstream, RouterConfig
from kubemoe.router.server import build_app
from kubemoe.testing.stub_backend import Behavior, StubBackend

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = ROOT / "manifests" / "samples" / "moa-pipeline.yaml"
STUB_REPLIES = {
    "mixtral-8x7b": ("[stub mixtral-8x7b] Kubernetes schedules pods onto nodes with free GPUs.", 0.3),
    "mixtral-8x22b": (
        "[stub mixtral-8x22b] The scheduler filters nodes by resources and taints, then scores them.",
        0.5,
    ),
    "meta-llama/Meta-Llama-3-70B-Instruct": (
        "[stub llama-3-70b] Pods request nvidia.com/gpu; nodes advertise it.",
        0.4,
    ),
}
QUESTION = "How does Kubernetes place a GPU workload?"


async def run() -> None:
    stub = StubBackend(behaviors={m: Behavior(reply=r, latency=t) for m, (r, t) in STUB_REPLIES.items()})
    stub_url = await stub.start()
    (pipeline,) = [d for d in load_documents(SAMPLE.read_text(), SAMPLE.name) if isinstance(d, MoAPipeline)]
    served = {"mixtral-8x7b": "mixtral-8x7b", "mixtral-8x22b": "mixtral-8x22b"}

    def resolve(ref):  # type: ignore[no-untyped-def]
        model = ref.endpoint.model if ref.endpoint else served[ref.moe_model_ref.name]
        return ResolvedUpstream(url=stub_url, model=model)  # every model answered by the stub

    # Client auth is on, as in the cluster: one demo key, in a directory laid out like the mounted Secret.
    keys_dir = Path(tempfile.mkdtemp(prefix="kubemoe-demo-keys-"))
    demo_key = f"sk-demo-{secrets.token_hex(8)}"
    (keys_dir / "demo").write_text(demo_key)
    config = RouterConfig.from_spec(pipeline.metadata.name, pipeline.spec, resolve, keys_dir=str(keys_dir))
    runner = web.AppRunner(build_app(config), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"router for pipeline {config.name!r} on http://{host}:{port}/v1 (backends: STUBS at {stub_url})")
    try:
        async with aiohttp.ClientSession() as session:
            body = {
                "model": config.name,
                "messages": [{"role": "user", "content": QUESTION}],
                "moa_trace": True,
            }
            auth = {"Authorization": f"Bearer {demo_key}"}
            async with session.post(
                f"http://{host}:{port}/v1/chat/completions", json=body, headers=auth
            ) as resp:
                answer = await resp.json()
        print(f"\nuser: {QUESTION}")
        for layer in answer["moa_trace"]["layers"]:
            print(f"\nlayer {layer['layer']} ({layer.get('outcome', '')}):")
            for agent in layer["agents"]:
                print(
                    f"  {agent['agent']:<15} {agent['status']:<8} {agent['latency_ms']:>6.0f} ms  {agent.get('content', '')}"
                )
        aggregator = answer["moa_trace"].get("aggregator") or {}
        print(
            f"\naggregator ({aggregator.get('latency_ms', 0):.0f} ms): {answer['choices'][0]['message']['content']}"
        )
        usage = answer["usage"]
        print(
            f"usage over all calls: {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens"
        )
    finally:
        await runner.cleanup()
        await stub.close()
        shutil.rmtree(keys_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(run())
