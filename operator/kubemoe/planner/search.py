"""Candidate search and ranking: spec + catalog -> the best feasible Plan and the alternatives it beat.

For every allowed instance type the planner tries each tensor-parallel size (a power of two that divides
the attention heads and fits a node), one pipeline stage per extra node when a node is not enough, and
the data-parallel size the user set (default 1). Each candidate is sized with `planner.memory`; it is
feasible when at least one full `maxModelLen` sequence fits in what is left for the KV cache. Explicit
overrides are checked, never silently replaced: an override that does not fit is an error that names the
plan that would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from kubemoe.api.moemodel import Architecture, MemoryBreakdown, MoEModelSpec, Serving
from kubemoe.catalog.loader import Catalog
from kubemoe.catalog.schema import InstanceEntry, ModelEntry
from kubemoe.planner import memory as mem
from kubemoe.planner.errors import PlanningError
from kubemoe.planner.settings import PlannerSettings
from kubemoe.planner.types import Alternative, Plan, PlanReason, RecipeComparison

GIB = mem.GIB
MAX_ALTERNATIVES = 24
#: vLLM 0.33's default --gpu-memory-utilization (vllm/config/cache.py), the setting published recipes run at.
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92


@dataclass(frozen=True)
class Layout:
    """One way to lay a replica out on one instance type."""

    instance: InstanceEntry
    tp: int
    pp: int
    dp: int
    expert_parallel: bool

    @property
    def ranks(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def nodes(self) -> int:
        per_node = self.instance.ranks_per_node
        return 1 if self.ranks <= per_node else self.pp

    @property
    def ranks_per_node(self) -> int:
        return self.ranks // self.nodes

    @property
    def devices_per_node(self) -> int:
        return math.ceil(self.ranks_per_node / self.instance.cores_per_device)

    @property
    def expert_split(self) -> int:
        return self.tp * self.dp if self.expert_parallel else self.tp

    def cost_per_hour(self) -> float | None:
        price = self.instance.price_per_hour
        if price is None:
            return None
        return round(price * self.nodes * self.devices_per_node / self.instance.devices_per_node, 4)

    def describe(self) -> str:
        parts = [f"TP {self.tp}"]
        if self.pp > 1:
            parts.append(f"PP {self.pp}")
        if self.dp > 1:
            parts.append(f"DP {self.dp}")
        return f"{' x '.join(parts)} on {self.instance.name}"


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
        if self.kv_per_sequence <= 0:
            return 0
        return max(0, math.floor(self.kv_budget / self.kv_per_sequence))


@dataclass(frozen=True)
class Context:
    """What every candidate of one request shares."""

    spec: MoEModelSpec
    entry: ModelEntry | None
    arch: Architecture
    settings: PlannerSettings
    max_model_len: int
    kv_dtype_bytes: int
    split: mem.WeightSplit


@dataclass(frozen=True)
class Candidate:
    layout: Layout
    sizing: Sizing | None
    problem: str | None  # why it is not feasible; None when it is

    @property
    def feasible(self) -> bool:
        return self.problem is None


def _gb(n: float) -> str:
    return f"{n / mem.GB:.1f} GB"


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def resolve_architecture(spec: MoEModelSpec, catalog: Catalog) -> tuple[ModelEntry | None, Architecture]:
    entry = catalog.find_model(spec.model.name)
    if spec.model.architecture is not None:
        return entry, spec.model.architecture
    if entry is None:
        raise PlanningError(
            PlanReason.UNKNOWN_MODEL,
            f"model {spec.model.name!r} is not in the catalog: set spec.model.architecture (totalParamsB, "
            "numLayers, hiddenSize, numAttentionHeads, numKvHeads, ...) or add it with a catalog override; "
            "`kubemoe catalog models` lists the catalog",
        )
    return entry, entry.architecture


def _engine_for(instance: InstanceEntry) -> str:
    return "vllm" if instance.accelerator_kind == "gpu" else "neuronx"


def _neuron_problem(entry: ModelEntry | None, instance: InstanceEntry) -> str | None:
    """Why this model cannot run on this Neuron instance, or None."""
    path = entry.neuron if entry is not None else "none"
    if path == "none":
        return "no Neuron support known for this model (vLLM Neuron plugin or NxD Inference)"
    if path == "vllm-neuron" and instance.accelerator_model != "Trainium2":
        return "the vLLM Neuron plugin supports Trn2 only"
    return None


def allowed_instances(spec: MoEModelSpec, entry: ModelEntry | None, catalog: Catalog) -> list[InstanceEntry]:
    """Instances the placement allows, with the reason when none is left."""
    placement = spec.placement
    names = placement.instance_types or sorted(catalog.instances)
    unknown = [n for n in names if catalog.find_instance(n) is None]
    if unknown:
        raise PlanningError(
            PlanReason.UNKNOWN_INSTANCE_TYPE,
            f"unknown instance type(s) {', '.join(unknown)} in spec.placement.instanceTypes; known: "
            f"{', '.join(sorted(catalog.instances))} (add others with a catalog override)",
        )
    wanted_kind = placement.accelerator
    if spec.engine.kind is not None:
        wanted_kind = "gpu" if spec.engine.kind == "vllm" else "neuron"
    kept: list[InstanceEntry] = []
    dropped: list[str] = []
    for name in names:
        inst = catalog.instances[name]
        if wanted_kind not in ("any", inst.accelerator_kind):
            dropped.append(f"{name} ({inst.accelerator_kind}, not {wanted_kind})")
            continue
        if inst.accelerator_kind == "neuron":
            problem = _neuron_problem(entry, inst)
            if problem:
                dropped.append(f"{name} ({problem})")
                continue
        kept.append(inst)
    if not kept:
        raise PlanningError(
            PlanReason.NO_MATCHING_INSTANCE,
            "no instance type matches the placement: "
            + "; ".join(dropped)
            + ". Widen spec.placement.instanceTypes or spec.placement.accelerator",
        )
    return kept


def _context(spec: MoEModelSpec, catalog: Catalog, settings: PlannerSettings) -> Context:
    entry, arch = resolve_architecture(spec, catalog)
    max_len = spec.serving.max_model_len or min(arch.max_context, settings.default_max_model_len_cap)
    if max_len > arch.max_context:
        raise PlanningError(
            PlanReason.INVALID_SERVING,
            f"spec.serving.maxModelLen {max_len} exceeds the model's context of {arch.max_context} tokens; "
            f"lower it to at most {arch.max_context}",
        )
    if spec.placement.expert_parallel and not arch.is_moe:
        raise PlanningError(
            PlanReason.INVALID_PARALLELISM,
            "spec.placement.expertParallel is true but the model has no experts; remove it",
        )
    return Context(
        spec=spec,
        entry=entry,
        arch=arch,
        settings=settings,
        max_model_len=max_len,
        kv_dtype_bytes=1 if spec.serving.kv_cache_dtype == "fp8" else 2,
        split=mem.weight_split(arch, spec.serving.quantization),
    )


def _batch_defaults(instance: InstanceEntry) -> tuple[int, int]:
    """vLLM 0.33's per-hardware defaults of (max_num_batched_tokens, max_num_seqs) for `vllm serve`."""
    gib = instance.memory_per_device_mib / 1024
    if instance.accelerator_kind == "gpu" and gib >= 160:
        return 16384, 1024
    if instance.accelerator_kind == "gpu" and gib >= 70 and not instance.accelerator_model.startswith("A100"):
        return 8192, 1024
    return 2048, 256


def _batching(ctx: Context, instance: InstanceEntry) -> tuple[int, int]:
    tokens, seqs = _batch_defaults(instance)
    return (
        ctx.spec.serving.max_num_batched_tokens or tokens,
        ctx.spec.serving.max_num_seqs or seqs,
    )


def _overhead(ctx: Context, layout: Layout) -> float:
    s = ctx.settings
    if layout.instance.accelerator_kind == "neuron":
        return s.neuron_runtime_gib * GIB
    nccl = s.gpu_nccl_gib if layout.ranks > 1 else 0.0
    return (s.gpu_context_gib + s.gpu_cuda_graphs_gib + nccl) * GIB


def _structural_problem(ctx: Context, layout: Layout) -> str | None:
    inst, arch = layout.instance, ctx.arch
    unit = "GPUs" if inst.accelerator_kind == "gpu" else "NeuronCores"
    if layout.tp * layout.dp > inst.ranks_per_node:
        return f"TP {layout.tp} x DP {layout.dp} exceeds the {inst.ranks_per_node} {unit} of a node"
    head_problem = _head_problem(arch, layout.tp)
    if head_problem:
        return head_problem
    if layout.pp > arch.num_layers:
        return f"PP {layout.pp} exceeds the {arch.num_layers} layers"
    if layout.ranks > inst.ranks_per_node and layout.tp * layout.dp != inst.ranks_per_node:
        return (
            f"a pipeline across nodes needs TP x DP = {inst.ranks_per_node} (a whole node per stage), "
            f"not {layout.tp * layout.dp}"
        )
    if layout.nodes > ctx.settings.max_nodes_per_replica:
        return f"{layout.nodes} nodes exceed the planner's limit of {ctx.settings.max_nodes_per_replica}"
    return None


def size_layout(ctx: Context, layout: Layout) -> Sizing:
    """Per-rank memory of `layout` (pure arithmetic; see planner.memory)."""
    inst = layout.instance
    tokens, seqs = _batching(ctx, inst)
    device = inst.memory_per_rank_mib * 1024**2
    usable = device * ctx.spec.serving.gpu_memory_utilization
    weights = mem.weights_per_rank(ctx.split, tp=layout.tp, pp=layout.pp, expert_split=layout.expert_split)
    activation = mem.activation_bytes_per_rank(
        ctx.arch,
        batched_tokens=tokens,
        max_num_seqs=seqs,
        tp=layout.tp,
        expert_split=layout.expert_split,
        dtype_bytes=ctx.settings.activation_dtype_bytes,
    )
    overhead = _overhead(ctx, layout)
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


def _memory_problem(ctx: Context, layout: Layout, s: Sizing) -> str | None:
    inst = layout.instance
    util = ctx.spec.serving.gpu_memory_utilization
    device = f"{inst.accelerator_model} {'GPU' if inst.accelerator_kind == 'gpu' else 'NeuronCore'}"
    if s.weights > s.usable:
        return (
            f"{layout.describe()}: weights need about {_gb(s.weights)} ({_gib(s.weights)}) per {device}, "
            f"which has {_gb(s.device)} ({_gib(s.usable)} usable at gpuMemoryUtilization {util:.2f})"
        )
    if s.sequences < 1:
        return (
            f"{layout.describe()}: after weights {_gib(s.weights)}, activations {_gib(s.activation)} and "
            f"overhead {_gib(s.overhead)} per {device}, {_gib(max(0.0, s.kv_budget))} is left for the KV cache "
            f"but one {ctx.max_model_len}-token sequence needs {_gib(s.kv_per_sequence)}"
        )
    return None


def evaluate(ctx: Context, layout: Layout) -> Candidate:
    problem = _structural_problem(ctx, layout)
    if problem:
        return Candidate(layout, None, problem)
    sizing = size_layout(ctx, layout)
    return Candidate(layout, sizing, _memory_problem(ctx, layout, sizing))


def _expert_parallel(ctx: Context, tp: int, dp: int) -> bool:
    explicit = ctx.spec.placement.expert_parallel
    if explicit is not None:
        return explicit
    return ctx.arch.is_moe and tp * dp > 1


def _largest_tp(ctx: Context, inst: InstanceEntry) -> int:
    """The largest power-of-two TP one node of `inst` can run for this model (heads allowing)."""
    fitting = [
        2**i for i in range(8) if 2**i <= inst.ranks_per_node and _head_problem(ctx.arch, 2**i) is None
    ]
    return max(fitting, default=1)


def _head_problem(arch: Architecture, tp: int) -> str | None:
    if arch.num_attention_heads % tp:
        return f"TP {tp} does not divide the {arch.num_attention_heads} attention heads"
    kv = arch.num_kv_heads
    # vLLM shards KV heads when TP divides them and replicates them when TP is a multiple of them.
    if not arch.is_mla and kv % tp and tp % kv:
        return f"TP {tp} neither divides nor is a multiple of the {kv} KV heads"
    return None


def _layouts(ctx: Context, instances: Iterable[InstanceEntry]) -> list[Layout]:
    p = ctx.spec.placement
    out: list[Layout] = []
    for inst in instances:
        per_node = inst.ranks_per_node
        tps = (
            [p.tensor_parallel_size]
            if p.tensor_parallel_size
            else [2**i for i in range(8) if 2**i <= per_node]
        )
        dps = [p.data_parallel_size or 1]
        for tp in tps:
            for dp in dps:
                if p.pipeline_parallel_size:
                    pps = [p.pipeline_parallel_size]
                elif tp * dp == per_node:
                    # A whole node per stage: extra stages span nodes.
                    pps = [1, *range(2, ctx.settings.max_nodes_per_replica + 1)]
                else:
                    # Stages inside one node only to use more ranks than tensor parallelism alone can: the
                    # heads cap TP below the node (40 or 48 heads on 24 or 64 NeuronCores). Elsewhere a
                    # pipeline of the same devices is slower than the larger TP.
                    widest = _largest_tp(ctx, inst) * dp
                    pps = [1, *(pp for pp in range(2, per_node // (tp * dp) + 1) if tp * dp * pp > widest)]
                out.extend(Layout(inst, tp, pp, dp, _expert_parallel(ctx, tp, dp)) for pp in pps)
    return out


def _latency_score(ctx: Context, layout: Layout) -> float:
    """Relative decode time per token: active weight bytes each rank streams / its memory bandwidth.

    Pipeline stages run one after another, so PP does not shorten a token; each extra node adds a network
    hop, counted as a 15 % penalty. Only comparisons between candidates mean anything.
    """
    arch, split = ctx.arch, ctx.split
    expert_share = arch.experts_per_token / arch.num_experts if arch.is_moe else 1.0
    active = split.other_bytes / layout.tp + split.expert_bytes * expert_share / layout.expert_split
    bandwidth = layout.instance.memory_bandwidth_gbps / layout.instance.cores_per_device
    return round(active / (bandwidth * 1e9) * 1000 * (1 + 0.15 * (layout.nodes - 1)), 4)


def _footprint(ctx: Context, layout: Layout, s: Sizing) -> float:
    """Device memory the replica needs (all ranks): weights, activations, overhead and one full sequence of
    KV, divided by gpuMemoryUtilization because the engine only ever uses that share of a device."""
    need = s.weights + s.activation + s.overhead + s.kv_per_sequence
    return need * layout.ranks / ctx.spec.serving.gpu_memory_utilization


def _sort_key(strategy: str, ctx: Context, c: Candidate) -> tuple[float, ...]:
    layout, sizing = c.layout, c.sizing
    assert sizing is not None
    cost = layout.cost_per_hour()
    cost_key = cost if cost is not None else math.inf
    devices = layout.nodes * layout.devices_per_node
    # Ties: fewer accelerators, then fewer pipeline stages (bubbles), then more concurrent sequences.
    if strategy == "fewest-accelerators":
        return (devices, cost_key, layout.pp, -sizing.sequences)
    if strategy == "lowest-latency":
        return (layout.nodes, _latency_score(ctx, layout), cost_key, devices)
    return (cost_key, devices, layout.pp, -sizing.sequences)


def _alternative(ctx: Context, c: Candidate, reason: str) -> Alternative:
    return Alternative(
        instance_type=c.layout.instance.name,
        tensor_parallel_size=c.layout.tp,
        pipeline_parallel_size=c.layout.pp,
        data_parallel_size=c.layout.dp,
        feasible=c.feasible,
        cost_per_hour=c.layout.cost_per_hour(),
        accelerators=c.layout.nodes * c.layout.devices_per_node,
        concurrent_sequences=c.sizing.sequences * c.layout.dp if c.sizing and c.feasible else 0,
        reason=reason,
    )


def _price(cost: float | None) -> str:
    return f"${cost:.2f}/h" if cost is not None else "no on-demand price"


def _choice_reason(strategy: str, ctx: Context, best: Candidate, runner_up: Candidate | None) -> str:
    layout, sizing = best.layout, best.sizing
    assert sizing is not None
    cheapest = f"cheapest feasible plan at {_price(layout.cost_per_hour())}"
    if layout.cost_per_hour() is None:
        cheapest = "no allowed instance has an on-demand price, so the fewest accelerators"
    why = {
        "cheapest": cheapest,
        "fewest-accelerators": f"fewest accelerators ({layout.nodes * layout.devices_per_node})",
        "lowest-latency": "lowest estimated per-token latency",
    }[strategy]
    text = (
        f"{layout.describe()}: {why}; {_gib(sizing.weights)} weights and {_gib(max(0.0, sizing.kv_budget))} KV "
        f"cache per rank hold {sizing.sequences * layout.dp} concurrent {ctx.max_model_len}-token sequences"
    )
    if runner_up is not None:
        text += f"; next best {runner_up.layout.describe()} at {_price(runner_up.layout.cost_per_hour())}"
    return text


def _candidates(ctx: Context, instances: list[InstanceEntry]) -> list[Candidate]:
    """Every layout, sized. Pipelines are a fallback: an instance gets layouts with PP > 1 only when none of
    its single-stage layouts fits, and a pipeline grows one stage at a time only until it fits (a longer
    pipeline of the same TP costs more and is slower, so it is no alternative worth showing)."""
    layouts = _layouts(ctx, instances)
    out = [evaluate(ctx, layout) for layout in layouts if layout.pp == 1]
    single_stage_fits = {c.layout.instance.name for c in out if c.feasible}
    fitted: set[tuple[str, int, int]] = set()
    for layout in layouts:
        if layout.pp == 1 or layout.instance.name in single_stage_fits:
            continue
        key = (layout.instance.name, layout.tp, layout.dp)
        if key in fitted:
            continue
        candidate = evaluate(ctx, layout)
        out.append(candidate)
        if candidate.feasible:
            fitted.add(key)
    return out


def _rank(ctx: Context, candidates: list[Candidate]) -> list[Candidate]:
    strategy = ctx.spec.placement.strategy
    return sorted((c for c in candidates if c.feasible), key=lambda c: _sort_key(strategy, ctx, c))


def _has_overrides(spec: MoEModelSpec) -> bool:
    p = spec.placement
    return any(
        v is not None for v in (p.tensor_parallel_size, p.pipeline_parallel_size, p.data_parallel_size)
    )


def _without_overrides(spec: MoEModelSpec) -> MoEModelSpec:
    placement = spec.placement.model_copy(
        update={"tensor_parallel_size": None, "pipeline_parallel_size": None, "data_parallel_size": None}
    )
    return spec.model_copy(update={"placement": placement})


def plan_placement(spec: MoEModelSpec, catalog: Catalog, settings: PlannerSettings | None = None) -> Plan:
    """The best feasible plan for `spec`, or a PlanningError that says what to change."""
    settings = settings or PlannerSettings()
    ctx = _context(spec, catalog, settings)
    instances = allowed_instances(spec, ctx.entry, catalog)
    candidates = _candidates(ctx, instances)
    ranked = _rank(ctx, candidates)
    if not ranked:
        raise _no_plan_error(spec, catalog, settings, ctx, candidates)
    best = ranked[0]
    return _to_plan(ctx, best, ranked, candidates, catalog)


def _no_plan_error(
    spec: MoEModelSpec,
    catalog: Catalog,
    settings: PlannerSettings,
    ctx: Context,
    candidates: list[Candidate],
) -> PlanningError:
    problems = [c for c in candidates if c.problem]
    memory_bound = [c for c in problems if c.sizing is not None]
    shown = memory_bound or problems
    # The most telling problem: the largest layout that was sized, i.e. the closest to fitting.
    shown.sort(key=lambda c: (-(c.layout.ranks), c.layout.instance.name))
    detail = shown[0].problem if shown else "no candidate layouts"
    alternatives = [_alternative(ctx, c, c.problem or "") for c in shown[:MAX_ALTERNATIVES]]
    reason = PlanReason.INSUFFICIENT_MEMORY if memory_bound else PlanReason.INVALID_PARALLELISM
    if _has_overrides(spec):
        try:
            fallback = plan_placement(_without_overrides(spec), catalog, settings)
            hint = f"; a plan that fits: TP {fallback.tensor_parallel_size}"
            if fallback.pipeline_parallel_size > 1:
                hint += f" x PP {fallback.pipeline_parallel_size}"
            hint += (
                f" on {fallback.instance_type} (remove the explicit parallelism to let the planner choose)"
            )
        except PlanningError:
            hint = "; no layout fits these instance types at all: allow larger instances or lower maxModelLen"
        what = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("tensorParallelSize", spec.placement.tensor_parallel_size),
                ("pipelineParallelSize", spec.placement.pipeline_parallel_size),
                ("dataParallelSize", spec.placement.data_parallel_size),
            )
            if v is not None
        )
        return PlanningError(reason, f"the explicit {what} does not fit: {detail}{hint}", alternatives)
    return PlanningError(
        reason,
        f"no layout of {spec.model.name} fits the allowed instances: {detail}. Allow larger instance types, "
        "lower spec.serving.maxModelLen, use kvCacheDtype fp8 or a quantized checkpoint",
        alternatives,
    )


def _to_plan(
    ctx: Context,
    best: Candidate,
    ranked: list[Candidate],
    candidates: list[Candidate],
    catalog: Catalog,
) -> Plan:
    layout, sizing = best.layout, best.sizing
    assert sizing is not None
    inst = layout.instance
    tokens, seqs = _batching(ctx, inst)
    strategy = ctx.spec.placement.strategy
    alternatives = [
        _alternative(ctx, c, f"feasible, ranked {i + 2} by {strategy}") for i, c in enumerate(ranked[1:])
    ]
    alternatives += [_alternative(ctx, c, c.problem or "") for c in candidates if not c.feasible and c.sizing]
    notes: list[str] = []
    if not ctx.spec.serving.max_model_len:
        notes.append(
            f"maxModelLen unset: serving {ctx.max_model_len} tokens (the model supports {ctx.arch.max_context})"
        )
    if ctx.entry is None:
        notes.append("model not in the catalog: sized from spec.model.architecture")
    weight_dtype = ctx.spec.serving.quantization or ctx.arch.native_dtype
    if weight_dtype == "fp8" and inst.accelerator_kind == "gpu" and not inst.fp8:
        notes.append(
            f"{inst.accelerator_model} has no FP8 compute: vLLM runs FP8 weights weight-only (Marlin)"
        )
    plan = Plan(
        model_id=ctx.entry.id if ctx.entry else ctx.spec.model.name,
        instance_type=inst.name,
        accelerator_kind=inst.accelerator_kind,
        accelerator_model=inst.accelerator_model,
        engine=ctx.spec.engine.kind or _engine_for(inst),
        resource_name=inst.resource_name,
        core_resource_name=inst.core_resource_name,
        nodes=layout.nodes,
        devices_per_node=layout.devices_per_node,
        node_devices=inst.devices_per_node,
        ranks_per_node=layout.ranks_per_node,
        pod_cpu=_host_share(inst.vcpus, layout),
        pod_memory_gib=_host_share(inst.host_memory_gib, layout),
        tensor_parallel_size=layout.tp,
        pipeline_parallel_size=layout.pp,
        data_parallel_size=layout.dp,
        expert_parallel=layout.expert_parallel,
        expert_parallel_size=layout.expert_split if layout.expert_parallel else 0,
        max_model_len=ctx.max_model_len,
        max_num_seqs=seqs,
        max_num_batched_tokens=tokens,
        gpu_memory_utilization=ctx.spec.serving.gpu_memory_utilization,
        kv_cache_dtype=ctx.spec.serving.kv_cache_dtype,
        quantization=ctx.spec.serving.quantization,
        weights_total_gb=round(ctx.split.total_bytes / mem.GB, 2),
        kv_bytes_per_token_per_rank=sizing.kv_per_token,
        memory=_breakdown(sizing),
        concurrent_sequences=sizing.sequences * layout.dp,
        cost_per_hour=layout.cost_per_hour(),
        latency_score=_latency_score(ctx, layout),
        footprint_gb=round(_footprint(ctx, layout, sizing) / mem.GB, 1),
        trust_remote_code=ctx.entry.trust_remote_code if ctx.entry else False,
        neuron_path=ctx.entry.neuron if ctx.entry and inst.accelerator_kind == "neuron" else "none",
        reason=_choice_reason(strategy, ctx, best, ranked[1] if len(ranked) > 1 else None),
        notes=notes,
        alternatives=alternatives[:MAX_ALTERNATIVES],
        recipe=_recipe_comparison(ctx, catalog),
    )
    return plan


def _host_share(total: int, layout: Layout) -> int:
    """A pod's share of the node's CPU or memory, in proportion to the devices it takes, less 10 % for the
    kubelet and system daemons (a whole-node replica must still fit the node's allocatable)."""
    share = layout.devices_per_node / layout.instance.devices_per_node
    return max(1, math.floor(total * share * 0.9))


def _breakdown(s: Sizing) -> MemoryBreakdown:
    def r(x: float) -> float:
        return round(x / GIB, 2)

    return MemoryBreakdown(
        device_gib=r(s.device),
        usable_gib=r(s.usable),
        weights_gib=r(s.weights),
        activation_gib=r(s.activation),
        overhead_gib=r(s.overhead),
        kv_cache_gib=r(max(0.0, s.kv_budget)),
        headroom_gib=r(s.device - s.usable),
    )


def smallest_footprint_gb(ctx: Context, catalog: Catalog) -> float | None:
    """The least device memory (GB, all ranks) any feasible layout on any catalog instance needs."""
    instances = [i for i in catalog.instances.values() if i.accelerator_kind == "gpu"]
    feasible = [c for c in _candidates(ctx, instances) if c.feasible and c.sizing]
    if not feasible:
        return None
    return min(_footprint(ctx, c.layout, c.sizing) for c in feasible if c.sizing) / mem.GB


def _recipe_comparison(ctx: Context, catalog: Catalog) -> RecipeComparison | None:
    """Compare with the published vLLM recipe, at the recipe's own settings (its weight format and length)."""
    recipe = ctx.entry.recipe if ctx.entry else None
    if recipe is None or ctx.entry is None:
        return None
    # The recipes launch a bare `vllm serve MODEL`, so their settings are vLLM's defaults: the model's full
    # context and gpu_memory_utilization 0.92, in the checkpoint's own weight format.
    serving = Serving(
        max_model_len=recipe.max_model_len or ctx.arch.max_context,
        gpu_memory_utilization=VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
    )
    spec = MoEModelSpec(model=ctx.spec.model, serving=serving)
    recipe_ctx = _context(spec, catalog, ctx.settings)
    planned = smallest_footprint_gb(recipe_ctx, catalog)
    if planned is None:
        return None
    return RecipeComparison(
        recipe_gb=recipe.vram_minimum_gb,
        planned_gb=round(planned, 1),
        ratio=round(planned / recipe.vram_minimum_gb, 3),
        source=recipe.source,
    )
