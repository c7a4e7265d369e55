"""The plan: a value that can be printed, compared and tested; executing it is the renderer's job."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubemoe.api.moemodel import (
    AcceleratorKind,
    EngineKind,
    MemoryBreakdown,
    NeuronPath,
    PlanAlternativeSummary,
    PlanSummary,
)

#: Plans print (`kubemoe plan -o json/yaml`) with the CR status's camelCase names; Python keeps snake_case.
_PLAN_CONFIG = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)


class PlanReason(StrEnum):
    """Stable reasons for `Planned=False`; each says what to change."""

    UNKNOWN_MODEL = "UnknownModel"
    UNKNOWN_INSTANCE_TYPE = "UnknownInstanceType"
    NO_MATCHING_INSTANCE = "NoMatchingInstance"
    INSUFFICIENT_MEMORY = "InsufficientMemory"
    INVALID_PARALLELISM = "InvalidParallelism"
    INVALID_SERVING = "InvalidServing"
    SLO_UNREACHABLE = "SLOUnreachable"


class Alternative(BaseModel):
    """A layout the planner looked at and did not choose, with its estimates and why it lost."""

    model_config = _PLAN_CONFIG

    instance_type: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    feasible: bool
    expert_parallel: bool = False
    cost_per_hour: float | None = None
    accelerators: int
    concurrent_sequences: int = 0
    reason: str
    layout: str = ""
    nodes: int = 1
    tokens_per_second: float | None = None
    cost_per_million_tokens: float | None = None
    time_to_first_token_seconds: float | None = None
    time_per_output_token_ms: float | None = None

    def summary(self) -> PlanAlternativeSummary:
        return PlanAlternativeSummary(
            layout=self.layout,
            feasible=self.feasible,
            tokens_per_second=self.tokens_per_second,
            cost_per_million_tokens=self.cost_per_million_tokens,
            reason=self.reason,
        )


class RecipeComparison(BaseModel):
    """The planner's footprint next to a published vLLM recipe's minimum memory."""

    model_config = _PLAN_CONFIG

    recipe_gb: float
    planned_gb: float
    ratio: float = Field(description="planned / recipe")
    source: str


class Plan(BaseModel):
    """A feasible placement of one model replica."""

    model_config = _PLAN_CONFIG

    model_id: str
    instance_type: str
    accelerator_kind: AcceleratorKind
    accelerator_model: str
    engine: EngineKind
    resource_name: str
    core_resource_name: str | None = None
    nodes: int
    devices_per_node: int = Field(description="Devices (GPUs or Neuron chips) requested on each node.")
    node_devices: int = Field(description="Devices one node of the instance type has.")
    ranks_per_node: int = Field(description="Tensor-parallel ranks on each node (GPUs or NeuronCores).")
    pod_cpu: int = Field(description="CPU cores to request per pod: the node's share for the devices used.")
    pod_memory_gib: int = Field(description="Host memory (GiB) to request per pod, likewise.")
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    expert_parallel: bool
    expert_parallel_size: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    kv_cache_dtype: str
    quantization: str | None = None
    weights_total_gb: float
    kv_bytes_per_token_per_rank: float
    memory: MemoryBreakdown
    concurrent_sequences: int
    cost_per_hour: float | None
    latency_score: float = Field(description="Relative per-token decode time (lower is faster).")
    footprint_gb: float = Field(
        description="Accelerator memory the replica needs at these settings, all ranks."
    )
    trust_remote_code: bool = False
    neuron_path: NeuronPath = Field(
        default="none", description="vllm-neuron or nxdi on Neuron plans; none on GPUs."
    )
    reason: str
    notes: list[str] = Field(default_factory=list)
    alternatives: list[Alternative] = Field(default_factory=list)
    recipe: RecipeComparison | None = None
    # The performance model's estimates (planner.performance) at the workload and SLO of the spec.
    layout: str = Field(default="", description="e.g. DP 8 + EP 8 on p5en.48xlarge.")
    data_parallel_size_local: int = Field(default=1, description="DP ranks per node (multi-node DP).")
    enable_eplb: bool = Field(default=False, description="Render --enable-eplb (wide EP across nodes).")
    batch_size: int = Field(default=0, description="Concurrent sequences per replica within the SLO.")
    kv_limit_sequences: int = Field(default=0, description="Workload-length sequences the KV cache holds.")
    tokens_per_second: float = Field(default=0.0, description="Output tokens/s per replica at batch_size.")
    requests_per_second: float = Field(default=0.0, description="Requests/s per replica (its capacity).")
    cost_per_million_tokens: float | None = Field(default=None, description="$ per million output tokens.")
    time_to_first_token_seconds: float = Field(default=0.0, description="Estimated TTFT, p95.")
    time_per_output_token_ms: float = Field(default=0.0, description="Estimated TPOT at batch_size.")
    target_replicas: int | None = Field(
        default=None, description="Replicas serving.target needs; None without a target."
    )

    @property
    def accelerators(self) -> int:
        return self.nodes * self.devices_per_node

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    def summary(self) -> PlanSummary:
        """What the status shows."""
        return PlanSummary(
            instance_type=self.instance_type,
            accelerator=self.accelerator_model,
            engine=self.engine,
            accelerators_per_replica=self.accelerators,
            nodes_per_replica=self.nodes,
            tensor_parallel_size=self.tensor_parallel_size,
            pipeline_parallel_size=self.pipeline_parallel_size,
            data_parallel_size=self.data_parallel_size,
            expert_parallel_size=self.expert_parallel_size,
            max_model_len=self.max_model_len,
            kv_cache_dtype=self.kv_cache_dtype,
            concurrent_sequences=self.concurrent_sequences,
            cost_per_hour=self.cost_per_hour,
            memory=self.memory,
            reason=self.reason,
            layout=self.layout or None,
            batch_size=self.batch_size,
            tokens_per_second=self.tokens_per_second,
            requests_per_second=self.requests_per_second,
            cost_per_million_tokens=self.cost_per_million_tokens,
            time_to_first_token_seconds=self.time_to_first_token_seconds,
            time_per_output_token_ms=self.time_per_output_token_ms,
            replicas=self.target_replicas,
            alternatives=[a.summary() for a in self.alternatives[:3]],
        )
