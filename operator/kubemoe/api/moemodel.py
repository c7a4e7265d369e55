"""MoEModel: one Mixture-of-Experts (or dense) model served by vLLM or NeuronX, placed by the planner."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kubemoe.api import rules as r
from kubemoe.api.common import (
    DNS_SUBDOMAIN,
    Condition,
    KubeModel,
    NodeSelector,
    ResourceOverrides,
    Routing,
    SecretKeyRef,
    StatusModel,
    Toleration,
)
from kubemoe.api.rules import Checked, Rule

EngineKind = Literal["vllm", "neuronx"]
AcceleratorKind = Literal["gpu", "neuron"]
#: How a model runs on Neuron: the vLLM Neuron plugin, NeuronX Distributed Inference, or not at all.
NeuronPath = Literal["vllm-neuron", "nxdi", "none"]
Dtype = Literal["bfloat16", "float16", "fp8", "mxfp4", "int8", "int4", "float32"]
Quantization = Literal["fp8", "awq", "gptq", "mxfp4", "compressed-tensors", "bitsandbytes", "experts_int8"]


class Architecture(KubeModel):
    """The shape of a model that is not in the catalog: what the planner needs to size memory."""

    total_params_b: float = Field(gt=0, le=100000, description="Total parameters, in billions (all experts).")
    active_params_b: float | None = Field(
        default=None,
        gt=0,
        le=100000,
        description="Parameters active per token, in billions (MoE). Defaults to total.",
    )
    num_layers: int = Field(ge=1, le=1024, description="Transformer layers (num_hidden_layers).")
    hidden_size: int = Field(ge=64, le=131072, description="Hidden size (d_model).")
    num_attention_heads: int = Field(ge=1, le=1024, description="Query attention heads.")
    num_kv_heads: int = Field(
        ge=1, le=1024, description="Key/value heads (equal to attention heads for MHA)."
    )
    head_dim: int | None = Field(
        default=None,
        ge=8,
        le=1024,
        description="Per-head dimension. Defaults to hiddenSize / numAttentionHeads.",
    )
    num_experts: int = Field(
        default=0, ge=0, le=4096, description="Routed experts per MoE layer; 0 for dense."
    )
    experts_per_token: int = Field(
        default=0, ge=0, le=64, description="Experts each token is routed to (top-k)."
    )
    dense_layers: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="Leading layers with a dense MLP instead of experts (DeepSeek: 3).",
    )
    moe_layer_interval: int = Field(
        default=1, ge=1, le=64, description="Every n-th remaining layer has experts (Llama 4 Maverick: 2)."
    )
    moe_intermediate_size: int | None = Field(
        default=None,
        ge=1,
        le=1048576,
        description="Intermediate size of one expert's MLP (sizes the activation peak).",
    )
    kv_lora_rank: int | None = Field(
        default=None,
        ge=1,
        le=8192,
        description="MLA latent KV rank (DeepSeek, Kimi). Set for MLA models only.",
    )
    qk_rope_head_dim: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="MLA rotary key dimension (DeepSeek, Kimi). Set with kvLoraRank.",
    )
    vocab_size: int = Field(
        default=32000,
        ge=1,
        le=10000000,
        description="Vocabulary size (sizes the sampler's logits in profiling).",
    )
    sliding_window: int | None = Field(
        default=None,
        ge=1,
        le=16777216,
        description="Attention window of the windowed layers (gpt-oss, Llama 4).",
    )
    sliding_window_layers: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="How many layers attend only within slidingWindow (their KV is capped).",
    )
    max_context: int = Field(
        default=32768, ge=128, le=16777216, description="Longest context the model supports."
    )
    native_dtype: Dtype = Field(default="bfloat16", description="Dtype of the checkpoint's weights.")

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "has(self.kvLoraRank) == has(self.qkRopeHeadDim)",
            "message": "kvLoraRank and qkRopeHeadDim describe MLA together: set both or neither",
        },
        {
            "rule": "self.numAttentionHeads % self.numKvHeads == 0",
            "message": "numAttentionHeads must be a multiple of numKvHeads",
        },
        {
            "rule": "(self.numExperts == 0) == (self.expertsPerToken == 0)",
            "message": "a MoE model sets both numExperts and expertsPerToken; a dense model neither",
        },
        {
            "rule": "self.slidingWindowLayers <= self.numLayers && (self.slidingWindowLayers == 0 || has(self.slidingWindow))",
            "message": "slidingWindowLayers needs slidingWindow and cannot exceed numLayers",
        },
    ]
    rules: ClassVar[tuple[Rule, ...]] = (r.ACTIVE_WITHIN_TOTAL,)

    @model_validator(mode="after")
    def _check_shape(self) -> Architecture:
        if (self.kv_lora_rank is None) != (self.qk_rope_head_dim is None):
            raise ValueError("kvLoraRank and qkRopeHeadDim describe MLA together: set both or neither")
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError("numAttentionHeads must be a multiple of numKvHeads")
        if (self.num_experts == 0) != (self.experts_per_token == 0):
            raise ValueError("a MoE model sets both numExperts and expertsPerToken; a dense model neither")
        if self.sliding_window_layers > self.num_layers or (
            self.sliding_window_layers and not self.sliding_window
        ):
            raise ValueError("slidingWindowLayers needs slidingWindow and cannot exceed numLayers")
        return self

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


class ModelSource(KubeModel):
    """Which model to serve."""

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?$",
        description="Hugging Face model id, e.g. mistralai/Mixtral-8x22B-Instruct-v0.1. "
        "Catalog models need nothing else; others need `architecture`.",
    )
    revision: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9._/-]+$",
        description="Branch, tag or commit to load.",
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[A-Za-z0-9._/:-]+$",
        description="Name clients use in the OpenAI `model` field. Defaults to the CR's name.",
    )
    architecture: Architecture | None = Field(
        default=None,
        description="Shape of a model that is not in the catalog; overrides the catalog entry if set.",
    )


class Engine(KubeModel):
    """The serving engine. vLLM on GPUs, vLLM with the Neuron plugin (neuronx) on Trainium/Inferentia."""

    kind: EngineKind | None = Field(
        default=None, description="vllm or neuronx. Defaults from the chosen accelerator."
    )
    image: str | None = Field(
        default=None, max_length=512, description="Container image. Defaults to the engine's pinned release."
    )
    version: (
        Annotated[
            str,
            Field(pattern=r"^[0-9]+\.[0-9]+(\.[0-9]+)?([.+-][A-Za-z0-9.]+)?$", max_length=64),
            Checked(r.KNOWN_ENGINE),
        ]
        | None
    ) = Field(
        default=None,
        description="Engine release, e.g. 0.33.0; selects the command-line dialect (0.10 and newer).",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Extra arguments appended to the engine's command line, after the planned ones.",
    )


class Speculative(KubeModel):
    """Speculative decoding, rendered as vLLM's --speculative-config JSON."""

    method: Literal["ngram", "draft_model", "eagle", "eagle3", "mtp", "suffix"] = Field(
        description="Speculation method."
    )
    model: str | None = Field(
        default=None, max_length=256, description="Draft model id (draft_model, eagle, eagle3)."
    )
    num_speculative_tokens: int = Field(default=3, ge=1, le=16, description="Tokens proposed per step.")
    draft_tensor_parallel_size: int | None = Field(
        default=None, ge=1, le=64, description="TP of the draft model."
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!(self.method in ['draft_model', 'eagle', 'eagle3']) || has(self.model)",
            "message": "speculative methods draft_model, eagle and eagle3 need a draft `model`",
        }
    ]

    @model_validator(mode="after")
    def _check_model(self) -> Speculative:
        if self.method in ("draft_model", "eagle", "eagle3") and not self.model:
            raise ValueError("speculative methods draft_model, eagle and eagle3 need a draft `model`")
        return self


# --- planner objective: the workload, the latency target and the load (issue 10) ---------------------------
#: Defaults a chat product would accept: a 2,000-token prompt and a 500-token answer, the first token
#: within 2 s at p95 and 20 tokens/s per user afterwards (50 ms per output token).
DEFAULT_INPUT_TOKENS = 2000
DEFAULT_OUTPUT_TOKENS = 500
DEFAULT_TTFT_P95_SECONDS = 2.0
DEFAULT_TPOT_MS = 50.0


class Workload(KubeModel):
    """The typical request the planner sizes throughput for."""

    input_tokens: int = Field(
        default=DEFAULT_INPUT_TOKENS, ge=1, le=16777216, description="Prompt tokens of a typical request."
    )
    output_tokens: int = Field(
        default=DEFAULT_OUTPUT_TOKENS, ge=1, le=16777216, description="Generated tokens of a typical request."
    )
    prefix_cache_hit_ratio: float = Field(
        default=0.0,
        ge=0,
        le=0.99,
        description="Share of prompt tokens served from the prefix cache (not recomputed in prefill).",
    )


class Slo(KubeModel):
    """The latency a plan must meet at its planned batch."""

    time_to_first_token_p95_seconds: float = Field(
        default=DEFAULT_TTFT_P95_SECONDS, gt=0, le=3600, description="Time to first token, p95, in seconds."
    )
    time_per_output_token_ms: float = Field(
        default=DEFAULT_TPOT_MS, gt=0, le=60000, description="Time per output token after the first, in ms."
    )


class Target(KubeModel):
    """The load to serve; with it the planner chooses the replica count (unless spec.replicas is set)."""

    requests_per_second: float | None = Field(
        default=None, gt=0, le=1000000, description="Sustained requests per second of the workload."
    )
    concurrent_users: int | None = Field(
        default=None, ge=1, le=100000000, description="Requests in flight at once."
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "has(self.requestsPerSecond) != has(self.concurrentUsers)",
            "message": "target sets exactly one of requestsPerSecond and concurrentUsers",
        }
    ]

    @model_validator(mode="after")
    def _check_one(self) -> Target:
        if (self.requests_per_second is None) == (self.concurrent_users is None):
            raise ValueError("target sets exactly one of requestsPerSecond and concurrentUsers")
        return self


# --- end of the planner objective ----------------------------------------------------------------------------


class Serving(KubeModel):
    """How the engine serves: context length, batching, memory, KV cache."""

    max_model_len: int | None = Field(
        default=None,
        ge=128,
        le=16777216,
        description="Longest sequence (prompt + output) served. Defaults to the model's context, capped at 32768. "
        "At least one sequence of this length must fit in the KV cache.",
    )
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Most sequences batched at once. Defaults per hardware (vLLM).",
    )
    max_num_batched_tokens: int | None = Field(
        default=None,
        ge=16,
        le=1048576,
        description="Tokens per scheduler step; vLLM profiles activation memory with this many. Defaults per hardware.",
    )
    gpu_memory_utilization: float = Field(
        default=0.90,
        gt=0.1,
        le=0.99,
        description="Share of each device's memory the engine may use (weights + activations + KV cache).",
    )
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        default="auto", description="KV-cache dtype: auto (the model's dtype) or fp8 (half the memory)."
    )
    quantization: Quantization | None = Field(
        default=None,
        description="Weight quantization. Unset: the checkpoint's own (native FP8/MXFP4 counted as such).",
    )
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse KV cache across shared prompt prefixes."
    )
    enable_chunked_prefill: bool = Field(default=True, description="Split long prefills into chunks.")
    speculative: Speculative | None = Field(default=None, description="Speculative decoding.")
    # planner objective (issue 10)
    workload: Workload = Field(
        default_factory=Workload, description="The typical request (tokens in and out)."
    )
    slo: Slo = Field(default_factory=Slo, description="Latency target: TTFT p95 and time per output token.")
    target: Target | None = Field(
        default=None,
        description="Load to serve. Set: the planner chooses replicas (unless spec.replicas is set).",
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.maxNumBatchedTokens) || !has(self.maxModelLen) || self.enableChunkedPrefill "
            "|| self.maxNumBatchedTokens >= self.maxModelLen",
            "message": "without chunked prefill, maxNumBatchedTokens must be at least maxModelLen",
        }
    ]

    @model_validator(mode="after")
    def _check_batching(self) -> Serving:
        if (
            self.max_num_batched_tokens is not None
            and self.max_model_len is not None
            and not self.enable_chunked_prefill
            and self.max_num_batched_tokens < self.max_model_len
        ):
            raise ValueError("without chunked prefill, maxNumBatchedTokens must be at least maxModelLen")
        return self


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class Placement(KubeModel):
    """Where and how the model is placed. Anything left out is chosen by the planner; anything set is checked."""

    instance_types: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Instance types allowed (e.g. p5.48xlarge). Empty: every catalog instance of the accelerator.",
    )
    accelerator: Literal["gpu", "neuron", "any"] = Field(
        default="any", description="Accelerator family: gpu, neuron or any."
    )
    strategy: Literal["cheapest", "fewest-accelerators", "lowest-latency"] = Field(
        default="cheapest",
        description="How to rank feasible plans: cheapest $/hour, fewest accelerators, or lowest latency "
        "(most memory bandwidth, fewest nodes).",
    )
    tensor_parallel_size: int | None = Field(
        default=None,
        ge=1,
        le=128,
        description="Tensor-parallel size (a power of two). NeuronCores on Neuron.",
    )
    pipeline_parallel_size: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Pipeline-parallel size: stages, one node each when over a node.",
    )
    data_parallel_size: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Data-parallel attention ranks inside one replica (MoE on GPUs): with expert parallelism, "
        "or with expertParallel false the experts tensor-parallel over all TP x DP ranks.",
    )
    expert_parallel: bool | None = Field(
        default=None,
        description="Expert parallelism (--enable-expert-parallel). Default: the planner tries both on MoE "
        "models over more than one rank (false: experts TP-sharded over all TP x DP ranks, vLLM's default).",
    )
    node_selector: NodeSelector = Field(
        default_factory=dict,
        max_length=64,
        description="Extra node labels the pods must match (the instance type is added).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Extra tolerations (GPU/Neuron taints are tolerated already).",
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.tensorParallelSize) || (self.tensorParallelSize > 0 && "
            "(self.tensorParallelSize == 1 || self.tensorParallelSize == 2 || self.tensorParallelSize == 4 || "
            "self.tensorParallelSize == 8 || self.tensorParallelSize == 16 || self.tensorParallelSize == 32 || "
            "self.tensorParallelSize == 64 || self.tensorParallelSize == 128))",
            "message": "tensorParallelSize must be a power of two (1, 2, 4, 8, ...)",
        }
    ]

    @field_validator("tensor_parallel_size")
    @classmethod
    def _check_tp(cls, value: int | None) -> int | None:
        if value is not None and not _is_power_of_two(value):
            raise ValueError("must be a power of two (1, 2, 4, 8, ...)")
        return value


class Alerts(KubeModel):
    """PrometheusRule alerts on the model server's vLLM metrics."""

    enabled: bool = Field(default=True, description="Render the PrometheusRule.")
    p95_latency_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Alert when p95 end-to-end latency stays above this for 5 minutes.",
    )
    time_to_first_token_p95_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Alert when p95 time to first token stays above this for 5 minutes.",
    )
    kv_cache_usage_percent: float = Field(
        default=95.0, gt=0, le=100, description="Alert when KV-cache usage stays above this percentage."
    )
    waiting_requests: int = Field(
        default=100, ge=1, le=1000000, description="Alert when more requests wait than this."
    )


class ServiceMonitorSpec(KubeModel):
    """prometheus-operator ServiceMonitor for the server's /metrics."""

    enabled: bool = Field(default=True, description="Render the ServiceMonitor.")
    interval: str = Field(default="30s", pattern=r"^[0-9]+(ms|s|m|h)$", description="Scrape interval.")


class Monitoring(KubeModel):
    """Alerts and scraping."""

    alerts: Alerts = Field(default_factory=Alerts, description="PrometheusRule alerts.")
    service_monitor: ServiceMonitorSpec = Field(
        default_factory=ServiceMonitorSpec, description="ServiceMonitor."
    )


class Credentials(KubeModel):
    """Secrets the engine needs."""

    hugging_face_token: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a Hugging Face token (HF_TOKEN) for gated models."
    )


class Storage(KubeModel):
    """Where downloaded weights are cached."""

    model_cache_claim_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="An existing PersistentVolumeClaim mounted as the Hugging Face cache. The operator never "
        "creates or deletes it, so deleting the MoEModel keeps the downloaded weights.",
    )


class MoEModelSpec(KubeModel):
    """Desired state of a served model."""

    model: ModelSource = Field(description="The model to serve.")
    engine: Engine = Field(default_factory=Engine, description="Serving engine and its image.")
    serving: Serving = Field(
        default_factory=Serving, description="Context length, batching and memory settings."
    )
    placement: Placement = Field(default_factory=Placement, description="Instance types and parallelism.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Model-server replicas. Unset: serving.target sizes the count when set (planner), "
        "otherwise an external autoscaler (HPA, KEDA) owns it.",
    )
    routing: Routing | None = Field(
        default=None, description="Gateway API route. Unset: in-cluster Service only."
    )
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Alerts and ServiceMonitor.")
    credentials: Credentials = Field(default_factory=Credentials, description="Secrets the engine needs.")
    storage: Storage = Field(default_factory=Storage, description="Model cache storage.")
    resources: ResourceOverrides = Field(
        default_factory=ResourceOverrides, description="CPU and memory of the serving container."
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.engine.kind) || self.placement.accelerator == 'any' || "
            "(self.engine.kind == 'vllm') == (self.placement.accelerator == 'gpu')",
            "message": "engine.kind must match placement.accelerator: vllm runs on gpu, neuronx on neuron",
        }
    ]

    @model_validator(mode="after")
    def _check_engine_matches_accelerator(self) -> MoEModelSpec:
        kind, accel = self.engine.kind, self.placement.accelerator
        if kind is not None and accel != "any" and (kind == "vllm") != (accel == "gpu"):
            raise ValueError(
                "engine.kind must match placement.accelerator: vllm runs on gpu, neuronx on neuron"
            )
        return self


class MemoryBreakdown(StatusModel):
    """Per-device memory of the chosen plan, in GiB."""

    device_gib: float = Field(description="Memory of one device as the runtime reports it.")
    usable_gib: float = Field(description="Device memory x gpuMemoryUtilization.")
    weights_gib: float = Field(description="Weights held by one device.")
    activation_gib: float = Field(description="Activation peak profiled with maxNumBatchedTokens tokens.")
    overhead_gib: float = Field(description="Runtime overhead: CUDA context, NCCL buffers, CUDA graphs.")
    kv_cache_gib: float = Field(description="What is left for the KV cache.")
    headroom_gib: float = Field(description="Device memory outside gpuMemoryUtilization.")


class PlanAlternativeSummary(StatusModel):
    """A layout the planner did not choose, with its estimates and why it lost."""

    layout: str = Field(description="e.g. DP 8 x EP 8 on p5en.48xlarge.")
    feasible: bool = Field(description="Whether it fits and meets the SLO.")
    tokens_per_second: float | None = Field(default=None, description="Output tokens/s per replica.")
    cost_per_million_tokens: float | None = Field(default=None, description="$ per million output tokens.")
    reason: str = Field(description="Why it lost.")


class PlanSummary(StatusModel):
    """What the planner chose and why."""

    instance_type: str = Field(description="Chosen instance type.")
    accelerator: str = Field(description="Accelerator model, e.g. H100.")
    engine: EngineKind = Field(description="vllm or neuronx.")
    accelerators_per_replica: int = Field(description="Accelerator devices per replica (Neuron: chips).")
    nodes_per_replica: int = Field(description="Nodes per replica (>1 means a LeaderWorkerSet).")
    tensor_parallel_size: int = Field(description="Tensor-parallel size (NeuronCores on Neuron).")
    pipeline_parallel_size: int = Field(description="Pipeline-parallel size.")
    data_parallel_size: int = Field(description="Data-parallel size.")
    expert_parallel_size: int = Field(description="Expert-parallel size (0 when off).")
    max_model_len: int = Field(description="Context length served.")
    kv_cache_dtype: str = Field(description="KV-cache dtype.")
    concurrent_sequences: int = Field(description="Full-length sequences that fit in the KV cache at once.")
    cost_per_hour: float | None = Field(default=None, description="On-demand $/hour per replica, when known.")
    memory: MemoryBreakdown = Field(description="Per-device memory.")
    reason: str = Field(description="Why this plan was chosen.")
    # planner estimates (issue 10)
    layout: str | None = Field(default=None, description="The layout, e.g. DP 8 x EP 8 on p5en.48xlarge.")
    batch_size: int | None = Field(
        default=None, description="Sequences decoded at once per replica at the SLO."
    )
    tokens_per_second: float | None = Field(
        default=None, description="Output tokens/s per replica at the SLO."
    )
    requests_per_second: float | None = Field(
        default=None, description="Requests/s one replica serves at the SLO (the workload's size)."
    )
    cost_per_million_tokens: float | None = Field(default=None, description="$ per million output tokens.")
    time_to_first_token_seconds: float | None = Field(default=None, description="Estimated TTFT (p95).")
    time_per_output_token_ms: float | None = Field(default=None, description="Estimated TPOT at the batch.")
    replicas: int | None = Field(default=None, description="Replicas the target needs (when one is set).")
    alternatives: list[PlanAlternativeSummary] = Field(
        default_factory=list, description="The top alternatives and why each lost."
    )


class MoEModelStatus(StatusModel):
    """Observed state of a served model."""

    observed_generation: int | None = Field(
        default=None, description="Generation the status was computed from."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Planned, Progressing, Available, Ready, Degraded."
    )
    plan: PlanSummary | None = Field(default=None, description="The chosen plan.")
    endpoint: str | None = Field(default=None, description="In-cluster OpenAI-compatible base URL.")
    gateway_endpoint: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL through the Gateway, once it has accepted the HTTPRoute: the "
        "listener's scheme and port, the route's first exact hostname (else the listener's, else the "
        "Gateway's first address) and the route's path prefix.",
    )
    replicas: int | None = Field(default=None, description="Replicas that exist.")
    ready_replicas: int | None = Field(default=None, description="Replicas ready to serve.")
    selector: str | None = Field(
        default=None, description="Label selector of the pods (for the scale subresource)."
    )


class ObjectMeta(BaseModel):
    """The part of metadata the pure layers read. Everything else passes through untouched."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        # The CRDs' root rule (crd.NAME_RULE) in Python, so `kubemoe render` refuses what `kubectl apply` does.
        if not r.CR_NAME_RULE.holds(name):
            raise ValueError(r.CR_NAME_RULE.message)
        return name


class MoEModel(BaseModel):
    """A whole MoEModel object as read from YAML or the API server."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    KIND: ClassVar[str] = "MoEModel"

    api_version: Literal["kubemoe.io/v1alpha1"] = Field(default="kubemoe.io/v1alpha1", alias="apiVersion")
    kind: Literal["MoEModel"] = "MoEModel"
    metadata: ObjectMeta
    spec: MoEModelSpec
    status: MoEModelStatus | None = None
