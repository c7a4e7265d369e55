"""Edited runs for the playground: a request may carry a changed copy of the pipeline's layers and aggregator.

The edit (`moa_pipeline` in a chat request, or the body of `POST /v1/playground/export`) is the `layers` and
`aggregator` of a MoAPipeline spec, validated by the CRD's own pydantic models (`Layer`, `Aggregator`,
`MoAPipelineSpec`; unknown fields are errors) and merged into the deployed spec. It is refused:

- 403 `permission_error`: the pipeline does not allow edits (`spec.playground.allowOverrides`, off by default;
  the router's config then has no `playground` section), or the edit names a model the deployed spec does not
  call. An edited agent is resolved through the deployed pipeline's own models (`PlaygroundConfig.models`):
  the URL and API key source always come from there, never from the request, so the router cannot be made to
  send its upstream keys anywhere else or to reach any other address.
- 400 `invalid_request_error`: the edit does not validate (the error's `param` names the field), or it exceeds
  `spec.playground` limits (layers, proposers, maxTokens), or a prompt template does not parse.

Metrics of edited runs count under the agent label `(playground)`: client-chosen agent names must not grow the
metrics' label sets without bound. This module is pure: no aiohttp.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from jinja2 import TemplateError
from pydantic import Field, ValidationError
from pydantic.alias_generators import to_camel

from kubemoe.api.common import KubeModel
from kubemoe.api.moapipeline import Agent, Aggregator, Layer, MoAPipeline, MoAPipelineSpec
from kubemoe.router import prompts
from kubemoe.router.config import PlaygroundConfig, ResolvedUpstream, RouterConfig
from kubemoe.router.errors import PermissionDeniedError, PromptTemplateError, RequestError
from kubemoe.router.pipeline import PipelineObserver

#: The metrics label edited runs' agents are counted under (not a DNS label, so no real agent has it).
EDITED_AGENT_LABEL = "(playground)"
PARAM = "moa_pipeline"
ALONE = "moa_alone"


class PipelineEdit(KubeModel):
    """What a playground edit may change: the proposer layers and the aggregator, as in the spec."""

    layers: list[Layer] = Field(min_length=1, max_length=8, description="Proposer layers, in order.")
    aggregator: Aggregator = Field(description="The model that writes the final answer.")


def _playground(config: RouterConfig, param: str = PARAM) -> PlaygroundConfig:
    if config.playground is None:
        raise PermissionDeniedError(
            f"pipeline {config.name!r} does not allow edited runs (spec.playground.allowOverrides is false)",
            param=param,
        )
    return config.playground


def _loc(prefix: str, loc: tuple[int | str, ...]) -> str:
    return ".".join([prefix, *(str(p) for p in loc)])


def _invalid(exc: ValidationError, prefix: str) -> RequestError:
    first = exc.errors(include_url=False)[0]
    param = _loc(prefix, first["loc"])
    why = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return RequestError(f"unknown field in the edited pipeline: {param}", param=param)
    return RequestError(f"invalid edited pipeline: {param}: {why}", param=param)


def _parse(raw: Any, prefix: str) -> PipelineEdit:
    if not isinstance(raw, dict):
        raise RequestError(f"{prefix} must be an object with layers and aggregator", param=prefix)
    try:
        return PipelineEdit.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc, prefix) from None


def _check_limits(pg: PlaygroundConfig, edit: PipelineEdit, prefix: str) -> None:
    limits = pg.spec.playground
    if len(edit.layers) > limits.max_layers:
        raise RequestError(
            f"the edited pipeline has {len(edit.layers)} layers; this pipeline allows at most "
            f"{limits.max_layers} (spec.playground.maxLayers)",
            param=f"{prefix}.layers",
        )
    agents = sum(len(layer.agents) for layer in edit.layers)
    if agents > limits.max_agents:
        raise RequestError(
            f"the edited pipeline has {agents} proposers; this pipeline allows at most {limits.max_agents} "
            "(spec.playground.maxAgents)",
            param=f"{prefix}.layers",
        )
    slots = [
        (f"{prefix}.layers.{i}.agents.{j}.maxTokens", a.max_tokens)
        for i, layer in enumerate(edit.layers)
        for j, a in enumerate(layer.agents)
    ] + [(f"{prefix}.aggregator.maxTokens", edit.aggregator.max_tokens)]
    for param, tokens in slots:
        if tokens > limits.max_tokens:
            raise RequestError(
                f"{param} is {tokens}; this pipeline allows at most {limits.max_tokens} (spec.playground.maxTokens)",
                param=param,
            )


def _check_models(pg: PlaygroundConfig, edit: PipelineEdit, prefix: str) -> None:
    refs: list[tuple[str, Agent | Aggregator]] = [
        (f"{prefix}.layers.{i}.agents.{j}", a)
        for i, layer in enumerate(edit.layers)
        for j, a in enumerate(layer.agents)
    ] + [(f"{prefix}.aggregator", edit.aggregator)]
    _check_refs(pg, refs)


def _check_refs(pg: PlaygroundConfig, refs: list[tuple[str, Agent | Aggregator]]) -> None:
    """Every model must be one the deployed spec calls, spelled as the spec spells it (same key Secret)."""
    deployed = {
        r.model_key: r for r in [*(a for layer in pg.spec.layers for a in layer.agents), pg.spec.aggregator]
    }
    for param, ref in refs:
        known = deployed.get(ref.model_key)
        if known is None:
            raise PermissionDeniedError(
                f"{param} names a model this pipeline does not call ({ref.model_key}); an edited run may use "
                f"only the pipeline's own models: {', '.join(sorted(deployed))}",
                param=param,
            )
        ours, theirs = ref.endpoint, known.endpoint
        if ours is not None and theirs is not None and ours.api_key_secret_ref != theirs.api_key_secret_ref:
            raise PermissionDeniedError(
                f"{param}.endpoint.apiKeySecretRef differs from the pipeline's for {ref.model_key}; an edited "
                "run uses the pipeline's own key for it",
                param=f"{param}.endpoint.apiKeySecretRef",
            )


def _check_templates(edit: PipelineEdit, prefix: str) -> None:
    """Each prompt parses and trial-renders in the sandbox (as the router's config does at startup), with
    the error naming the field."""
    fields = [
        (f"{prefix}.layers.{i}.agents.{j}.systemPrompt", a.name, a.system_prompt)
        for i, layer in enumerate(edit.layers)
        for j, a in enumerate(layer.agents)
    ] + [(f"{prefix}.aggregator.promptTemplate", "aggregator", edit.aggregator.prompt_template)]
    for param, agent, source in fields:
        _check_template(param, agent, source)


def _check_template(param: str, agent: str, source: str | None) -> None:
    if not source:
        return
    try:
        prompts.check_template(source)
        prompts.trial_render(source, agent=agent)
    except TemplateError as exc:
        raise RequestError(f"{param}: template does not parse: {exc}", param=param) from None
    except PromptTemplateError as exc:
        raise RequestError(f"{param}: {exc.message}", param=param) from None


def edited_spec(config: RouterConfig, raw: Any, *, prefix: str = PARAM) -> MoAPipelineSpec:
    """The deployed spec with the edit's layers and aggregator, validated as a whole (unique names, quorum,
    topology members); raises 403/400 `RouterError`s as the module docstring lists."""
    pg = _playground(config)
    edit = _parse(raw, prefix)
    _check_limits(pg, edit, prefix)
    _check_models(pg, edit, prefix)
    _check_templates(edit, prefix)
    merged = pg.spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    merged.update(edit.model_dump(by_alias=True, mode="json", exclude_none=True))
    try:
        return MoAPipelineSpec.model_validate(merged)
    except ValidationError as exc:
        raise _invalid(exc, prefix) from None


def edited_config(config: RouterConfig, raw: Any) -> RouterConfig:
    """The router config an edited run uses: the deployed one with the edit's layers and aggregator, each
    model resolved to the deployed pipeline's URL and key source."""
    return _built(config, _playground(config), edited_spec(config, raw))


def alone_config(config: RouterConfig, raw: Any) -> RouterConfig:
    """`moa_alone`: one of the pipeline's models asked on its own, the baseline a run is compared with.

    It is an agent as in the spec (name, model reference, system prompt, sampling), checked like an edit (403
    for a model the pipeline does not call, 400 for a bad field or over the limits), and run as the aggregator
    of a pipeline with no proposer layers: the client's conversation goes to the model with the agent's own
    system prompt only (none of the MoA prompts), and the trace has that one call."""
    pg = _playground(config, ALONE)
    if not isinstance(raw, dict):
        raise RequestError(
            f"{ALONE} must be an agent object (name, moeModelRef or endpoint, sampling)", param=ALONE
        )
    try:
        agent = Agent.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc, ALONE) from None
    if agent.max_tokens > pg.spec.playground.max_tokens:
        raise RequestError(
            f"{ALONE}.maxTokens is {agent.max_tokens}; this pipeline allows at most {pg.spec.playground.max_tokens} "
            "(spec.playground.maxTokens)",
            param=f"{ALONE}.maxTokens",
        )
    _check_refs(pg, [(ALONE, agent)])
    _check_template(f"{ALONE}.systemPrompt", agent.name, agent.system_prompt)
    sampling = agent.model_dump(by_alias=True, mode="json", include={"moe_model_ref", "endpoint", "temperature", "top_p", "max_tokens"}, exclude_none=True)  # fmt: skip
    spec = pg.spec.model_copy(
        update={
            "layers": [Layer(agents=[agent])],
            "aggregator": Aggregator.model_validate(
                {**sampling, "promptTemplate": agent.system_prompt or ""}
            ),
        }
    )
    built = _built(config, pg, spec)
    return built.model_copy(
        update={"layers": [], "aggregator": built.aggregator.model_copy(update={"name": agent.name})}
    )


def _built(config: RouterConfig, pg: PlaygroundConfig, spec: MoAPipelineSpec) -> RouterConfig:
    models = {m.key: m for m in pg.models}

    def resolve(ref: Agent | Aggregator) -> ResolvedUpstream:
        m = models[ref.model_key]  # present: _check_models refused every other key
        return ResolvedUpstream(
            url=m.url, model=m.model, api_key_file=m.api_key_file, api_key_env=m.api_key_env
        )

    try:
        built = RouterConfig.from_spec(
            config.name, spec, resolve, keys_dir=config.auth.keys_dir, limits=config.limits
        )
    except ValidationError as exc:  # a template that does not parse or escapes the sandbox
        first = exc.errors(include_url=False)[0]
        why = str(first["msg"]).removeprefix("Value error, ")
        # The config's field names, spelled as in the edit (system_prompt -> systemPrompt).
        param = _loc(PARAM, tuple(to_camel(p) if isinstance(p, str) else p for p in first["loc"]))
        raise RequestError(f"invalid edited pipeline: {param}: {why}", param=param) from None
    return built.model_copy(
        update={"auth": config.auth, "reference_prompt": config.reference_prompt, "playground": pg}
    )


def describe(config: RouterConfig) -> dict[str, Any]:
    """`GET /v1/playground`: the editable part of the deployed spec, its models and limits; with edits off,
    only that they are off (the spec's prompts and model references are then not shown)."""
    if config.playground is None:
        return {
            "pipeline": config.name,
            "allowOverrides": False,
            "message": "edited runs are off for this pipeline (spec.playground.allowOverrides is false)",
        }
    pg = config.playground
    spec = pg.spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    refs = [*(a for layer in pg.spec.layers for a in layer.agents), pg.spec.aggregator]
    models: dict[str, dict[str, Any]] = {}
    for ref in refs:
        entry: dict[str, Any] = {"key": ref.model_key}
        if ref.moe_model_ref is not None:
            entry["moeModelRef"] = ref.moe_model_ref.model_dump(by_alias=True, mode="json")
        if ref.endpoint is not None:
            entry["endpoint"] = ref.endpoint.model_dump(by_alias=True, mode="json", exclude_none=True)
        models.setdefault(ref.model_key, entry)
    return {
        "pipeline": config.name,
        "allowOverrides": True,
        "limits": pg.spec.playground.model_dump(by_alias=True, mode="json", exclude={"allow_overrides"}),
        "models": list(models.values()),
        "edit": {"layers": spec["layers"], "aggregator": spec["aggregator"]},
    }


def export_manifest(config: RouterConfig, raw: bytes) -> dict[str, Any]:
    """`POST /v1/playground/export`: `{"name": ..., "moa_pipeline": edit}` -> a whole MoAPipeline manifest
    (defaults left out) and its YAML, ready for `kubectl apply -n <namespace>`."""
    _playground(config)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise RequestError("request body is not valid JSON") from None
    if not isinstance(body, dict) or set(body) - {"name", PARAM}:
        raise RequestError(f"the export body is an object with `name` and `{PARAM}` only", param=None)
    name = body.get("name", config.name)
    if not isinstance(name, str):
        raise RequestError("name must be a string", param="name")
    spec = edited_spec(config, body.get(PARAM))
    manifest = {
        "apiVersion": "kubemoe.io/v1alpha1",
        "kind": "MoAPipeline",
        "metadata": {"name": name},
        "spec": spec.model_dump(by_alias=True, mode="json", exclude_defaults=True),
    }
    # The manifest's metadata is checked like a MoAPipeline's: a name kubectl would refuse is a 400 here.
    try:
        MoAPipeline.model_validate(manifest)
    except ValidationError as exc:
        raise _invalid(exc, "manifest") from None
    return {"manifest": manifest, "yaml": yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True)}


class EditedRunObserver:
    """Forwards an edited run's metrics with every agent counted as `(playground)` (bounded label sets)."""

    def __init__(self, inner: PipelineObserver) -> None:
        self.inner = inner

    def agent_finished(
        self,
        *,
        agent: str,
        layer: int,
        seconds: float,
        error_reason: str | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self.inner.agent_finished(
            agent=EDITED_AGENT_LABEL,
            layer=layer,
            seconds=seconds,
            error_reason=error_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def quorum_short_circuit(self, *, layer: int) -> None:
        self.inner.quorum_short_circuit(layer=layer)

    def layer_deadline(self, *, layer: int) -> None:
        self.inner.layer_deadline(layer=layer)
