"""MoAPipeline: layers of proposer agents and an aggregator, served by the kubemoe router as one endpoint."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from kubemoe.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
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


def model_key(moe_model_ref: MoEModelRef | None, endpoint: EndpointRef | None) -> str:
    """The one spelling of a model's key: `moe:<name>` or `endpoint:<url>#<model>` (exactly one is set)."""
    if moe_model_ref is not None:
        return f"moe:{moe_model_ref.name}"
    assert endpoint is not None
    return f"endpoint:{endpoint.url}#{endpoint.model}"


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
        return model_key(self.moe_model_ref, self.endpoint)


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
    """Stragglers, failures and deadlines.

    Four clocks bound a request, and each ends it with an OpenAI-style error (504 before the first byte; once a
    stream has started, an `error` event and the end of the stream), cancelling every upstream call in flight:
    `requestTimeoutSeconds` (the whole request), `layerTimeoutSeconds` (each proposer layer),
    `aggregatorTimeoutSeconds` (the aggregator's call, first byte to last token) and `streamIdleTimeoutSeconds`
    (the longest silence between two chunks of the aggregator's stream, SSE comments not counting).
    """

    layer_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Deadline of each layer; the layer moves on with what has arrived.",
    )
    request_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="Deadline of the whole request, from admission to the last byte; then 504 (or, mid-stream, "
        "an error event) and every upstream call is cancelled.",
    )
    aggregator_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Deadline of the aggregator's call, to its last token: a backend that drips tokens ends here.",
    )
    stream_idle_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest silence between two chunks of the aggregator's stream (the first included); SSE "
        "keep-alive comments do not count as chunks.",
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

    # has(): the API server checks these rules against the CRD's `default: {}` too, where the fields'
    # own defaults are not filled in yet; in every stored object they are, so the guards never skip a check.
    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.layerTimeoutSeconds) || !has(self.requestTimeoutSeconds) || "
            "self.layerTimeoutSeconds <= self.requestTimeoutSeconds",
            "message": "layerTimeoutSeconds must not exceed requestTimeoutSeconds",
        },
        {
            "rule": "!has(self.aggregatorTimeoutSeconds) || !has(self.requestTimeoutSeconds) || "
            "self.aggregatorTimeoutSeconds <= self.requestTimeoutSeconds",
            "message": "aggregatorTimeoutSeconds must not exceed requestTimeoutSeconds",
        },
        {
            "rule": "!has(self.streamIdleTimeoutSeconds) || !has(self.aggregatorTimeoutSeconds) || "
            "self.streamIdleTimeoutSeconds <= self.aggregatorTimeoutSeconds",
            "message": "streamIdleTimeoutSeconds must not exceed aggregatorTimeoutSeconds",
        },
    ]

    @model_validator(mode="after")
    def _deadlines_nest(self) -> Policy:
        # The Python twin of cel_rules, so `kubemoe render` and `kubectl apply` reject the same specs.
        if self.layer_timeout_seconds > self.request_timeout_seconds:
            raise ValueError("layerTimeoutSeconds must not exceed requestTimeoutSeconds")
        if self.aggregator_timeout_seconds > self.request_timeout_seconds:
            raise ValueError("aggregatorTimeoutSeconds must not exceed requestTimeoutSeconds")
        if self.stream_idle_timeout_seconds > self.aggregator_timeout_seconds:
            raise ValueError("streamIdleTimeoutSeconds must not exceed aggregatorTimeoutSeconds")
        return self


#: What a client key's name may be: a Secret data key (the file name it is mounted under).
SECRET_DATA_KEY = r"^[-._a-zA-Z0-9]+$"


class ClientAuth(KubeModel):
    """Who may call the router: bearer keys from a Secret, each under its own name.

    Every data key of the Secret is one client key: the data key is its NAME (what logs and metrics show), the
    value is the key a client sends as `Authorization: Bearer <value>`. The kubelet mounts the Secret and
    updates it in place; the router re-reads it within a second or two, so keys rotate without a restart.
    On by default: a pipeline is open only with `enabled: false`.
    """

    enabled: bool = Field(
        default=True, description="Require client keys. false: anyone who reaches it may call."
    )
    secret_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="Secret holding the client keys (data key = key name). Default: <pipeline>-client-keys. "
        "Until it exists, the router is not ready and answers 401.",
    )
    requests_per_second: float | None = Field(
        default=None, gt=0, le=100_000, description="Per-key request rate limit (429 above it). Unset: none."
    )
    burst: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Requests a key may send at once. Default: the rate, at least 1.",
    )
    revoked_keys: list[Annotated[str, StringConstraints(pattern=SECRET_DATA_KEY, max_length=253)]] = Field(
        default_factory=list,
        max_length=256,
        description="Names of keys refused with 403 although still in the Secret.",
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.burst) || has(self.requestsPerSecond)",
            "message": "burst needs requestsPerSecond",
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> ClientAuth:
        if self.burst is not None and self.requests_per_second is None:
            raise ValueError("burst needs requestsPerSecond")
        return self


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

    @property
    def model_key(self) -> str:
        """The key of the model this rate is for, as agents spell it (`model_key`)."""
        return model_key(self.moe_model_ref, self.endpoint)

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


# ------------------------------------------------------------------------------------ topology (decentralised)


class GraphNeighbours(KubeModel):
    """One member's fixed neighbours (selection `graph`)."""

    member: str = Field(pattern=DNS_LABEL, max_length=63, description="A member (agent name).")
    # Small bounds keep the CEL rules over the graph within the API server's cost budget.
    neighbours: list[str] = Field(
        min_length=1, max_length=16, description="Members this one shares its queries with."
    )


class PeerAdmission(KubeModel):
    """Admission control from the stability condition rho = alpha((k+1)M+1)lambda < 1."""

    policy: Literal["shed", "reduceNeighbours", "none"] = Field(
        default="shed",
        description="shed: answer 429 with Retry-After; reduceNeighbours: use the largest k that keeps rho "
        "below maxUtilization (shed only when even k=0 does not); none: only report rho (benchmarks).",
    )
    max_utilization: float = Field(
        default=0.9, gt=0, lt=1, description="Act before rho reaches this (strictly below 1)."
    )
    window_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="Sliding window over which lambda and alpha are measured."
    )
    service_time_seconds: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="alpha to assume until the peer has measured its model (unset: admit until measured).",
    )
    retry_after_seconds: int = Field(default=1, ge=1, le=3600, description="Retry-After sent with 429.")


class Topology(KubeModel):
    """Who answers a query: the central router, or peers (one per member agent) that gossip it."""

    mode: Literal["central", "decentralised"] = Field(
        default="central",
        description="central: one router runs the layers. decentralised: every agent is a peer fronting its "
        "model; a query entering any peer is shared with `neighbours` peers per layer over `layers` layers "
        "and aggregated by that peer.",
    )
    neighbours: int = Field(default=2, ge=0, le=63, description="k: peers a query is shared with per layer.")
    layers: int = Field(default=2, ge=1, le=8, description="M: gossip layers per query.")
    aggregation: Literal["synthesize", "vote"] = Field(
        default="synthesize",
        description="synthesize: the entry peer's own model writes the answer with the aggregator's "
        "promptTemplate; vote: the most frequent final-layer answer (no extra call).",
    )
    selection: Literal["random", "ring", "graph"] = Field(
        default="random",
        description="random: k random live peers per query; ring: the next k members in spec order; graph: "
        "the first k of each member's `graph` neighbours.",
    )
    graph: list[GraphNeighbours] = Field(
        default_factory=list, max_length=32, description="Fixed neighbours per member (selection `graph`)."
    )
    admission: PeerAdmission = Field(default_factory=PeerAdmission, description="Load shedding per peer.")

    # has(): the API server checks these rules against the CRD's `default: {}` too, where nothing is set yet.
    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.selection) || self.selection != 'graph' || (has(self.graph) && size(self.graph) > 0)",
            "message": "selection graph needs a graph",
        },
        {
            "rule": "!has(self.graph) || self.graph.all(g, size(g.neighbours) >= (has(self.neighbours) ? self.neighbours : 2))",
            "message": "every graph member needs at least `neighbours` neighbours",
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> Topology:
        if self.selection == "graph" and not self.graph:
            raise ValueError("selection graph needs a graph")
        for g in self.graph:
            if len(g.neighbours) < self.neighbours:
                raise ValueError("every graph member needs at least `neighbours` neighbours")
        return self

    def check_members(self, members: list[str]) -> None:
        """Rules that need the pipeline's members (agent names); ValueError names the problem."""
        if self.mode == "decentralised" and self.neighbours > len(members) - 1:
            raise ValueError(
                f"topology.neighbours ({self.neighbours}) must be below the number of members ({len(members)})"
            )
        known = set(members)
        for g in self.graph:
            unknown = sorted({g.member, *g.neighbours} - known)
            if unknown:
                raise ValueError(f"topology.graph names unknown members: {', '.join(unknown)}")
            if g.member in g.neighbours:
                raise ValueError(f"topology.graph: {g.member} lists itself as a neighbour")


#: CEL twins of `Topology.check_members` on the spec (members are the agents of every layer).
_TOPOLOGY_SPEC_RULES = [
    {
        "rule": "!has(self.topology) || !has(self.topology.mode) || self.topology.mode != 'decentralised' || "
        "(has(self.topology.neighbours) ? self.topology.neighbours : 2) < self.layers.map(l, size(l.agents)).sum()",
        "message": "topology.neighbours must be below the number of members (agents)",
    },
    {
        "rule": "!has(self.topology) || !has(self.topology.graph) || self.topology.graph.all(g, self.layers.exists(l, "
        "l.agents.exists(a, a.name == g.member)) && g.neighbours.all(n, n != g.member && "
        "self.layers.exists(l, l.agents.exists(a, a.name == n))))",
        "message": "topology.graph must name members (agents) only, and no member as its own neighbour",
    },
]


class PeerStatus(StatusModel):
    """One decentralised peer: its pod's readiness (from the API server) and its stability figures, as its
    `GET /status` reported them to the operator at the last reconcile (unset when it could not be read)."""

    member: str = Field(description="The member (agent name) this peer fronts.")
    ready: bool = Field(default=False, description="Whether the peer's pod is ready (its readiness probe).")
    address: str | None = Field(default=None, description="Base URL the other peers call it at.")
    utilization: float | None = Field(default=None, description="rho = alpha((k+1)M+1)lambda.")
    arrival_rate: float | None = Field(default=None, description="Accepted user queries per second (lambda).")
    service_time_seconds: float | None = Field(default=None, description="Measured alpha of its model.")
    max_stable_rate: float | None = Field(default=None, description="1 / (alpha((k+1)M+1)).")
    neighbours: int | None = Field(default=None, description="k used for its last admitted query.")

    @classmethod
    def from_peer(
        cls, member: str, body: dict[str, Any], *, ready: bool = False, address: str | None = None
    ) -> PeerStatus:
        """From a peer's `/status` JSON (kubemoe.peer.server.status_of)."""
        return cls(
            member=member,
            ready=ready,
            address=address,
            utilization=body.get("utilization"),
            arrival_rate=body.get("arrivalRate"),
            service_time_seconds=body.get("serviceTimeSeconds"),
            max_stable_rate=body.get("maxStableRate"),
            neighbours=body.get("effectiveNeighbours"),
        )


# ------------------------------------------------------------------------------------ end of topology


class ModelPrice(KubeModel):
    """What one model's tokens cost, for the playground's estimate of a run's cost."""

    input_usd_per_million_tokens: float = Field(
        default=0, ge=0, le=10000, description="USD per million prompt tokens."
    )
    output_usd_per_million_tokens: float = Field(
        default=0, ge=0, le=10000, description="USD per million completion tokens."
    )


class Playground(KubeModel):
    """The router's playground: whether a client may run (and export) an edited copy of this pipeline.

    An edited run may change layers, agents, prompts, sampling and the aggregator, but only over the models
    this spec already calls (the router never calls a URL the spec does not name), within the bounds below.
    Off by default: an edit fans one request out to up to `maxAgents` calls and shows every client key
    holder the pipeline's prompts and model references.
    """

    allow_overrides: bool = Field(
        default=False,
        description="Let client key holders read this spec and run or export edited copies of it (playground).",
    )
    max_layers: int = Field(default=3, ge=1, le=8, description="Most proposer layers an edited run may have.")
    max_agents: int = Field(
        default=8, ge=1, le=64, description="Most proposers an edited run may have, all layers together."
    )
    max_tokens: int = Field(
        default=2048, ge=1, le=131072, description="Largest maxTokens an edited agent or aggregator may ask."
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        max_length=64,
        description="Token prices by served model name (the name each call's trace shows), for the cost "
        "estimate of every run: e.g. a provider's list price, or for a MoEModel the $/M tokens `kubemoe plan` "
        "estimates. A model without a price counts as unpriced, never as free.",
    )


class MoAPipelineSpec(KubeModel):
    """Desired state of a Mixture-of-Agents pipeline."""

    layers: list[Layer] = Field(min_length=1, max_length=8, description="Proposer layers, in order.")
    aggregator: Aggregator = Field(description="The model that writes the final answer.")
    policy: Policy = Field(default_factory=Policy, description="Deadlines, quorum and error handling.")
    auth: ClientAuth = Field(
        default_factory=ClientAuth, description="Client API keys (on unless enabled: false)."
    )
    replicas: int = Field(default=1, ge=0, le=100, description="Router replicas.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Router processes per pod, sharing its port (SO_REUSEPORT; one per core you give it): "
        "the pod's concurrency and rate limits are split among them, /metrics sums them.",
    )
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
    topology: Topology = Field(
        default_factory=Topology, description="Central router (default) or decentralised peers."
    )
    playground: Playground = Field(
        default_factory=Playground, description="Edited runs from the router's playground (off by default)."
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
        *_TOPOLOGY_SPEC_RULES,
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
        self.topology.check_members(names)
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
    gateway_endpoint: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL through the Gateway, once it has accepted the HTTPRoute: the "
        "listener's scheme and port, the route's first exact hostname (else the listener's, else the "
        "Gateway's first address) and the route's path prefix.",
    )
    ready_replicas: int | None = Field(
        default=None, description="Router replicas ready to serve (decentralised: peers ready)."
    )
    agents: list[ResolvedAgent] = Field(
        default_factory=list, description="Agents with their resolved endpoints."
    )
    capacity: CapacityStatus | None = Field(default=None, description="Capacity figures.")
    peers: list[PeerStatus] = Field(
        default_factory=list, description="Decentralised topology: each peer's rho, lambda and alpha."
    )
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
