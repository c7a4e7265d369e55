"""The performance model: time to first token, time per output token, tokens/s and $ per million tokens.

Roofline arithmetic per layout, so every figure can be redone by hand (each constant lives in
`PlannerSettings` and is calibrated in tests/unit/test_recipe_calibration.py against aiconfigurator and
published vLLM measurements):

* one engine step of a micro-batch on one pipeline stage runs `m` decoding sequences and `p` prompt tokens
  of chunked prefill; each kernel group costs max(memory time, compute time), then communication and a fixed
  per-step overhead are added:
  - memory time = (dense weights / TP + expert weights / expert split x share of experts the step's tokens
    touch + the decode batch's KV cache on the rank) / (HBM bandwidth x hbmEfficiency);
  - compute time = 2 x active parameters x (m / decodeComputeEfficiency + p / prefillEfficiency) / tensor
    FLOPs, plus decode attention over the context (for MLA at least the kernel's query-head tile per rank,
    the capability table's mlaHeadTile) and the prompt tokens' attention;
  - with expert parallelism the experts' FLOP time is the busiest EP rank's (planner.moe.ep_imbalance);
  - communication = per layer two TP all-reduces and per MoE layer at DP > 1 the DP group's all-gather
    and reduce-scatter of the tokens (vLLM's default EP dispatch and its MoE TP alike; on Neuron EP's
    all-to-all; planner.moe), each `latency + bytes / one-direction link bandwidth` (NVLink/NeuronLink
    inside a node, the node's EFA share of each device across nodes);
* on GPUs (vLLM's chunked prefill), in steady state m / outputTokens sequences finish per step and as
  many start, so q = m x new input tokens / output tokens prompt tokens arrive per step. vLLM's scheduler
  gives a waiting prompt the whole token budget the decodes leave (one partial prefill at a time), so
  while q is below a whole prompt P = min(new, maxNumBatchedTokens - m), a share q / P of the steps
  carries P prompt tokens and the rest decode alone (aiconfigurator's vLLM agg model schedules them the
  same way); beyond it every step carries q. A step holds at most maxNumBatchedTokens tokens. On Neuron,
  which encodes prompts in passes of their own, p = 0 and the TPOT users see is the step's TPOT / (1 -
  share of time spent in prefill);
* time per output token (TPOT) = PP x stage step x (1 + ppBubble) when PP > 1: a token passes every stage;
  PP micro-batches are in flight, so tokens/s = sequences / TPOT and requests/s = tokens/s / outputTokens;
* TTFT p95 = ttftP95Factor x (one request's prefill alone on a DP rank's TP group, with its all-reduces,
  + one step per chunk of maxNumBatchedTokens).

The largest batch that meets the SLO, the step budget and the KV cache (at the workload's length, input +
output) is found by bisection; below `minConcurrency` sequences a plan is not useful and is infeasible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from kubemoe.planner import memory as mem
from kubemoe.planner.context import Context, batching
from kubemoe.planner.layouts import Layout
from kubemoe.planner.moe import (
    compute_dtype_is_fp8,
    ep_imbalance,
    experts_touched_mixed,
    moe_comm_seconds,
    moe_gemm_efficiency,
)
from kubemoe.planner.sizing import Sizing


@dataclass(frozen=True)
class Estimate:
    """What one replica of a layout delivers at its largest batch within the SLO."""

    batch: int  # sequences in flight per replica
    kv_limit: int  # sequences the KV cache holds at the workload's length
    tpot_ms: float  # time per output token users see, at `batch`
    ttft_seconds: float  # p95 estimate
    tokens_per_second: float  # output tokens/s per replica
    requests_per_second: float
    cost_per_million_tokens: float | None
    problem: str | None  # why the SLO or the minimum concurrency cannot be met; None when they can


@dataclass(frozen=True)
class Rates:
    """Per-rank hardware rates of a layout, in bytes/s and FLOP/s."""

    hbm: float
    flops: float
    intra: float  # one-direction link bandwidth to the other ranks of the node
    inter: float  # one-direction network bandwidth per rank across nodes
    collective_latency: float  # seconds per collective inside a node
    peak: float = 0.0  # datasheet dense FLOP/s of the compute dtype per rank (no efficiency applied)
    fp8: bool = False  # GEMMs run at the FP8 rate


def rates(ctx: Context, layout: Layout, *, fp8_compute: bool) -> Rates:
    inst, s = layout.instance, ctx.settings
    cores = inst.cores_per_device
    tflops = inst.fp8_tflops if compute_dtype_is_fp8(ctx, inst, fp8_compute) else inst.bf16_tflops
    assert tflops is not None
    # Vendors quote bidirectional link bandwidth; a collective's critical path is one direction.
    link = (inst.interconnect_gbps or s.pcie_fallback_gbps) / 2 / cores
    pcie = inst.interconnect.lower().startswith("pcie")
    network = inst.network_gbps / 8 / inst.ranks_per_node * s.network_efficiency
    fp8 = compute_dtype_is_fp8(ctx, inst, fp8_compute)
    return Rates(
        hbm=inst.memory_bandwidth_gbps / cores * 1e9 * s.hbm_efficiency,
        flops=tflops / cores * 1e12 * (s.fp8_efficiency if fp8 else 1.0),
        peak=tflops / cores * 1e12,
        fp8=fp8,
        intra=link * 1e9,
        inter=network * 1e9,
        collective_latency=(s.pcie_collective_latency_us if pcie else s.collective_latency_us) * 1e-6,
    )


def _attention_width(ctx: Context) -> int:
    """Multiply-adds per head per context token in decode: q.k plus p.v."""
    arch = ctx.arch
    if arch.is_mla:
        assert arch.kv_lora_rank is not None
        assert arch.qk_rope_head_dim is not None
        # vLLM decodes MLA absorbed: scores and values against the latent (kv_lora_rank + rope dims).
        return 2 * arch.kv_lora_rank + arch.qk_rope_head_dim
    return 2 * arch.resolved_head_dim


def embedding_params(ctx: Context) -> float:
    """Parameters of the input embedding table (vocab x hidden), at most half the non-expert ones.

    A step reads only the rows of its tokens, so the table is not streamed like the other weights, and a
    lookup is no GEMM; the LM head (its own matrix: kubemoe's catalog models do not tie them) is read every
    step but in prefill computes logits for a prompt's last position only."""
    arch = ctx.arch
    others = arch.total_params_b * 1e9 - mem.expert_params_b(arch) * 1e9
    return min(arch.vocab_size * arch.hidden_size, others / 2)


def decode_heads_per_rank(ctx: Context, layout: Layout) -> float:
    """Query heads one rank's decode attention kernel computes: its share of the heads, or for MLA at least
    the kernel's query tile (the capability table's mlaHeadTile), which a TP rank's few heads are padded to."""
    heads = ctx.arch.num_attention_heads / layout.tp
    cap = ctx.capability(layout.instance)
    if ctx.arch.is_mla and cap is not None and cap.mla_head_tile is not None:
        return max(heads, float(cap.mla_head_tile))
    return heads


def stage_step_seconds(
    ctx: Context,
    layout: Layout,
    split: mem.WeightSplit,
    r: Rates,
    m: float,
    *,
    p: float = 0.0,
) -> float:
    """One engine step through one pipeline stage: `m` decoding sequences per DP rank plus `p` prompt tokens
    of chunked prefill in the same step (on average over the DP ranks). Prefill tokens share the step's weight stream (a mixed step is bound by its memory traffic or by its FLOPs,
    whichever is larger), and add their FLOPs and messages."""
    arch, s, w = ctx.arch, ctx.settings, ctx.spec.serving.workload
    tp, pp, dp = layout.tp, layout.pp, layout.dp
    layers = arch.num_layers / pp
    moe_layers = (arch.num_layers - arch.dense_layers) / arch.moe_layer_interval / pp if arch.is_moe else 0.0
    tokens = m + p  # tokens each DP rank runs through the stage this step
    tokens_ep = tokens * dp  # tokens the expert group routes: every DP rank's, with EP or without
    context = w.input_tokens + w.output_tokens / 2
    kv = m * mem.kv_bytes_per_sequence_per_rank(
        arch, tokens=int(context), tp=tp, pp=pp, kv_dtype_bytes=ctx.kv_dtype_bytes
    )
    expert_params = mem.expert_params_b(arch) * 1e9
    other_params = arch.total_params_b * 1e9 - expert_params
    active_expert_params = expert_params * (arch.experts_per_token / arch.num_experts if arch.is_moe else 1.0)
    # FLOP time of one token's GEMMs per parameter: decode tokens at the decode efficiency, prompt tokens at
    # the prefill one.
    per_param = 2 * (m / s.decode_compute_efficiency + p / s.prefill_efficiency) / r.flops

    embed = embedding_params(ctx)
    streamed = split.other_bytes * (1 - embed / other_params)  # all but the embedding table
    dense_flops = (
        2 * (m * (other_params - embed) / s.decode_compute_efficiency)
        + 2 * p * (other_params - 2 * embed) / s.prefill_efficiency
    ) / r.flops
    # Each group of kernels runs on its own, bound by its memory traffic or its FLOPs, one after another.
    dense = max(streamed / tp / pp / r.hbm, dense_flops / tp / pp)
    touched = experts_touched_mixed(ctx, layout, m * dp, p * dp)
    moe_eff = moe_gemm_efficiency(ctx, layout, tokens_ep, fp8_compute=r.fp8)
    if moe_eff is None or tokens_ep <= 0:
        expert_flops = active_expert_params * dp / layout.expert_split / pp * per_param
    else:  # the fused-MoE kernel's measured rate, one grouped GEMM for decode and prompt tokens alike
        expert_flops = 2 * active_expert_params * tokens_ep / layout.expert_split / pp / (r.peak * moe_eff)
    expert_flops *= ep_imbalance(ctx, layout)  # with EP the busiest rank's experts set the step
    experts = max(split.expert_bytes / layout.expert_split / pp * touched / r.hbm, expert_flops)
    decode_flops = 2 * m * context * layers * decode_heads_per_rank(ctx, layout) * _attention_width(ctx)
    new = w.input_tokens * (1 - w.prefix_cache_hit_ratio)
    prompt_flops = p * _prefill_attention_flops_per_token(ctx, new) / tp / pp
    attention = max(kv / r.hbm, decode_flops / (r.flops * s.attention_efficiency)) + prompt_flops / (
        r.flops * s.prefill_efficiency
    )
    link = r.intra if layout.nodes == 1 or layout.pp > 1 else r.inter
    act = s.activation_dtype_bytes * arch.hidden_size
    comm = 0.0
    if tp > 1:
        # Two all-reduces per layer (attention out, MLP out), ring: 2 (tp-1)/tp of the message each way.
        comm += layers * 2 * (r.collective_latency + 2 * (tp - 1) / tp * tokens * act / r.intra)
    if moe_layers:
        latency = r.collective_latency * (1 if layout.nodes == 1 else s.inter_node_latency_factor)
        comm += moe_layers * moe_comm_seconds(ctx, layout, tokens, act=act, link=link, latency=latency)
    if pp > 1:
        comm += r.collective_latency * s.inter_node_latency_factor + tokens * dp * act / r.inter
    fixed = s.step_overhead_ms * 1e-3 / pp + layers * s.layer_overhead_us * 1e-6
    return dense + experts + attention + comm + fixed


def _prefill_attention_flops_per_token(ctx: Context, new: float) -> float:
    """Attention FLOPs of one prompt token (all layers, all heads), over the mean context of a prefill that
    computes `new` tokens after a cached prefix: q.k and p.v against input - new/2 earlier tokens."""
    arch, w = ctx.arch, ctx.spec.serving.workload
    return (
        2
        * arch.num_layers
        * arch.num_attention_heads
        * 2
        * arch.resolved_head_dim
        * (w.input_tokens - new / 2)
    )


def prefill_seconds(ctx: Context, layout: Layout, split: mem.WeightSplit, r: Rates) -> float:
    """Time of one request's prefill alone on one DP rank's TP group (all stages in turn): its FLOPs at the
    prefill efficiency plus the TP all-reduces of its activations, or at least one read of the rank's
    weights (short prompts on big MoE models are memory-bound)."""
    arch, s, w = ctx.arch, ctx.settings, ctx.spec.serving.workload
    new = w.input_tokens * (1 - w.prefix_cache_hit_ratio)
    expert_params = mem.expert_params_b(arch) * 1e9
    active = arch.total_params_b * 1e9 - expert_params
    active += expert_params * (arch.experts_per_token / arch.num_experts if arch.is_moe else 1.0)
    active -= 2 * embedding_params(ctx)  # a lookup, and logits for the last position only
    flops = 2 * active * new + new * _prefill_attention_flops_per_token(ctx, new)
    comm = 0.0
    if layout.tp > 1:
        act = s.activation_dtype_bytes * arch.hidden_size
        tp = layout.tp
        comm = arch.num_layers * 2 * (r.collective_latency + 2 * (tp - 1) / tp * new * act / r.intra)
    weights = (split.other_bytes / layout.tp + split.expert_bytes / layout.expert_split) / r.hbm
    return max(flops / (r.flops * layout.tp * s.prefill_efficiency) + comm, weights)


class Point(NamedTuple):
    """What a replica delivers with a given number of sequences per DP rank."""

    tpot: float  # seconds per output token users see
    ttft: float  # p95 seconds
    tokens_per_second: float
    requests_per_second: float
    step_tokens: float  # tokens of the largest engine step on a DP rank: decode plus the prompt(s) in it


def operating_point(
    ctx: Context, layout: Layout, split: mem.WeightSplit, r: Rates, n: int, *, prefill: float
) -> Point:
    """TPOT, TTFT, throughput and step size with `n` sequences per DP rank in steady state; `prefill` is
    `prefill_seconds` of the layout (one request's prefill alone)."""
    s, w = ctx.settings, ctx.spec.serving.workload
    new = w.input_tokens * (1 - w.prefix_cache_hit_ratio)
    budget = batching(ctx, layout.instance)[0]
    chunk = max(1, math.ceil(new / budget))
    m = n / layout.pp
    bubble = 1 + s.pp_bubble if layout.pp > 1 else 1
    p = 0.0
    if layout.instance.accelerator_kind == "gpu":
        # vLLM's chunked prefill: in steady state m / outputTokens sequences finish per step and as many
        # start, m x new / output prompt tokens per step on average. The scheduler gives a waiting prompt
        # all of the step's token budget the decodes leave (one partial prefill at a time), so while fewer
        # than a whole prompt's tokens arrive per step, that share of the steps carries a whole prompt (up
        # to the budget) and the others decode alone: a prompt is not hidden under the weights a decode
        # step reads anyway.
        p = m * new / w.output_tokens
        whole = max(1.0, min(new, budget - m))
        if p < whole:
            share = p / whole
            decode_only = stage_step_seconds(ctx, layout, split, r, m)
            stage = share * stage_step_seconds(ctx, layout, split, r, m, p=whole) + (1 - share) * decode_only
            p = whole
        else:
            stage = stage_step_seconds(ctx, layout, split, r, m, p=p)
        tpot = stage * layout.pp * bubble
        tps = n * layout.dp / tpot
    else:
        # Neuron encodes prompts in passes of their own: the replica is busy with prefill rps x prefill
        # of the time, and the TPOT users see stretches by 1 / (1 - that share).
        stage = stage_step_seconds(ctx, layout, split, r, m)
        step_tpot = stage * layout.pp * bubble
        rps = 1 / (prefill + w.output_tokens * step_tpot / (n * layout.dp))
        tpot = step_tpot / (1 - min(0.95, rps * prefill))
        tps = rps * w.output_tokens
    ttft = s.ttft_p95_factor * (prefill + chunk * stage * layout.pp)
    return Point(tpot, ttft, tps, tps / w.output_tokens, m + p)


def estimate(
    ctx: Context, layout: Layout, sizing: Sizing, split: mem.WeightSplit, fp8_compute: bool
) -> Estimate:
    """The largest batch within the SLO and the KV cache, and what it delivers."""
    s, serving = ctx.settings, ctx.spec.serving
    slo, w = serving.slo, serving.workload
    r = rates(ctx, layout, fp8_compute=fp8_compute)
    _, max_seqs = batching(ctx, layout.instance)
    per_seq = mem.kv_bytes_per_sequence_per_rank(
        ctx.arch,
        tokens=w.input_tokens + w.output_tokens,
        tp=layout.tp,
        pp=layout.pp,
        kv_dtype_bytes=ctx.kv_dtype_bytes,
    )
    per_rank = max(0, math.floor(max(0.0, sizing.kv_budget) / per_seq)) if per_seq > 0 else 0
    per_rank = min(per_rank, max_seqs * layout.pp)  # max_num_seqs caps each engine's batch per micro-batch
    kv_limit = per_rank * layout.dp
    prefill = prefill_seconds(ctx, layout, split, r)

    budget = batching(ctx, layout.instance)[0]

    def at(n: int) -> Point:
        return operating_point(ctx, layout, split, r, n, prefill=prefill)

    def meets(n: int) -> bool:
        point = at(n)
        return (
            point.tpot * 1000 <= slo.time_per_output_token_ms
            and point.ttft <= slo.time_to_first_token_p95_seconds
            and point.step_tokens <= budget
        )

    best = 0
    if per_rank >= 1 and meets(1):
        lo, hi = 1, per_rank
        while lo < hi:  # TPOT grows with the batch: the largest n that still meets the SLO
            mid = (lo + hi + 1) // 2
            if meets(mid):
                lo = mid
            else:
                hi = mid - 1
        best = lo
    n = max(best, 1)
    seen, ttft, tps, rps, _ = at(n)
    price = layout.cost_per_hour()
    cost = price / (tps * 3600) * 1e6 if price is not None and tps > 0 and best else None
    problem = None
    batch = best * layout.dp
    if per_rank < 1:
        problem = (
            f"{layout.describe()}: the KV cache holds no {w.input_tokens + w.output_tokens}-token request"
        )
    elif best == 0:
        problem = (
            f"{layout.describe()}: even one sequence per rank misses the SLO (TPOT {seen * 1000:.0f} ms vs "
            f"{slo.time_per_output_token_ms:g} ms, TTFT {ttft:.2f} s vs {slo.time_to_first_token_p95_seconds:g} s)"
        )
    elif batch < s.min_concurrency:
        if best == per_rank:
            limit = "the KV cache"
        elif at(best + 1).step_tokens > budget:
            limit = f"maxNumBatchedTokens {budget} (decode plus the prompts mixed into each step)"
        else:
            limit = f"TPOT {slo.time_per_output_token_ms:g} ms"
        problem = (
            f"{layout.describe()}: only {batch} concurrent sequences within {limit}, below the useful minimum "
            f"of {s.min_concurrency} (PlannerSettings.minConcurrency)"
        )
    return Estimate(
        batch=batch,
        kv_limit=kv_limit,
        tpot_ms=round(seen * 1000, 2),
        ttft_seconds=round(ttft, 3),
        tokens_per_second=round(tps, 1),
        requests_per_second=round(rps, 4),
        cost_per_million_tokens=round(cost, 4) if cost is not None else None,
        problem=problem,
    )
