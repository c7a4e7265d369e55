"""The router's configuration: one MoAPipeline with every model reference resolved to a URL.

Pure pydantic (no aiohttp, no I/O beyond `from_file`): the renderer imports this module to write the router's
ConfigMap, and the router reads the same file back with `RouterConfig.from_file`. Field names are camelCase in
the file and snake_case in Python, like the CRs; unknown fields are errors (a typo must not silently fall back
to a default). Templates are parsed and trial-rendered in the sandbox at load, so a broken or escaping
template stops the router at startup rather than on the first request.

API keys are never in this file: an upstream names a mounted Secret file (`apiKeyFile`) or an environment
variable (`apiKeyEnv`), and the router reads the key when it calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubemoe.api.moapipeline import (
    DEFAULT_AGGREGATOR_PROMPT,
    DEFAULT_REFERENCE_PROMPT,
    Agent,
    Aggregator,
    MoAPipelineSpec,
    Policy,
)
from kubemoe.router import prompts
from kubemoe.router.errors import PromptTemplateError

__all__ = [
    "DEFAULT_AGGREGATOR_PROMPT",
    "DEFAULT_REFERENCE_PROMPT",
    "AgentConfig",
    "AggregatorConfig",
    "ConfigError",
    "LayerConfig",
    "Limits",
    "Policy",
    "ResolvedUpstream",
    "RouterConfig",
    "UpstreamConfig",
    "UpstreamLimits",
]

_URL = r"^https?://[^\s/]+(/[^\s]*)?$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_MODEL_NAME = r"^[^\s]+$"


class ConfigError(ValueError):
    """The config file cannot be read or is invalid; the message names the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class UpstreamConfig(_Strict):
    """Fields shared by proposers and the aggregator: where to call, with which key and sampling settings."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63, description="Agent name.")
    url: str = Field(pattern=_URL, max_length=2048, description="Base URL up to and including /v1.")
    model: str = Field(min_length=1, max_length=256, description="Model name sent upstream.")
    api_key_file: str | None = Field(
        default=None, description="File holding the bearer token (mounted Secret)."
    )
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME, description="Env var holding the token.")
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int = Field(default=512, ge=1, le=131072)

    @model_validator(mode="after")
    def _one_key_source(self) -> UpstreamConfig:
        if self.api_key_file is not None and self.api_key_env is not None:
            raise ValueError(f"agent {self.name!r}: set at most one of apiKeyFile and apiKeyEnv")
        return self

    @property
    def model_key(self) -> str:
        """Capacity key, in the same form as `kubemoe.api` uses for external endpoints."""
        return f"endpoint:{self.url}#{self.model}"


class AgentConfig(UpstreamConfig):
    """A proposer."""

    system_prompt: str | None = Field(
        default=None, max_length=32768, description="Sandboxed jinja2 template."
    )

    @field_validator("system_prompt")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            _check_parses(value)
        return value


class AggregatorConfig(UpstreamConfig):
    """The model that writes the final answer; always called with `stream: true`."""

    name: str = Field(default="aggregator", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    max_tokens: int = Field(default=1024, ge=1, le=131072)
    prompt_template: str = Field(default=DEFAULT_AGGREGATOR_PROMPT, max_length=32768)

    @field_validator("prompt_template")
    @classmethod
    def _parses(cls, value: str) -> str:
        _check_parses(value)
        return value


class LayerConfig(_Strict):
    """Proposers that answer in parallel."""

    agents: list[AgentConfig] = Field(min_length=1, max_length=16)


class UpstreamLimits(_Strict):
    """Connection pool and timeouts, per upstream host."""

    pool_size: int = Field(
        default=32, ge=1, le=1024, description="Most open connections to one upstream host."
    )
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    read_timeout_seconds: float = Field(
        default=300.0, gt=0, le=3600, description="Longest silence while reading one upstream answer."
    )


class Limits(_Strict):
    """What the router accepts before it sheds load."""

    max_request_body_bytes: int = Field(
        default=1 << 20, ge=1024, le=1 << 30, description="Larger bodies get 413."
    )
    max_concurrent_requests: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Requests in flight beyond this get 429. The controller derives it from the pipeline's "
        "stable rate (Little's law: stable rate x typical latency).",
    )
    retry_after_seconds: int = Field(default=1, ge=1, le=3600, description="Retry-After sent with 429.")
    upstream: UpstreamLimits = Field(default_factory=UpstreamLimits)


@dataclass(frozen=True)
class ResolvedUpstream:
    """Where an agent's model reference points, as the controller resolved it."""

    url: str
    model: str
    api_key_file: str | None = None
    api_key_env: str | None = None


class RouterConfig(_Strict):
    """The resolved pipeline. `name` is served as the only model of `/v1/models`."""

    name: str = Field(min_length=1, max_length=253, pattern=_MODEL_NAME, description="Pipeline (model) name.")
    layers: list[LayerConfig] = Field(min_length=1, max_length=8)
    aggregator: AggregatorConfig
    reference_prompt: str = Field(
        default=DEFAULT_REFERENCE_PROMPT,
        max_length=32768,
        description="Wraps each proposer's own prompt to show it the previous layer's answers.",
    )
    policy: Policy = Field(default_factory=Policy)
    limits: Limits = Field(default_factory=Limits)

    @field_validator("reference_prompt")
    @classmethod
    def _parses(cls, value: str) -> str:
        _check_parses(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> RouterConfig:
        for i, layer in enumerate(self.layers, start=1):
            if self.policy.min_responses is not None and len(layer.agents) < self.policy.min_responses:
                raise ValueError(
                    f"policy.minResponses ({self.policy.min_responses}) exceeds the {len(layer.agents)} "
                    f"agent(s) of layer {i}"
                )
        names = [a.name for layer in self.layers for a in layer.agents] + [self.aggregator.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"agent names must be unique across the pipeline and aggregator: {', '.join(dupes)}"
            )
        # Trial renders: a template that escapes the sandbox or names an unknown variable fails here.
        try:
            prompts.trial_render(self.reference_prompt, agent="referencePrompt", reference=True)
            for layer in self.layers:
                for agent in layer.agents:
                    if agent.system_prompt:
                        prompts.trial_render(agent.system_prompt, agent=agent.name)
            prompts.trial_render(self.aggregator.prompt_template, agent=self.aggregator.name)
        except PromptTemplateError as exc:
            raise ValueError(exc.message) from exc
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> RouterConfig:
        """Load a JSON or YAML file (YAML is a superset of JSON, so one parser reads both)."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read router config: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: router config must be a mapping")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{path}: invalid router config: {exc}") from exc

    def to_file_dict(self) -> dict[str, Any]:
        """The config as written to the ConfigMap: camelCase, unset optionals left out."""
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)

    @classmethod
    def from_spec(
        cls,
        name: str,
        spec: MoAPipelineSpec,
        resolve: Callable[[Agent | Aggregator], ResolvedUpstream],
        *,
        limits: Limits | None = None,
    ) -> RouterConfig:
        """Build the config from a MoAPipeline spec; `resolve` maps each model reference to URL and key."""

        def upstream_fields(ref: Agent | Aggregator) -> dict[str, Any]:
            target = resolve(ref)
            return {
                "url": target.url,
                "model": target.model,
                "api_key_file": target.api_key_file,
                "api_key_env": target.api_key_env,
                "temperature": ref.temperature,
                "top_p": ref.top_p,
                "max_tokens": ref.max_tokens,
            }

        agg = spec.aggregator
        return cls(
            name=name,
            layers=[
                LayerConfig(
                    agents=[
                        AgentConfig(name=a.name, system_prompt=a.system_prompt, **upstream_fields(a))
                        for a in layer.agents
                    ]
                )
                for layer in spec.layers
            ],
            aggregator=AggregatorConfig(prompt_template=agg.prompt_template, **upstream_fields(agg)),
            policy=spec.policy,
            limits=limits or Limits(),
        )

    def slot_model_keys(self) -> tuple[list[list[str]], str]:
        """Per layer, each agent's model key; and the aggregator's. Input of `capacity.count_slots`."""
        return [[a.model_key for a in layer.agents] for layer in self.layers], self.aggregator.model_key


def _check_parses(source: str) -> None:
    try:
        prompts.check_template(source)
    except TemplateError as exc:
        raise ValueError(f"template does not parse: {exc}") from exc
