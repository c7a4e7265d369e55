"""MoAPipeline: layers of proposer agents and an aggregator, served by the kubemoe router as one endpoint."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kubemoe.api.common import (
    DNS_LABEL,
    Condition,
    KubeModel,
    ResourceOverrides,
    Routing,
    SecretKeyRef,
    StatusModel,
)
from kubemoe.api.moemodel import ObjectMeta

#: The aggregate-and-synthesize prompt of the Mixture-of-Agents paper (Wang et al., 2024, arXiv 2406.04692),
#: as a jinja2 template over `responses` (the previous layer's answers, each with `agent` and `content`).
DEFAULT_AGGREGATOR_PROMPT = (
    "You have been provided with a set of responses from various open-source models to the latest user query. "
    "Your task is to synthesize these responses into a single, high-quality response. It is crucial to critically "
    "evaluate the information provided in these responses, recognizing that some of it may be biased or incorrect. "
    "Your response should not simply replicate the given answers but should offer a refined, accurate, and "
    "comprehensive reply to the instruction. Ensure your response is well-structured, coherent, and adheres to the "
    "highest standards of accuracy and reliability.\n\n"
    "Responses from models:\n"
    "{% for r in responses %}{{ loop.index }}. {{ r.content }}\n{% endfor %}"
)

#: What a proposer in layer 2 or later sees by default: its own system prompt plus the previous layer's answers.
DEFAULT_REFERENCE_PROMPT = (
    "{% if system_prompt %}{{ system_prompt }}\n\n{% endif %}"
    "{% if responses %}You have been provided with responses from other models to the latest user query. "
    "Use them as references; they may be wrong.\n\n"
    "{% for r in responses %}{{ loop.index }}. {{ r.content }}\n{% endfor %}{% endif %}"
)


class EndpointRef(KubeModel):
    """Any OpenAI-compatible server outside kubemoe."""

    url: str = Field(
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        max_length=2048,
        description="Base URL up to and including /v1, e.g. http://vllm.ml.svc:8000/v1.",
    )
    model: str = Field(
        min_length=1, max_length=256, description="Model name sent in the request's `model` field."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the API key, sent as a bearer token; never logged."
    )


class MoEModelRef(KubeModel):
    """A MoEModel in the pipeline's namespace."""

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Name of the MoEModel.")


_ONE_MODEL_RULE = {
    "rule": "has(self.moeModelRef) != has(self.endpoint)",
    "message": "set exactly one of moeModelRef and endpoint",
}


class _ModelReference(KubeModel):
    moe_model_ref: MoEModelRef | None = Field(default=None, description="A MoEModel in this namespace.")
    endpoint: EndpointRef | None = Field(default=None, description="An external OpenAI-compatible endpoint.")

    @model_validator(mode="after")
    def _exactly_one_model(self) -> _ModelReference:
        if (self.moe_model_ref is None) == (self.endpoint is None):
            raise ValueError("set exactly one of moeModelRef and endpoint")
        return self

    @property
    def model_key(self) -> str:
        """A stable name for the model this reference points at (capacity is counted per model)."""
        if self.moe_model_ref is not None:
            return f"moe:{self.moe_model_ref.name}"
        assert self.endpoint is not None
        return f"endpoint:{self.endpoint.url}#{self.endpoint.model}"


class Agent(_ModelReference):
    """One proposer: a model with its own system prompt and sampling settings."""

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Agent name, unique in the pipeline.")
    system_prompt: str | None = Field(
        default=None,
        max_length=32768,
        description="System prompt, a jinja2 template (sandboxed) over `responses` (previous layer) and `layer`.",
    )
    temperature: float = Field(default=0.7, ge=0, le=2, description="Sampling temperature.")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling.")
    max_tokens: int = Field(default=512, ge=1, le=131072, description="Most tokens this agent generates.")

    cel_rules: ClassVar[list[dict[str, str]]] = [_ONE_MODEL_RULE]


class Layer(KubeModel):
    """Agents that answer in parallel; their answers feed the next layer."""

    agents: list[Agent] = Field(min_length=1, max_length=16, description="Proposers of this layer.")


class Aggregator(_ModelReference):
    """The model that synthesizes the final layer's answers into the reply streamed to the client."""

    prompt_template: str = Field(
        default=DEFAULT_AGGREGATOR_PROMPT,
        max_length=32768,
        description="System prompt, a jinja2 template (sandboxed) over `responses`. Defaults to the MoA paper's "
        "aggregate-and-synthesize prompt.",
    )
    temperature: float = Field(default=0.7, ge=0, le=2, description="Sampling temperature.")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling.")
    max_tokens: int = Field(default=1024, ge=1, le=131072, description="Most tokens of the final answer.")

    cel_rules: ClassVar[list[dict[str, str]]] = [_ONE_MODEL_RULE]


class Policy(KubeModel):
    """Stragglers and failures."""

    layer_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Deadline of each layer; the layer moves on with what has arrived.",
    )
    min_responses: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Quorum: a layer moves on once this many agents have answered (the rest are cancelled). "
        "Unset: every agent of the layer (the deadline still applies). At most the agents of any layer.",
    )

    def quorum(self, agents: int) -> int:
        """Answers a layer of `agents` waits for: minResponses, or all of them when unset."""
        return agents if self.min_responses is None else min(self.min_responses, agents)

    on_agent_error: Literal["skip", "fail"] = Field(
        default="skip",
        description="skip: drop a failed agent's answer; fail: fail the request, naming the agent.",
    )


class RouterAlerts(KubeModel):
    """PrometheusRule alerts on the router."""

    enabled: bool = Field(default=True, description="Render the PrometheusRule.")
    error_rate_percent: float = Field(default=5.0, gt=0, le=100, description="Alert above this error rate.")
    p95_latency_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Alert above this p95 latency."
    )


class PipelineMonitoring(KubeModel):
    """Router alerts and scraping."""

    alerts: RouterAlerts = Field(default_factory=RouterAlerts, description="PrometheusRule alerts.")
    service_monitor: bool = Field(
        default=True, description="Render a ServiceMonitor for the router's /metrics."
    )


class ModelServiceRate(KubeModel):
    """How fast one model serves calls: a rate per replica, or a mean service time per call."""

    moe_model_ref: MoEModelRef | None = Field(default=None, description="A MoEModel of the pipeline.")
    endpoint: EndpointRef | None = Field(default=None, description="An external endpoint of the pipeline.")
    requests_per_second: float | None = Field(
        default=None, gt=0, description="Calls per second one replica completes (mu)."
    )
    service_time_seconds: float | None = Field(
        default=None, gt=0, description="Mean seconds per call (alpha); the rate is 1 / alpha."
    )
    replicas: int | None = Field(
        default=None, ge=1, description="Replicas serving this model; defaults to the MoEModel's, else 1."
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        _ONE_MODEL_RULE,
        {
            "rule": "has(self.requestsPerSecond) != has(self.serviceTimeSeconds)",
            "message": "set exactly one of requestsPerSecond and serviceTimeSeconds",
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> ModelServiceRate:
        if (self.moe_model_ref is None) == (self.endpoint is None):
            raise ValueError("set exactly one of moeModelRef and endpoint")
        if (self.requests_per_second is None) == (self.service_time_seconds is None):
            raise ValueError("set exactly one of requestsPerSecond and serviceTimeSeconds")
        return self


class Capacity(KubeModel):
    """Inputs of the stability check: the target rate and each model's service rate."""

    target_requests_per_second: float | None = Field(
        default=None,
        gt=0,
        description="Pipeline requests per second to sustain; the router sheds load above it.",
    )
    service_rates: list[ModelServiceRate] = Field(
        default_factory=list, max_length=64, description="Per-model service rate or service time."
    )


class MoAPipelineSpec(KubeModel):
    """Desired state of a Mixture-of-Agents pipeline."""

    layers: list[Layer] = Field(min_length=1, max_length=8, description="Proposer layers, in order.")
    aggregator: Aggregator = Field(description="The model that writes the final answer.")
    policy: Policy = Field(default_factory=Policy, description="Deadlines, quorum and error handling.")
    replicas: int = Field(default=1, ge=0, le=100, description="Router replicas.")
    routing: Routing | None = Field(
        default=None, description="Gateway API route. Unset: in-cluster Service only."
    )
    monitoring: PipelineMonitoring = Field(
        default_factory=PipelineMonitoring, description="Alerts and scraping."
    )
    capacity: Capacity = Field(default_factory=Capacity, description="Capacity inputs.")
    resources: ResourceOverrides = Field(
        default_factory=ResourceOverrides, description="Router CPU and memory."
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.policy.minResponses) || self.layers.all(l, size(l.agents) >= self.policy.minResponses)",
            "message": "policy.minResponses must not exceed the number of agents in any layer",
        },
        {
            "rule": "self.layers.all(l, l.agents.all(a, self.layers.map(m, m.agents.filter(b, b.name == a.name)"
            ".size()).sum() == 1))",
            "message": "agent names must be unique across the pipeline",
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> MoAPipelineSpec:
        for i, layer in enumerate(self.layers):
            if self.policy.min_responses is not None and len(layer.agents) < self.policy.min_responses:
                raise ValueError(
                    f"policy.minResponses ({self.policy.min_responses}) exceeds the {len(layer.agents)} agent(s) "
                    f"of layer {i + 1}"
                )
        names = [a.name for layer in self.layers for a in layer.agents]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"agent names must be unique across the pipeline: {', '.join(dupes)}")
        return self


class ResolvedAgent(StatusModel):
    """An agent with its model reference resolved to a URL."""

    layer: int = Field(description="Layer number, from 1; 0 for the aggregator.")
    name: str = Field(description="Agent name (`aggregator` for the aggregator).")
    url: str | None = Field(default=None, description="Base URL the router calls.")
    model: str | None = Field(default=None, description="Model name sent upstream.")
    ready: bool = Field(default=False, description="Whether the referenced model is ready.")


class ModelLoad(StatusModel):
    """Load one model sees per pipeline request, and its capacity."""

    model: str = Field(description="The model (moe:<name> or endpoint:<url>#<model>).")
    calls_per_request: int = Field(description="Agent slots using it, aggregator included (n).")
    replicas: int = Field(description="Replicas serving it (r).")
    requests_per_second_per_replica: float | None = Field(
        default=None, description="Service rate per replica (mu)."
    )
    max_stable_requests_per_second: float | None = Field(default=None, description="r * mu / n.")


class CapacityStatus(StatusModel):
    """Stability of the pipeline under its target load."""

    max_stable_requests_per_second: float | None = Field(
        default=None, description="Largest pipeline rate every model sustains: min over models of r*mu/n."
    )
    bottleneck: str | None = Field(default=None, description="The model that limits the rate.")
    models: list[ModelLoad] = Field(default_factory=list, description="Per-model load.")


class MoAPipelineStatus(StatusModel):
    """Observed state of a pipeline."""

    observed_generation: int | None = Field(
        default=None, description="Generation the status was computed from."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Progressing, Available, Ready, Degraded, CapacityOK."
    )
    endpoint: str | None = Field(
        default=None, description="In-cluster OpenAI-compatible base URL of the router."
    )
    ready_replicas: int | None = Field(default=None, description="Router replicas ready to serve.")
    agents: list[ResolvedAgent] = Field(
        default_factory=list, description="Agents with their resolved endpoints."
    )
    capacity: CapacityStatus | None = Field(default=None, description="Capacity figures.")
    layer_count: int | None = Field(default=None, description="Number of layers (printer column).")
    agent_count: int | None = Field(
        default=None, description="Number of agents, aggregator excluded (printer column)."
    )


class MoAPipeline(BaseModel):
    """A whole MoAPipeline object as read from YAML or the API server."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    KIND: ClassVar[str] = "MoAPipeline"

    api_version: Literal["kubemoe.io/v1alpha1"] = Field(default="kubemoe.io/v1alpha1", alias="apiVersion")
    kind: Literal["MoAPipeline"] = "MoAPipeline"
    metadata: ObjectMeta
    spec: MoAPipelineSpec
    status: MoAPipelineStatus | None = None

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> MoAPipeline:
        return cls.model_validate(obj)
