"""The MoE layer of one engine step: which experts a step touches, the fused-MoE kernel's rate, and the
messages that bring tokens to the experts.

Two ways vLLM spreads the experts over the ranks of a replica (`FusedMoEParallelConfig.make` in
vllm/model_executor/layers/fused_moe/config.py), both over all TP x DP ranks (`Layout.expert_split`):

* expert parallelism (`--enable-expert-parallel`): each rank owns E / (TP x DP) whole experts. vLLM's
  default all2all backend, `allgather_reducescatter` (`--all2all-backend`, vllm/config/parallel.py),
  dispatches with an all-gather of every DP rank's tokens over the DP group and combines with a
  reduce-scatter (`AgRsAll2AllManager` in vllm/distributed/device_communicators/all2all.py:
  `dispatch` calls `all_gatherv`, `combine` `reduce_scatterv`), not a sparse all-to-all of the top-k
  copies; at DP 1 the TP ranks already hold the same tokens and the experts' partial outputs are summed
  by the layer's TP all-reduce, as with MoE TP. The busiest EP rank sets the step's expert time
  (`ep_imbalance`). Neuron (NxD Inference) keeps an all-to-all of the top-k tokens;
* without it, with DP > 1: the experts are tensor-parallel over all TP x DP ranks (vLLM flattens TP across
  DP: moe_tp = DP x TP, moe_ep = 1, aiconfigurator's "moeTp 8, moeEp 1"), so every rank holds a slice of
  every expert's intermediate columns and runs every DP rank's tokens: the DP group all-gathers the
  tokens before each MoE layer and reduce-scatters the partial sums after it, the same messages as EP's.
  At DP 1 this is vLLM's plain TP (moe_tp = TP), its default: the planner tries it beside TP + EP.
"""

from __future__ import annotations

import math
from typing import Literal

from kubemoe.catalog.schema import InstanceEntry
from kubemoe.planner.context import Context, batching
from kubemoe.planner.layouts import Layout
from kubemoe.planner.settings import PlannerSettings


def compute_dtype_is_fp8(ctx: Context, inst: InstanceEntry, fp8_compute: bool) -> bool:
    weights = ctx.spec.serving.quantization or ctx.arch.native_dtype
    return weights == "fp8" and fp8_compute and inst.fp8_tflops is not None


def experts_touched(ctx: Context, tokens: float) -> float:
    """Expected share of a layer's experts that `tokens` routed tokens touch: 1 - (1 - k/E)^tokens."""
    arch = ctx.arch
    if not arch.is_moe:
        return 1.0
    miss: float = math.pow(1.0 - arch.experts_per_token / arch.num_experts, max(tokens, 0.0))
    return 1.0 - miss


def experts_touched_mixed(ctx: Context, layout: Layout, decode: float, prompt: float) -> float:
    """Expected share of experts a step touches with `decode` tokens and, on average, `prompt` prompt tokens.

    Prompts arrive whole (up to a chunk of maxNumBatchedTokens): a share q = prompt / (prompt length) of the
    steps carries one and touches experts for decode + a prompt, the rest for the decode tokens alone. The
    share touched is concave in the tokens, so spreading prompt tokens evenly over steps would overstate
    the expert weights a small batch reads.
    """
    if prompt <= 0:
        return experts_touched(ctx, decode)
    w = ctx.spec.serving.workload
    new = w.input_tokens * (1 - w.prefix_cache_hit_ratio)
    whole = max(1.0, min(new, float(batching(ctx, layout.instance)[0])))
    q = min(1.0, prompt / whole)
    return (1 - q) * experts_touched(ctx, decode) + q * experts_touched(ctx, decode + prompt / q)


def expert_columns(ctx: Context, layout: Layout) -> float:
    """Expert-intermediate columns one rank's fused-MoE GEMM computes: whole experts under EP, a
    1 / (TP x DP) slice without (vLLM shards the experts tensor-parallel over every rank of the replica)."""
    intermediate = ctx.arch.moe_intermediate_size or 4 * ctx.arch.hidden_size
    return intermediate / (1 if layout.expert_parallel else layout.expert_split)


def moe_gemm_efficiency(ctx: Context, layout: Layout, tokens: float, *, fp8_compute: bool) -> float | None:
    """Share of the datasheet rate (Rates.peak) the fused-MoE kernel reaches when the expert group routes
    `tokens` tokens in a step: the capability table's moeGemmEfficiency for the weight dtype, times
    M / (M + moeGemmTokensHalf) for M tokens per expert and n / (n + moeGemmColumnsHalf) for n
    expert-intermediate columns per rank (`expert_columns`); M counts the rows of the experts the step
    touches, and the tile's waste is at most M (half the rate), so a decode step's few rows per expert stay
    bound by the weights they read. None where the table has no figure for this chip and dtype (the dense
    efficiencies apply)."""
    arch, s, inst = ctx.arch, ctx.settings, layout.instance
    cap = ctx.capability(inst)
    if not arch.is_moe or cap is None:
        return None
    weights = ctx.spec.serving.quantization or arch.native_dtype
    dtype: Literal["bf16", "fp8", "mxfp4"] = "mxfp4" if weights == "mxfp4" else "bf16"
    if compute_dtype_is_fp8(ctx, inst, fp8_compute):
        dtype = "fp8"
    wide = cap.moe_gemm_efficiency.get(dtype)
    if wide is None:
        return None
    touched = experts_touched(ctx, tokens)
    if touched <= 0:
        return None
    rows = max(tokens, 0.0) * arch.experts_per_token / arch.num_experts / touched
    knee = cap.moe_gemm_columns_knee.get(dtype)
    return fused_moe_efficiency(s, wide, rows=rows, columns=expert_columns(ctx, layout), knee=knee)


def fused_moe_efficiency(
    s: PlannerSettings, wide: float, *, rows: float, columns: float, knee: float | None = None
) -> float:
    """`wide` x M / (M + min(M, moeGemmTokensHalf)) x n / (n + moeGemmColumnsHalf) for M rows per touched
    expert and n intermediate columns per rank: a GEMM tile wastes at most as many rows as it fills. Above
    a chip's `knee` (the capability table's moeGemmColumnsKnee) also x (knee / n) ^ moeGemmColumnsFall:
    B200's BF16 kernel runs Mixtral-8x7B's experts whole (MoE TP 1) at 0.24 of peak and at MoE TP 4 at 0.45."""
    filled = rows / (rows + min(rows, s.moe_gemm_tokens_half)) if rows > 0 else 0.0
    fall = (knee / columns) ** s.moe_gemm_columns_fall if knee is not None and columns > knee else 1.0
    return wide * filled * columns / (columns + s.moe_gemm_columns_half) * fall


def moe_comm_seconds(
    ctx: Context, layout: Layout, tokens: float, *, act: float, link: float, latency: float
) -> float:
    """Messages of one MoE layer in one step, `tokens` being each DP rank's tokens and `act` the bytes of
    one token's hidden state; `link` the one-direction bandwidth per rank and `latency` one collective's.

    * DP > 1 on GPUs, with EP or without: vLLM's all-gather of every DP rank's tokens and reduce-scatter of
      the outputs over the DP group (EP through the default allgather_reducescatter backend), each ring
      moving (dp - 1) x tokens x act per rank (k does not multiply: a token travels once, to every rank);
    * EP on Neuron: a dispatch and a combine, each rank's tokens to k experts, (ep - 1) / ep of them remote;
    * DP 1 (TP, with EP or without): nothing beyond the layer's TP all-reduce, counted with the attention's.
    """
    arch, dp, tp = ctx.arch, layout.dp, layout.tp
    gpu = layout.instance.accelerator_kind == "gpu"
    if layout.expert_parallel and layout.expert_split > 1 and not gpu:
        ep = layout.expert_split
        routed = tokens if dp > 1 else tokens / tp  # TP ranks share one DP rank's tokens
        sent = routed * arch.experts_per_token * act * (ep - 1) / ep
        return 2 * (latency + sent / link)
    if dp > 1:
        return 2 * (latency + (dp - 1) * tokens * act / link)
    return 0.0


def eplb_helps(ctx: Context, layout: Layout) -> bool:
    """Expert-parallel load balancing pays where one EP group spans nodes with many experts: a hot expert
    then stalls every rank of the step (vLLM blog, wide-EP serving). vLLM implements it for these families.
    The plan renders `--enable-eplb` where this holds, and the step is costed with epExpertImbalanceEplb."""
    family = ctx.entry.family if ctx.entry else ""
    return (
        layout.expert_parallel
        and layout.nodes > 1
        and layout.dp > 1
        and ctx.arch.num_experts >= 64
        and family in {"deepseek_v2", "deepseek_v3", "kimi_k2", "qwen3_moe"}
    )


def ep_imbalance(ctx: Context, layout: Layout) -> float:
    """The busiest EP rank's expert time over the mean rank's: PlannerSettings.epExpertImbalance, or
    epExpertImbalanceEplb with --enable-eplb, at the largest EP size the table holds not above this one
    (1 without EP, and on Neuron, whose kernels the table was not measured on)."""
    if not layout.expert_parallel or layout.expert_split < 2 or layout.instance.accelerator_kind != "gpu":
        return 1.0
    s = ctx.settings
    table = s.ep_expert_imbalance_eplb if eplb_helps(ctx, layout) else s.ep_expert_imbalance
    sizes = [n for n in table if n <= layout.expert_split]
    return table[max(sizes)] if sizes else 1.0
