"""Which layouts can run: structure and capability first, then memory, then the SLO, each with a reason.

A candidate is feasible when its accelerator runs the weights (capability table), at least one full
`maxModelLen` sequence fits in what is left for the KV cache, and the performance model finds a batch of
at least `minConcurrency` sequences that meets the SLO.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubemoe.catalog.schema import InstanceEntry
from kubemoe.planner import memory as mem
from kubemoe.planner.context import Context, capability_problem
from kubemoe.planner.layouts import Layout, enumerate_layouts, structural_problem
from kubemoe.planner.performance import Estimate, estimate
from kubemoe.planner.sizing import Sizing, size_layout

GIB = mem.GIB


@dataclass(frozen=True)
class Candidate:
    layout: Layout
    sizing: Sizing | None
    problem: str | None  # why it is not feasible; None when it is
    estimate: Estimate | None = None
    #: True when the problem is the SLO or the minimum concurrency (it fits in memory).
    slo_bound: bool = False

    @property
    def feasible(self) -> bool:
        return self.problem is None


def gb(n: float) -> str:
    return f"{n / mem.GB:.1f} GB"


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def memory_problem(ctx: Context, layout: Layout, s: Sizing) -> str | None:
    inst = layout.instance
    util = ctx.spec.serving.gpu_memory_utilization
    device = f"{inst.accelerator_model} {'GPU' if inst.accelerator_kind == 'gpu' else 'NeuronCore'}"
    if s.weights > s.usable:
        return (
            f"{layout.describe()}: weights need about {gb(s.weights)} ({gib(s.weights)}) per {device}, "
            f"which has {gb(s.device)} ({gib(s.usable)} usable at gpuMemoryUtilization {util:.2f})"
        )
    if s.sequences < 1:
        return (
            f"{layout.describe()}: after weights {gib(s.weights)}, activations {gib(s.activation)} and "
            f"overhead {gib(s.overhead)} per {device}, {gib(max(0.0, s.kv_budget))} is left for the KV cache "
            f"but one {ctx.max_model_len}-token sequence needs {gib(s.kv_per_sequence)}"
        )
    return None


def evaluate(ctx: Context, layout: Layout) -> Candidate:
    problem = structural_problem(ctx, layout) or capability_problem(ctx, layout.instance)  # defence in depth
    if problem:
        return Candidate(layout, None, problem)
    sizing = size_layout(ctx, layout)
    problem = memory_problem(ctx, layout, sizing)
    if problem:
        return Candidate(layout, sizing, problem)
    inst = layout.instance
    est = estimate(ctx, layout, sizing, ctx.split_for(inst), ctx.fp8_compute(inst))
    return Candidate(layout, sizing, est.problem, est, slo_bound=est.problem is not None)


def candidates(ctx: Context, instances: list[InstanceEntry]) -> list[Candidate]:
    """Every layout, sized and estimated. A replica spans nodes only as a fallback: an instance gets
    multi-node layouts (DP across nodes, or PP stages) only when none of its single-node layouts is
    feasible, and each multi-node shape grows one node at a time only until it works (more nodes of the
    same shape cost more per replica and are no alternative worth showing). In-node pipelines (heads
    capping TP) are single-node layouts."""
    layouts = enumerate_layouts(ctx, instances)
    out = [evaluate(ctx, layout) for layout in layouts if layout.nodes == 1]
    single_node_works = {c.layout.instance.name for c in out if c.feasible}
    fitted: set[tuple[str, int, bool, bool]] = set()
    for layout in sorted((x for x in layouts if x.nodes > 1), key=lambda x: x.nodes):
        if layout.instance.name in single_node_works:
            continue
        # One shape: the same TP, and either DP across nodes (with EP or MoE TP) or PP stages.
        key = (layout.instance.name, layout.tp, layout.dp > 1, layout.expert_parallel)
        if key in fitted:
            continue
        candidate = evaluate(ctx, layout)
        out.append(candidate)
        if candidate.feasible:
            fitted.add(key)
    return out
