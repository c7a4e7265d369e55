"""The router's configuration: one MoAPipeline with every model reference resolved to a URL.

Pure pydantic (no aiohttp, no I/O beyond `from_file`): the renderer imports this module to write the router's
ConfigMap, and the router reads the same file back with `RouterConfig.from_file`. Field names are camelCase in
the file and snake_case in Python, like the CRs; unknown fields are errors (a typo must not silently fall back
to a default). Templates are parsed and trial-rendered in the sandbox at load, so a broken or escaping
template stops the router at startup rather than on the first request.

Client keys are not in this file either: `auth.keysDir` names the directory the client keys Secret is
mounted at. Upstream API keys are never in this file: an upstream names a mounted Secret file (`apiKeyFile`) or an environment
variable (`apiKeyEnv`), and the router reads the key when it calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

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
from kubemoe.api.moapipeline import model_key as spec_model_key
from kubemoe.router import prompts
from kubemoe.router.errors import PromptTemplateError

__all__ = [
    "DEFAULT_AGGREGATOR_PROMPT",
    "DEFAULT_MAX_CONCURRENT_REQUESTS",
    "DEFAULT_REFERENCE_PROMPT",
    "AgentConfig",
    "AggregatorConfig",
    "ClientAuthConfig",
    "ConfigError",
    "LayerConfig",
    "Limits",
    "PlaygroundConfig",
    "PlaygroundModel",
    "Policy",
    "ResolvedUpstream",
    "RouterConfig",
    "UpstreamConfig",
    "UpstreamLimits",
]

M = TypeVar("M", bound=BaseModel)

_URL = r"^https?://[^\s/]+(/[^\s]*)?$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_MODEL_NAME = r"^[^\s]+$"


class ConfigError(ValueError):
    """The config file cannot be read or is invalid; the message names the file."""


def load_config_file(model: type[M], path: str | Path, what: str) -> M:
    """Read and validate a JSON or YAML config file (YAML is a superset of JSON, so one parser reads both);
    `what` ("router config", "peer config") names it in the ConfigError."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a mapping")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid {what}: {exc}") from exc


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

    pool_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Most open connections to one upstream host. Unset: derived from maxConcurrentRequests "
        "(see RouterConfig.pool_size), so an admitted request never queues for a connection.",
    )
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    read_timeout_seconds: float = Field(
        default=300.0, gt=0, le=3600, description="Longest silence while reading one upstream answer."
    )


#: Requests in flight per router process when nothing better is known (no target rate in the spec).
DEFAULT_MAX_CONCURRENT_REQUESTS = 512


class Limits(_Strict):
    """What the router accepts before it sheds load."""

    max_request_body_bytes: int = Field(
        default=1 << 20, ge=1024, le=1 << 30, description="Larger bodies get 413."
    )
    max_concurrent_requests: int = Field(
        default=DEFAULT_MAX_CONCURRENT_REQUESTS,
        ge=1,
        le=100_000,
        description="Requests in flight beyond this get 429. With a targetRequestsPerSecond the renderer sets "
        "it by Little's law: the target rate x the longest a request lives (one layer deadline per layer plus "
        "the aggregator's), divided among the router replicas (`render.moapipeline.default_limits`).",
    )
    retry_after_seconds: int = Field(default=1, ge=1, le=3600, description="Retry-After sent with 429.")
    upstream: UpstreamLimits = Field(default_factory=UpstreamLimits)


class ClientAuthConfig(_Strict):
    """Client keys: a directory with one file per key (file name = key name, content = key), i.e. a mounted
    Secret. Required in every config, so a router is open only where its config says `enabled: false`."""

    enabled: bool = Field(description="Require `Authorization: Bearer <key>` on /v1/.")
    keys_dir: str | None = Field(default=None, min_length=1, description="Directory of key files.")
    requests_per_second: float | None = Field(default=None, gt=0, le=100_000, description="Per-key rate.")
    burst: int | None = Field(default=None, ge=1, le=100_000, description="Per-key burst.")
    revoked_keys: list[str] = Field(
        default_factory=list, max_length=256, description="Names refused with 403."
    )
    reload_seconds: float = Field(
        default=1.0, gt=0, le=3600, description="How often the key files are checked for changes."
    )

    @model_validator(mode="after")
    def _dir_when_enabled(self) -> ClientAuthConfig:
        if self.enabled and self.keys_dir is None:
            raise ValueError("auth.keysDir is required when auth is enabled")
        return self


@dataclass(frozen=True)
class ResolvedUpstream:
    """Where an agent's model reference points, as the controller resolved it."""

    url: str
    model: str
    api_key_file: str | None = None
    api_key_env: str | None = None


class PlaygroundModel(_Strict):
    """A model the deployed spec calls, under its `model_key`, resolved like its agents' references."""

    key: str = Field(min_length=1, max_length=4096, description="moe:<name> or endpoint:<url>#<model>.")
    url: str = Field(pattern=_URL, max_length=2048)
    model: str = Field(min_length=1, max_length=256)
    api_key_file: str | None = None
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME)


class PlaygroundConfig(_Strict):
    """Present only when the spec sets `playground.allowOverrides`: the deployed spec (edited runs are
    validated against it and exported from it) and the only models an edited run may call."""

    spec: MoAPipelineSpec
    models: list[PlaygroundModel] = Field(min_length=1, max_length=256)

    @model_validator(mode="after")
    def _covers_spec(self) -> PlaygroundConfig:
        known = {m.key for m in self.models}
        refs = [a for layer in self.spec.layers for a in layer.agents] + [self.spec.aggregator]
        missing = sorted({r.model_key for r in refs} - known)
        if missing:
            raise ValueError(f"playground.models lacks models the spec calls: {', '.join(missing)}")
        return self


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
    auth: ClientAuthConfig
    playground: PlaygroundConfig | None = Field(
        default=None, description="Edited runs (kubemoe.router.playground); absent: refused with 403."
    )

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
        """Load a JSON or YAML file."""
        return load_config_file(cls, path, "router config")

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
        keys_dir: str | None,
        limits: Limits | None = None,
    ) -> RouterConfig:
        """Build the config from a MoAPipeline spec; `resolve` maps each model reference to URL and key, and
        `keys_dir` is where the client keys Secret is mounted (ignored when the spec turns auth off)."""

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
        playground = None
        if spec.playground.allow_overrides:
            refs: list[Agent | Aggregator] = [a for layer in spec.layers for a in layer.agents] + [agg]
            targets = {spec_model_key(r.moe_model_ref, r.endpoint): resolve(r) for r in refs}
            playground = PlaygroundConfig(
                spec=spec,
                models=[
                    PlaygroundModel(
                        key=k,
                        url=t.url,
                        model=t.model,
                        api_key_file=t.api_key_file,
                        api_key_env=t.api_key_env,
                    )
                    for k, t in targets.items()
                ],
            )
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
            auth=ClientAuthConfig(
                enabled=spec.auth.enabled,
                keys_dir=keys_dir if spec.auth.enabled else None,
                requests_per_second=spec.auth.requests_per_second,
                burst=spec.auth.burst,
                revoked_keys=spec.auth.revoked_keys,
            ),
            playground=playground,
        )

    def calls_per_host(self) -> int:
        """The most upstream calls one request has open to one host at once (a layer's agents run together;
        the aggregator runs alone)."""
        most = 1
        for layer in self.layers:
            hosts = [urlsplit(a.url).netloc for a in layer.agents]
            most = max(most, *(hosts.count(h) for h in hosts))
        return most

    @property
    def pool_size(self) -> int:
        """Connections per upstream host: `limits.upstream.poolSize`, or maxConcurrentRequests x
        `calls_per_host()`: every admitted request gets its connections at once, so the concurrency limit,
        not the pool, is where excess load is refused (with a 429 rather than a silent queue)."""
        explicit = self.limits.upstream.pool_size
        return (
            explicit if explicit is not None else self.limits.max_concurrent_requests * self.calls_per_host()
        )


def _check_parses(source: str) -> None:
    try:
        prompts.check_template(source)
    except TemplateError as exc:
        raise ValueError(f"template does not parse: {exc}") from exc
