"""A pipeline spec whose agents call the stand-in backend (`moa_stub`), with playground edits allowed, and
the router config the operator would render from it (`RouterConfig.from_spec`)."""

from __future__ import annotations

from typing import Any

import aiohttp

from kubemoe.api.moapipeline import MoAPipelineSpec
from kubemoe.router.config import ResolvedUpstream, RouterConfig


def endpoint(url: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"endpoint": {"url": url, "model": model, **extra}}


def spec_dict(url: str, *, allow: bool = True, auth: bool = False, **playground: Any) -> dict[str, Any]:
    """Layers [[a, b], [c]] and aggregator `agg`, each agent calling the stub model named like it."""
    return {
        "layers": [
            {"agents": [{"name": "a", **endpoint(url, "a")}, {"name": "b", **endpoint(url, "b")}]},
            {"agents": [{"name": "c", "systemPrompt": "You are c.", **endpoint(url, "c")}]},
        ],
        "aggregator": {"temperature": 0.2, **endpoint(url, "agg")},
        "auth": {"enabled": auth},
        "playground": {"allowOverrides": allow, **playground},
    }


def playground_config(
    url: str,
    *,
    allow: bool = True,
    keys_dir: str | None = None,
    key_files: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    **playground: Any,
) -> RouterConfig:
    """The config rendered from `spec` (default `spec_dict`); `key_files` maps a model to its API key file."""
    parsed = MoAPipelineSpec.model_validate(
        spec or spec_dict(url, allow=allow, auth=keys_dir is not None, **playground)
    )
    files = key_files or {}

    def resolve(ref: Any) -> ResolvedUpstream:
        e = ref.endpoint
        return ResolvedUpstream(url=e.url, model=e.model, api_key_file=files.get(e.model))

    return RouterConfig.from_spec("moa-test", parsed, resolve, keys_dir=keys_dir)


def question(**extra: Any) -> dict[str, Any]:
    """A chat request to the `moa-test` pipeline, with any extension fields (`moa_pipeline`, `moa_alone`)."""
    return {"model": "moa-test", "messages": [{"role": "user", "content": "Capital of France?"}], **extra}


async def post(base: str, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST JSON over a real socket; the status and the JSON answer."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}{path}", json=body, headers=headers or {}) as resp,
    ):
        return resp.status, await resp.json()
