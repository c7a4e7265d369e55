"""A decentralised MoA peer's configuration: its own model, the other peers, and the topology it follows.

Pure pydantic, like `router.config`: the renderer writes this file into a ConfigMap and the peer reads it
back with `PeerConfig.from_file`. The gossip settings (`neighbours`, `layers`, `aggregation`, `selection`,
`graph`, `admission`) are the MoAPipeline's `spec.topology` fields, reused as they are, so the CR and the
peer cannot drift apart. Every peer of a pipeline gets the same file except `self`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kubemoe.api.moapipeline import (
    DEFAULT_AGGREGATOR_PROMPT,
    DEFAULT_REFERENCE_PROMPT,
    PeerAdmission,
    Policy,
    Topology,
)
from kubemoe.router import prompts
from kubemoe.router.config import AgentConfig, ClientAuthConfig, Limits, load_config_file
from kubemoe.router.errors import PromptTemplateError

#: Where a peer answers other peers: the same OpenAI API under its own prefix, so a peer call (one model
#: call, never gossiped further) can never be mistaken for a user query (which is gossiped).
PEER_PREFIX = "/peer/v1"

_URL = r"^https?://[^\s/]+(/[^\s]*)?$"


class _Strict(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class PeerRef(_Strict):
    """Another peer: its member name and its base URL (scheme, host, port; no path)."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    url: str = Field(pattern=_URL, max_length=2048)

    @property
    def peer_api(self) -> str:
        return f"{self.url.rstrip('/')}{PEER_PREFIX}"


class PeerConfig(_Strict):
    """One peer. `model` is the member agent this peer fronts (its backend, prompt and sampling)."""

    pipeline: str = Field(min_length=1, max_length=253, pattern=r"^[^\s]+$", description="Model name served.")
    model: AgentConfig = Field(description="This peer's member: its OpenAI-compatible backend and settings.")
    peers: list[PeerRef] = Field(default_factory=list, max_length=64, description="The other peers.")
    topology: Topology = Field(default_factory=lambda: Topology(mode="decentralised"))
    aggregator_prompt: str = Field(default=DEFAULT_AGGREGATOR_PROMPT, max_length=32768)
    reference_prompt: str = Field(default=DEFAULT_REFERENCE_PROMPT, max_length=32768)
    aggregator_max_tokens: int = Field(default=1024, ge=1, le=131072)
    policy: Policy = Field(default_factory=Policy)
    #: Required, as in the router's config: a peer is open only where its config says `enabled: false`.
    auth: ClientAuthConfig = Field(description="Client keys on /v1/ and /peer/v1/ (see peer.auth).")
    limits: Limits = Field(default_factory=Limits)
    #: Seconds a peer that failed is left out of random selection (it is still tried when nothing else is).
    suspect_seconds: float = Field(default=5.0, ge=0, le=3600)
    seed: int | None = Field(default=None, description="Seed of random selection (tests, benchmarks).")

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def pool_size(self) -> int:
        """Connections per upstream host, by the router's rule: `limits.upstream.poolSize`, or
        maxConcurrentRequests x the calls one query can have open to one host (one per layer, plus the
        aggregation), so the concurrency limit, not the pool, refuses excess load."""
        explicit = self.limits.upstream.pool_size
        calls = self.topology.layers + 1
        return explicit if explicit is not None else self.limits.max_concurrent_requests * calls

    @property
    def admission(self) -> PeerAdmission:
        return self.topology.admission

    @model_validator(mode="after")
    def _check(self) -> PeerConfig:
        names = [p.name for p in self.peers]
        if self.name in names:
            raise ValueError(f"peers must not list this peer itself ({self.name})")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"peer names must be unique: {', '.join(dupes)}")
        self.topology.check_members([self.name, *names])
        if self.policy.min_responses is not None and self.policy.min_responses > self.topology.neighbours + 1:
            raise ValueError(
                f"policy.minResponses ({self.policy.min_responses}) exceeds the k+1 = "
                f"{self.topology.neighbours + 1} answers of a layer"
            )
        try:
            for source in (self.aggregator_prompt, self.reference_prompt):
                prompts.check_template(source)
            prompts.trial_render(self.reference_prompt, agent="referencePrompt", reference=True)
            prompts.trial_render(self.aggregator_prompt, agent="aggregatorPrompt")
        except TemplateError as exc:
            raise ValueError(f"template does not parse: {exc}") from exc
        except PromptTemplateError as exc:
            raise ValueError(exc.message) from exc
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> PeerConfig:
        return load_config_file(cls, path, "peer config")

    def to_file_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)
