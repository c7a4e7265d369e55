"""The memory model: bytes of weights, KV cache and activations held by one rank (a GPU or a NeuronCore).

All functions are pure arithmetic on the architecture and the parallel layout, so each figure in
`kubemoe plan` can be recomputed by hand. Formulas follow vLLM 0.33 (`vllm/v1/kv_cache_interface.py` and
`vllm/v1/worker/gpu_worker.py` in its PyPI wheel):

* weights: parameters x bytes per parameter. Expert weights split over all TP x DP ranks (whole experts
  under EP, tensor-parallel slices of each without it: vLLM's MoE TP is DP x TP); the rest over TP. PP
  splits both by stages.
* KV per token per layer: `2 x max(1, kv_heads // TP) x head_dim x bytes` for MHA/GQA (TP shards heads
  down to one per rank), `(kv_lora_rank + qk_rope_head_dim) x bytes` for MLA on *every* rank.
  Windowed layers (gpt-oss, Llama 4) hold at most `sliding_window` tokens.
* activation peak: vLLM profiles a dummy forward pass of `max_num_batched_tokens` tokens, plus a sampler
  pass over `max_num_seqs` rows of fp32 logits; with DP and the experts TP-sharded over the DP ranks, the
  MoE layers run every DP rank's tokens, gathered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kubemoe.api.moemodel import Architecture

GIB = 1024**3
GB = 1000**3
#: Peak / live activation bytes under PyTorch's caching allocator (see activation_bytes_per_rank).
ALLOCATOR_PEAK_FACTOR = 1.5
#: vLLM's VLLM_FUSED_MOE_CHUNK_SIZE default (vllm/envs.py): the fused-MoE kernel runs at most this many
#: tokens at once, so its buffers for a DP group's gathered tokens stop growing there.
FUSED_MOE_CHUNK_TOKENS = 16 * 1024

# Bytes per parameter of a weight format. MXFP4 stores 4-bit values with one 8-bit scale per 32: 4.25 bits.
_BYTES_PER_PARAM: dict[str, float] = {
    "float32": 4.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "mxfp4": 4.25 / 8,
}
# What `serving.quantization` does to the weights: (expert bytes/param, other bytes/param); None = unchanged.
_QUANTIZATION: dict[str, tuple[float | None, float | None]] = {
    "fp8": (1.0, 1.0),
    "awq": (0.5, 0.5),
    "gptq": (0.5, 0.5),
    "bitsandbytes": (0.5, 0.5),
    "mxfp4": (4.25 / 8, None),
    "experts_int8": (1.0, None),
    "compressed-tensors": (None, None),  # a checkpoint format: its dtype is the architecture's nativeDtype
}


@dataclass(frozen=True)
class WeightSplit:
    """Weight bytes of the whole model, split into routed experts and everything else."""

    expert_bytes: float
    other_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.expert_bytes + self.other_bytes


def expert_params_b(arch: Architecture) -> float:
    """Billions of parameters in routed experts.

    From the shapes when known: each MoE layer has E experts of gate, up and down projections
    (3 x hidden x intermediate). Otherwise from the totals: total = shared + E*e and active = shared + k*e,
    so e = (total - active) / (E - k) -- less exact, because vendors count "active" differently.
    """
    if not arch.is_moe:
        return 0.0
    if arch.moe_intermediate_size:
        moe_layers = (arch.num_layers - arch.dense_layers) // arch.moe_layer_interval
        from_shapes = moe_layers * arch.num_experts * 3 * arch.hidden_size * arch.moe_intermediate_size / 1e9
        if from_shapes <= arch.total_params_b:
            return from_shapes
    if arch.active_params_b is None or arch.num_experts <= arch.experts_per_token:
        return 0.0
    per_expert = (arch.total_params_b - arch.active_params_b) / (arch.num_experts - arch.experts_per_token)
    return max(0.0, min(arch.total_params_b, per_expert * arch.num_experts))


def weight_split(arch: Architecture, quantization: str | None) -> WeightSplit:
    """Weight bytes for the checkpoint's dtype, or for `quantization` when the user asks for one.

    Native MXFP4 checkpoints (gpt-oss) quantize only the experts; attention and embeddings stay bf16.
    """
    experts = expert_params_b(arch) * 1e9
    others = arch.total_params_b * 1e9 - experts
    native = _BYTES_PER_PARAM[arch.native_dtype]
    expert_bpp, other_bpp = native, native
    if arch.native_dtype == "mxfp4":
        other_bpp = _BYTES_PER_PARAM["bfloat16"]
    if quantization is not None:
        q_expert, q_other = _QUANTIZATION[quantization]
        expert_bpp = q_expert if q_expert is not None else expert_bpp
        other_bpp = q_other if q_other is not None else other_bpp
    return WeightSplit(expert_bytes=experts * expert_bpp, other_bytes=others * other_bpp)


def weights_per_rank(split: WeightSplit, *, tp: int, pp: int, expert_split: int) -> float:
    """Bytes of weights one rank holds: experts over the expert split (EP size, or TP), the rest over TP."""
    return (split.expert_bytes / expert_split + split.other_bytes / tp) / pp


def kv_bytes_per_token_per_rank(arch: Architecture, *, tp: int, pp: int, kv_dtype_bytes: int) -> float:
    """KV-cache bytes one rank stores per token of context, counting every layer as full attention.

    Windowed layers are handled by `kv_bytes_per_sequence_per_rank`, which caps their tokens.
    """
    layers = math.ceil(arch.num_layers / pp)
    return layers * _kv_bytes_per_token_per_layer(arch, tp=tp, kv_dtype_bytes=kv_dtype_bytes)


def _kv_bytes_per_token_per_layer(arch: Architecture, *, tp: int, kv_dtype_bytes: int) -> float:
    if arch.is_mla:
        assert arch.kv_lora_rank is not None
        assert arch.qk_rope_head_dim is not None
        # One latent "head" of kv_lora_rank + rope dims, replicated on every TP rank (vLLM: use_mla -> 1 head).
        return (arch.kv_lora_rank + arch.qk_rope_head_dim) * kv_dtype_bytes
    heads_per_rank = max(1, arch.num_kv_heads // tp)
    return 2 * heads_per_rank * arch.resolved_head_dim * kv_dtype_bytes


def kv_bytes_per_sequence_per_rank(
    arch: Architecture, *, tokens: int, tp: int, pp: int, kv_dtype_bytes: int
) -> float:
    """KV bytes one rank needs for one sequence of `tokens` tokens (windowed layers capped at the window).

    With pipeline parallelism the heaviest stage decides: it holds ceil(layers / PP) layers (vLLM gives the
    first stages the remainder), counted as full-attention layers first, which bounds it from above.
    """
    per_layer = _kv_bytes_per_token_per_layer(arch, tp=tp, kv_dtype_bytes=kv_dtype_bytes)
    stage_layers = math.ceil(arch.num_layers / pp)
    full = min(arch.num_layers - arch.sliding_window_layers, stage_layers)
    windowed = stage_layers - full
    window_tokens = min(tokens, arch.sliding_window or tokens)
    return per_layer * (full * tokens + windowed * window_tokens)


def activation_bytes_per_rank(
    arch: Architecture,
    *,
    batched_tokens: int,
    max_num_seqs: int,
    tp: int,
    expert_split: int,
    dtype_bytes: int,
    gathered: int = 1,
) -> float:
    """Peak activation memory of vLLM's profiling pass on one rank.

    The forward pass of `batched_tokens` tokens keeps about four hidden-size tensors live (residual, normed
    input, attention output, MLP output) plus, for each routed copy of a token (`experts_per_token` of
    them), the fused-MoE kernel's three buffers: gate+up and activation (3 x intermediate, sharded over the
    expert split) and the expert output (hidden size) before the top-k sum. The sampler pass materialises fp32
    logits for `max_num_seqs` rows of the vocabulary. Grows with maxNumBatchedTokens, hiddenSize and the
    MoE intermediate size. `gathered` DP ranks' tokens reach each rank's MoE layers where the experts are
    TP-sharded over the DP group (DP without EP): their gathered hidden states, and the kernel's buffers
    for them, up to FUSED_MOE_CHUNK_TOKENS at once (never fewer than one rank's own tokens). PyTorch's
    caching allocator holds freed blocks, so the peak vLLM logs ("PyTorch
    activation peak memory") runs about 1.5x the live tensors: 2.38 GiB logged for an 8B model at 8192
    tokens (kubernetes-sigs/gateway-api-inference-extension#550) against 1.4 GiB of live tensors here.
    """
    k = arch.experts_per_token if arch.is_moe else 1
    intermediate = arch.moe_intermediate_size or 4 * arch.hidden_size
    split = expert_split if arch.is_moe else tp
    moe_tokens = batched_tokens
    if gathered > 1 and arch.is_moe:
        moe_tokens = max(batched_tokens, min(batched_tokens * gathered, FUSED_MOE_CHUNK_TOKENS))
    forward = dtype_bytes * (
        batched_tokens * 4 * arch.hidden_size
        + moe_tokens * k * (3 * intermediate / split + arch.hidden_size)
        + batched_tokens * (gathered - 1 if arch.is_moe else 0) * arch.hidden_size
    )
    logits = max_num_seqs * arch.vocab_size * 4
    return ALLOCATOR_PEAK_FACTOR * forward + logits
