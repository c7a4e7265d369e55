"""Candidate layouts: how one replica's ranks are arranged on one instance type, and which are well-formed.

A layout is tensor parallelism (TP) inside a node, data-parallel attention ranks (DP, each with its own
sequences and KV cache), pipeline stages (PP) and expert parallelism (EP) over TP x DP. The shapes MoE
deployments use, and which `enumerate_layouts` lists:

* TP (+ EP for MoE): one node or part of one; `--tensor-parallel-size N [--enable-expert-parallel]`;
* DP attention + EP (MoE, vLLM on GPUs): `--data-parallel-size N --enable-expert-parallel`, filling one node
  or, across whole nodes, with `--data-parallel-size-local`, `--headless` followers (a LeaderWorkerSet);
* DP attention with the experts tensor-parallel over all TP x DP ranks (MoE, vLLM on GPUs, "DP 8 (MoE TP
  8)"): the same DP flags without `--enable-expert-parallel`. vLLM then flattens TP across DP for the MoE
  layers (`FusedMoEParallelConfig.make`: moe_tp = DP x TP, moe_ep = 1), which is aiconfigurator's
  "moeTp 8, moeEp 1" and often its best layout; both DP variants are candidates unless
  `spec.placement.expertParallel` picks one;
* TP x PP across nodes: a whole node per stage, only when no single-stage layout of that instance works.

`structural_problem` rejects what cannot run before any memory is counted, with the reason: among them
pipeline stages that do not divide the layers evenly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from kubemoe.api.moemodel import Architecture
from kubemoe.catalog.schema import InstanceEntry
from kubemoe.planner.context import Context


@dataclass(frozen=True)
class Layout:
    """One way to lay a replica out on one instance type."""

    instance: InstanceEntry
    tp: int
    pp: int
    dp: int
    expert_parallel: bool
    #: Whether the model has routed experts: a dense model's DP ranks have no MoE TP group to name.
    moe: bool = True

    @property
    def ranks(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def nodes(self) -> int:
        per_node = self.instance.ranks_per_node
        return 1 if self.ranks <= per_node else math.ceil(self.ranks / per_node)

    @property
    def dp_local(self) -> int:
        """DP ranks on each node (`--data-parallel-size-local`)."""
        return max(1, self.dp // self.nodes)

    @property
    def ranks_per_node(self) -> int:
        return self.ranks // self.nodes

    @property
    def devices_per_node(self) -> int:
        return math.ceil(self.ranks_per_node / self.instance.cores_per_device)

    @property
    def devices(self) -> int:
        return self.nodes * self.devices_per_node

    @property
    def expert_split(self) -> int:
        """Ranks the routed experts are split over: all TP x DP ranks of the replica (per stage), as whole
        experts under EP (the EP size) or as tensor-parallel slices of every expert without it (vLLM's MoE
        TP size, DP x TP: `FusedMoEParallelConfig.make` flattens TP across DP)."""
        return self.tp * self.dp

    def cost_per_hour(self) -> float | None:
        price = self.instance.price_per_hour
        if price is None:
            return None
        return round(price * self.nodes * self.devices_per_node / self.instance.devices_per_node, 4)

    def shape(self) -> str:
        """e.g. `DP 8 + EP 8`, `DP 8 (MoE TP 8)`, `TP 8 + EP 8`, `TP 8 (MoE TP 8)`, `TP 8 x PP 2`, in the
        words of vLLM's own strategies: `+ EP n` where experts are whole on each rank, `(MoE TP n)` where the
        TP x DP ranks share tensor-parallel slices of every expert (no --enable-expert-parallel); a dense
        model's TP has no experts to name."""
        parts = []
        if self.dp > 1:
            parts.append(f"DP {self.dp}" if self.tp == 1 else f"TP {self.tp} x DP {self.dp}")
        else:
            parts.append(f"TP {self.tp}")
        if self.pp > 1:
            parts.append(f"PP {self.pp}")
        text = " x ".join(parts)
        if self.expert_parallel:
            return f"{text} + EP {self.expert_split}"
        if self.expert_split > 1 and self.moe:
            return f"{text} (MoE TP {self.expert_split})"
        return text

    def describe(self) -> str:
        nodes = f" x {self.nodes} nodes" if self.nodes > 1 else ""
        return f"{self.shape()} on {self.instance.name}{nodes}"


def head_problem(arch: Architecture, tp: int) -> str | None:
    if arch.num_attention_heads % tp:
        return f"TP {tp} does not divide the {arch.num_attention_heads} attention heads"
    kv = arch.num_kv_heads
    # vLLM shards KV heads when TP divides them and replicates them when TP is a multiple of them.
    if not arch.is_mla and kv % tp and tp % kv:
        return f"TP {tp} neither divides nor is a multiple of the {kv} KV heads"
    return None


def largest_tp(ctx: Context, inst: InstanceEntry) -> int:
    """The largest power-of-two TP one node of `inst` can run for this model (heads allowing)."""
    fitting = [2**i for i in range(8) if 2**i <= inst.ranks_per_node and head_problem(ctx.arch, 2**i) is None]
    return max(fitting, default=1)


def expert_modes(ctx: Context, tp: int, dp: int) -> list[bool]:
    """Expert-parallel settings to try: the spec's when it sets one; for a MoE model over more than one
    rank (TP > 1 at DP 1 as well as DP > 1) both MoE TP over all TP x DP ranks (slices of every expert)
    and EP (whole experts per rank), which the objective ranks like any other pair of layouts; else the
    default. MoE TP, vLLM's default (no --enable-expert-parallel), comes first, so it wins an exact tie.
    Both Neuron paths express both: vllm-neuron with or without --enable-expert-parallel, NxD Inference as
    moe_ep_degree 1 / moe_tp_degree TP or moe_ep_degree TP (render.engine)."""
    explicit = ctx.spec.placement.expert_parallel
    if explicit is not None:
        return [explicit]
    return [False, True] if ctx.arch.is_moe and tp * dp > 1 else [False]


def structural_problem(ctx: Context, layout: Layout) -> str | None:
    inst, arch = layout.instance, ctx.arch
    per_node = inst.ranks_per_node
    unit = "GPUs" if inst.accelerator_kind == "gpu" else "NeuronCores"
    if layout.tp > per_node:
        return f"TP {layout.tp} exceeds the {per_node} {unit} of a node"
    if layout.dp > 1 and inst.accelerator_kind != "gpu":
        return "data-parallel attention is rendered for vLLM on GPUs only, not the Neuron paths"
    if layout.dp > 1 and layout.pp > 1:
        return "data-parallel attention with pipeline stages is not a layout kubemoe renders; use one or the other"
    if layout.dp > 1 and layout.tp * layout.dp > per_node and (layout.tp * layout.dp) % per_node:
        return (
            f"TP {layout.tp} x DP {layout.dp} exceeds the {per_node} {unit} of a node; across nodes DP must "
            "fill whole nodes, without pipeline stages"
        )
    problem = head_problem(arch, layout.tp)
    if problem:
        return problem
    if layout.pp > arch.num_layers:
        return f"PP {layout.pp} exceeds the {arch.num_layers} layers"
    if layout.pp > 1 and arch.num_layers % layout.pp:
        return f"PP {layout.pp} does not divide the {arch.num_layers} layers evenly"
    if layout.pp > 1 and layout.ranks > per_node and layout.tp * layout.dp != per_node:
        return (
            f"a pipeline across nodes needs TP x DP = {per_node} (a whole node per stage), "
            f"not {layout.tp * layout.dp}"
        )
    if layout.nodes > ctx.settings.max_nodes_per_replica:
        return f"{layout.nodes} nodes exceed the planner's limit of {ctx.settings.max_nodes_per_replica}"
    return None


def _data_parallel_sizes(ctx: Context, inst: InstanceEntry, tp: int) -> list[int]:
    """DP sizes to try with `tp`: 1, and for MoE models on GPUs DP attention filling one node or 2..max
    whole nodes (with EP, or MoE TP over the DP ranks when `expertParallel` is false). Dense models gain
    nothing from DP inside a replica: that is what replicas are."""
    p = ctx.spec.placement
    if p.data_parallel_size:
        return [p.data_parallel_size]
    if p.tensor_parallel_size or p.pipeline_parallel_size:
        return [1]  # a pinned TP/PP means that layout as written (e.g. a guide's TP 2), not TP x DP
    moe_gpu = ctx.arch.is_moe and inst.accelerator_kind == "gpu"
    if not moe_gpu:
        return [1]
    fill = inst.ranks_per_node // tp
    sizes = [1] + ([fill] if fill > 1 else [])
    return sizes + [fill * n for n in range(2, ctx.settings.max_nodes_per_replica + 1)]


def _stage_counts(ctx: Context, inst: InstanceEntry, tp: int, dp: int) -> list[int]:
    p, per_node = ctx.spec.placement, inst.ranks_per_node
    if p.pipeline_parallel_size:
        return [p.pipeline_parallel_size]
    if dp > 1:
        return [1]  # DP attention scales by DP ranks, not by stages on top
    if tp == per_node:
        # A whole node per stage: extra stages span nodes.
        return [1, *range(2, ctx.settings.max_nodes_per_replica + 1)]
    # Stages inside one node only to use more ranks than tensor parallelism alone can: the heads cap TP
    # below the node (40 or 48 heads on 24 or 64 NeuronCores). Where TP fits, a pipeline of the same
    # devices is slower than the larger TP, so it is not tried.
    widest = largest_tp(ctx, inst)
    return [1, *(pp for pp in range(2, per_node // tp + 1) if tp * pp > widest)]


def enumerate_layouts(ctx: Context, instances: Iterable[InstanceEntry]) -> list[Layout]:
    p = ctx.spec.placement
    out: list[Layout] = []
    for inst in instances:
        per_node = inst.ranks_per_node
        tps = (
            [p.tensor_parallel_size]
            if p.tensor_parallel_size
            else [2**i for i in range(8) if 2**i <= per_node]
        )
        for tp in tps:
            for dp in _data_parallel_sizes(ctx, inst, tp):
                pps = _stage_counts(ctx, inst, tp, dp)
                out.extend(
                    Layout(inst, tp, pp, dp, ep, moe=ctx.arch.is_moe)
                    for ep in expert_modes(ctx, tp, dp)
                    for pp in pps
                )
    return out
