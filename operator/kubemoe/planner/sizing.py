"""Per-rank memory of one layout: `planner.memory`'s formulas applied to a layout and its batch settings."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kubemoe.planner import memory as mem
from kubemoe.planner.context import Context, batching
from kubemoe.planner.layouts import Layout

GIB = mem.GIB


@dataclass(frozen=True)
class Sizing:
    """Per-rank memory of a layout, in bytes."""

    device: float
    usable: float
    weights: float
    activation: float
    overhead: float
    kv_budget: float
    kv_per_sequence: float
    kv_per_token: float

    @property
    def sequences(self) -> int:
        """Full-length sequences one rank's KV cache holds."""
        if self.kv_per_sequence <= 0:
            return 0
        return max(0, math.floor(self.kv_budget / self.kv_per_sequence))


def overhead_bytes(ctx: Context, layout: Layout) -> float:
    s = ctx.settings
    if layout.instance.accelerator_kind == "neuron":
        return s.neuron_runtime_gib * GIB
    nccl = s.gpu_nccl_gib if layout.ranks > 1 else 0.0
    return (s.gpu_context_gib + s.gpu_cuda_graphs_gib + nccl) * GIB


def size_layout(ctx: Context, layout: Layout) -> Sizing:
    """Per-rank memory of `layout` (pure arithmetic; see planner.memory)."""
    inst = layout.instance
    tokens, seqs = batching(ctx, inst)
    device = inst.memory_per_rank_mib * 1024**2
    usable = device * ctx.spec.serving.gpu_memory_utilization
    split = ctx.split_for(inst)
    weights = mem.weights_per_rank(split, tp=layout.tp, pp=layout.pp, expert_split=layout.expert_split)
    activation = mem.activation_bytes_per_rank(
        ctx.arch,
        batched_tokens=tokens,
        max_num_seqs=seqs,
        tp=layout.tp,
        expert_split=layout.expert_split,
        dtype_bytes=ctx.settings.activation_dtype_bytes,
        gathered=1 if layout.expert_parallel else layout.dp,
    )
    overhead = overhead_bytes(ctx, layout)
    return Sizing(
        device=device,
        usable=usable,
        weights=weights,
        activation=activation,
        overhead=overhead,
        kv_budget=usable - weights - activation - overhead,
        kv_per_sequence=mem.kv_bytes_per_sequence_per_rank(
            ctx.arch, tokens=ctx.max_model_len, tp=layout.tp, pp=layout.pp, kv_dtype_bytes=ctx.kv_dtype_bytes
        ),
        kv_per_token=mem.kv_bytes_per_token_per_rank(
            ctx.arch, tp=layout.tp, pp=layout.pp, kv_dtype_bytes=ctx.kv_dtype_bytes
        ),
    )


def footprint(ctx: Context, layout: Layout, s: Sizing) -> float:
    """Device memory the replica needs (all ranks): weights, activations, overhead and one full sequence of
    KV, divided by gpuMemoryUtilization because the engine only ever uses that share of a device."""
    need = s.weights + s.activation + s.overhead + s.kv_per_sequence
    return need * layout.ranks / ctx.spec.serving.gpu_memory_utilization
