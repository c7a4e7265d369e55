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

    # The performance model (planner.performance). Efficiencies are the share of a datasheet rate vLLM
    # reaches; they are calibrated against published measurements and aiconfigurator in
    # tests/unit/test_recipe_calibration.py, where each figure's source is cited.
    min_concurrency: int = Field(
        default=16,
        ge=1,
        le=100000,
        description="Fewest concurrent sequences a replica must hold within the SLO to be a useful plan: "
        "below it a plan serves so few users at once that its $/token is meaningless.",
    )
    hbm_efficiency: float = Field(
        default=0.75,
        gt=0,
        le=1,
        description="Share of HBM bandwidth decode reaches, one figure for all weight and KV streams. "
        "aiconfigurator 0.12.0's measured vLLM 0.24.0 kernels (gemm_perf/moe_perf.parquet, 1-128 tokens, "
        "weights >= 32 MB) bracket it: dense BF16 GEMMs 0.63-0.80 (H100/H200/B200), per-tensor FP8 "
        "0.42-0.69, block-FP8 (DeepGEMM) 0.23-0.44 on Hopper, fused-MoE experts 0.6-0.85 once 32+ tokens "
        "touch them; splitting it by kernel moved the aiconfigurator rows further off (46 of 64 within 25 % "
        "against 50), so it stays one calibrated blend. 0.75 since prompts are scheduled whole "
        "(performance.operating_point): the aiconfigurator rows give 67 of 71 within 25 % there against 63 "
        "at 0.6 (0.7: 65, 0.8: 66; hack/calibration/table.py).",
    )
    decode_compute_efficiency: float = Field(
        default=0.5, gt=0, le=1, description="Share of tensor FLOPs decode GEMMs reach."
    )
    attention_efficiency: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Share of tensor FLOPs decode attention reaches (MLA is FLOP-heavy).",
    )
    fp8_efficiency: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of the FP8 rate block-scaled FP8 GEMMs reach relative to dense BF16 ones "
        "(per-block scales and small expert GEMMs).",
    )
    prefill_efficiency: float = Field(
        default=0.4,
        gt=0,
        le=1,
        description="Share of tensor FLOPs prompt tokens reach (in chunked-prefill steps and alone).",
    )
    moe_gemm_tokens_half: float = Field(
        default=64.0,
        gt=0,
        description="Tokens per expert at which a fused-MoE GEMM reaches half its wide-GEMM efficiency "
        "(the capability table's moeGemmEfficiency): fitted with moeGemmColumnsHalf to aiconfigurator "
        "0.12.0's measured vLLM 0.24.0 MoE kernels (H100/H200/B200, 2048-16384 tokens, power-law routing).",
    )
    moe_gemm_columns_half: float = Field(
        default=300.0,
        gt=0,
        description="Expert-intermediate columns per rank at which a fused-MoE GEMM reaches half its "
        "wide-GEMM efficiency: TP slices each expert's columns, so Qwen3-235B's 1536 over TP 8 (192) runs "
        "at 0.39 of the wide rate (same fit as moeGemmTokensHalf).",
    )
    moe_gemm_columns_fall: float = Field(
        default=0.3,
        ge=0,
        le=2,
        description="Exponent of the fall of a fused-MoE kernel's rate above the capability table's "
        "moeGemmColumnsKnee: (knee / columns) ^ this. Fitted with that knee (768) and B200's BF16 "
        "moeGemmEfficiency to aiconfigurator 0.12.0's measured vLLM 0.24.0 B200 BF16 kernels "
        "(hack/calibration/moe_kernels.py).",
    )
    ep_expert_imbalance: dict[int, float] = Field(
        default_factory=lambda: {2: 1.26, 4: 1.77, 8: 2.54, 16: 3.77, 32: 5.73},
        description="With expert parallelism the busiest rank sets the step: its expert time over an evenly "
        "loaded rank's, by EP size (the largest size listed not above the layout's applies; 1 below the "
        "smallest). Median over H100/H200/B200 of aiconfigurator 0.12.0's measured vLLM 0.24.0 fused-MoE "
        "kernels, EP n against TP n of the same shapes with power-law routing (alpha 1.01), at kubemoe's "
        "columns-per-rank factor (hack/calibration/ep_kernels.py): routing skew plus the EP path's own cost "
        "per rank.",
    )
    ep_expert_imbalance_eplb: dict[int, float] = Field(
        default_factory=lambda: {2: 1.16, 4: 1.43, 8: 1.82, 16: 2.85, 32: 4.78},
        description="epExpertImbalance with --enable-eplb: the same comparison with aiconfigurator's balanced "
        "routing (every expert equally loaded), the limit EPLB's rebalancing aims at.",
    )
    step_overhead_ms: float = Field(
        default=1.0, ge=0, description="Fixed time of a decode step: scheduling, sampling, kernel launches."
    )
    layer_overhead_us: float = Field(
        default=50.0,
        ge=0,
        description="Time per layer and step that does not shrink with the batch or the weights: the small "
        "kernels every layer runs (norms, rotary, routing, quantisation), each with a floor of a few us. "
        "Of the same order as aiconfigurator's measured vLLM 0.24.0 fused-MoE layer at one token on H200 "
        "(Qwen3-235B 32 us, gpt-oss-120b 39 us, DeepSeek-V3 55 us at MoE TP 8), most of it launch floor.",
    )
    collective_latency_us: float = Field(
        default=10.0, ge=0, description="Latency of one collective over NVLink/NeuronLink."
    )
    pcie_collective_latency_us: float = Field(
        default=30.0, ge=0, description="Latency of one collective over PCIe."
    )
    inter_node_latency_factor: float = Field(
        default=3.0,
        ge=1,
        description="A collective or stage hop across nodes (EFA) costs this many times more.",
    )
    network_efficiency: float = Field(default=0.7, gt=0, le=1, description="Share of EFA bandwidth reached.")
    pcie_fallback_gbps: float = Field(
        default=64.0, gt=0, description="Intra-node bandwidth when the catalog has none (PCIe Gen4 x16)."
    )
    pp_bubble: float = Field(
        default=0.1, ge=0, description="Extra decode time per token with pipeline stages."
    )
    ttft_p95_factor: float = Field(
        default=1.5, ge=1, description="p95 TTFT over the unloaded prefill time (queueing behind other work)."
    )
