"""The plan: a value that can be printed, compared and tested; executing it is the renderer's job."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from kubemoe.api.moemodel import MemoryBreakdown, PlanSummary


class PlanReason(StrEnum):
    """Stable reasons for `Planned=False`; each says what to change."""

    UNKNOWN_MODEL = "UnknownModel"
    UNKNOWN_INSTANCE_TYPE = "UnknownInstanceType"
    NO_MATCHING_INSTANCE = "NoMatchingInstance"
    INSUFFICIENT_MEMORY = "InsufficientMemory"
    INVALID_PARALLELISM = "InvalidParallelism"
    INVALID_SERVING = "InvalidServing"


class Alternative(BaseModel):
    """A layout the planner looked at and did not choose, with why."""

    model_config = ConfigDict(frozen=True)

    instance_type: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    feasible: bool
    cost_per_hour: float | None = None
    accelerators: int
    concurrent_sequences: int = 0
    reason: str


class RecipeComparison(BaseModel):
    """The planner's footprint next to a published vLLM recipe's minimum memory."""

    model_config = ConfigDict(frozen=True)

    recipe_gb: float
    planned_gb: float
    ratio: float = Field(description="planned / recipe")
    source: str


class Plan(BaseModel):
    """A feasible placement of one model replica."""

    model_config = ConfigDict(frozen=True)

    model_id: str
    instance_type: str
    accelerator_kind: str
    accelerator_model: str
    engine: str
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
    neuron_path: str = Field(default="none", description="vllm-neuron or nxdi on Neuron plans; none on GPUs.")
    reason: str
    notes: list[str] = Field(default_factory=list)
    alternatives: list[Alternative] = Field(default_factory=list)
    recipe: RecipeComparison | None = None

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
        )
