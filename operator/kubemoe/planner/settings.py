"""Planner settings: the figures vLLM measures at start-up but publishes no constants for.

vLLM sizes the KV cache as `device memory x gpu_memory_utilization - (weights + activation peak + non-torch
memory) - CUDA-graph estimate` (vllm/v1/worker/gpu_worker.py, determine_available_memory). Weights and the
KV cache follow from the model; the rest is estimated here. Every figure can be changed (the CLI's
`--overhead-gib`, the operator's settings) without a code change.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PlannerSettings(BaseModel):
    """Knobs of the memory model and the search."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Figures from vLLM's own start-up logs ("non_torch_memory takes ...", "Graph capturing finished ...,
    # took ..."): 0.15-0.33 GiB of non-torch memory on one GPU, 1.27 GiB with tensor parallelism (NCCL),
    # 0.13 GiB of CUDA graphs for a small model and up to about 0.5 GiB for large ones (vllm-project/vllm
    # #14452, #15340, #11743; generative-computing/mellea#416).
    gpu_context_gib: float = Field(
        default=0.3, ge=0, description="CUDA context and other non-torch memory per GPU."
    )
    gpu_cuda_graphs_gib: float = Field(
        default=0.5, ge=0, description="CUDA-graph capture pool per GPU (vLLM profiles it since v0.21)."
    )
    gpu_nccl_gib: float = Field(
        default=1.0, ge=0, description="NCCL buffers per GPU when the replica spans >1 GPU."
    )
    neuron_runtime_gib: float = Field(
        default=1.0, ge=0, description="Neuron runtime scratch and collectives per NeuronCore."
    )
    activation_dtype_bytes: int = Field(default=2, ge=1, description="bf16 activations.")
    max_nodes_per_replica: int = Field(
        default=4, ge=1, le=64, description="Largest pipeline (nodes) to consider."
    )
    default_max_model_len_cap: int = Field(
        default=32768, ge=128, description="maxModelLen when unset: the model's context, capped at this."
    )
