"""Turning the ranked candidates into a Plan that explains itself: the choice, why, and what it beat."""

from __future__ import annotations

import math
import weakref

from kubemoe.api.moemodel import MemoryBreakdown, MoEModelSpec, Serving
from kubemoe.catalog.loader import Catalog
from kubemoe.catalog.schema import Recipe
from kubemoe.planner import memory as mem
from kubemoe.planner.context import Context, batching, build_context, engine_for
from kubemoe.planner.feasibility import Candidate, candidates, gib
from kubemoe.planner.layouts import Layout
from kubemoe.planner.moe import eplb_helps
from kubemoe.planner.ranking import NEAR_TIE, latency_score, replicas_for
from kubemoe.planner.sizing import Sizing, footprint
from kubemoe.planner.types import Alternative, Plan, RecipeComparison

GIB = mem.GIB
MAX_ALTERNATIVES = 24
#: vLLM 0.33's default --gpu-memory-utilization (vllm/config/cache.py), the setting published recipes run at.
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92


def alternative(ctx: Context, c: Candidate, reason: str) -> Alternative:
    est = c.estimate
    return Alternative(
        instance_type=c.layout.instance.name,
        tensor_parallel_size=c.layout.tp,
        pipeline_parallel_size=c.layout.pp,
        data_parallel_size=c.layout.dp,
        expert_parallel=c.layout.expert_parallel,
        feasible=c.feasible,
        cost_per_hour=c.layout.cost_per_hour(),
        accelerators=c.layout.devices,
        concurrent_sequences=est.batch if est and c.feasible else 0,
        reason=reason,
        layout=c.layout.describe(),
        nodes=c.layout.nodes,
        tokens_per_second=est.tokens_per_second if est and est.batch else None,
        cost_per_million_tokens=est.cost_per_million_tokens if est else None,
        time_to_first_token_seconds=est.ttft_seconds if est else None,
        time_per_output_token_ms=est.tpot_ms if est else None,
    )


def price(cost: float | None) -> str:
    return f"${cost:.2f}/h" if cost is not None else "no on-demand price"


def per_million(cost: float | None) -> str:
    return f"${cost:.3f}/M tokens" if cost is not None else "no $/M tokens (no on-demand price)"


def _why_lost(strategy: str, best: Candidate, c: Candidate, rank: int) -> str:
    """One line on why a feasible candidate ranked below the chosen one."""
    b, e = best.estimate, c.estimate
    assert b is not None
    assert e is not None
    head = f"feasible, ranked {rank} by {strategy}"
    if strategy == "cheapest" and e.cost_per_million_tokens is None:
        return f"{head}: no on-demand price, so no $/M tokens to compare"
    if (
        strategy == "cheapest"
        and b.cost_per_million_tokens is not None
        and e.cost_per_million_tokens is not None
    ):
        more = (e.cost_per_million_tokens / b.cost_per_million_tokens - 1) * 100
        text = (
            f"{head}: {per_million(e.cost_per_million_tokens)} ({more:+.0f} %), {e.tokens_per_second:.0f} tok/s "
            f"at {e.batch} sequences vs {b.tokens_per_second:.0f} at {b.batch}"
        )
        if more < 0 and c.layout.devices == best.layout.devices:
            text += (
                f"; cheaper per token by less than the {NEAR_TIE:.0%} the estimate can tell apart, with as "
                f"many accelerators and fewer concurrent sequences ({e.batch} vs {b.batch})"
            )
        elif more < 0:
            text += (
                f"; cheaper per token by less than the {NEAR_TIE:.0%} the estimate can tell apart, with "
                f"{c.layout.devices} accelerators per replica vs {best.layout.devices}"
            )
        return text
    if strategy == "fewest-accelerators":
        return f"{head}: {c.layout.devices} accelerators vs {best.layout.devices}"
    return f"{head}: {per_million(e.cost_per_million_tokens)}, TPOT {e.tpot_ms:.0f} ms"


def choice_reason(strategy: str, ctx: Context, best: Candidate, runner_up: Candidate | None) -> str:
    layout, sizing, est = best.layout, best.sizing, best.estimate
    assert sizing is not None
    assert est is not None
    slo, w = ctx.spec.serving.slo, ctx.spec.serving.workload
    cheapest = f"lowest $ per output token under the SLO: {per_million(est.cost_per_million_tokens)}"
    if est.cost_per_million_tokens is None:
        cheapest = "no allowed instance has an on-demand price, so the fewest accelerators"
    if ctx.spec.serving.target is not None and est.cost_per_million_tokens is not None:
        cheapest = f"cheapest way to serve the target: {per_million(est.cost_per_million_tokens)}"
    why = {
        "cheapest": cheapest,
        "fewest-accelerators": f"fewest accelerators ({layout.devices})",
        "lowest-latency": "lowest estimated per-token latency",
    }[strategy]
    text = (
        f"{layout.describe()}: {why}; {est.tokens_per_second:.0f} output tok/s per replica at {est.batch} "
        f"concurrent {w.input_tokens}/{w.output_tokens}-token requests (TPOT {est.tpot_ms:.0f} ms <= "
        f"{slo.time_per_output_token_ms:g}, TTFT p95 {est.ttft_seconds:.2f} s <= "
        f"{slo.time_to_first_token_p95_seconds:g}); {gib(sizing.weights)} weights and "
        f"{gib(max(0.0, sizing.kv_budget))} KV cache per rank, {price(layout.cost_per_hour())}"
    )
    cheaper = (
        strategy == "cheapest"
        and ctx.spec.serving.target is None
        and runner_up is not None
        and runner_up.estimate is not None
        and runner_up.estimate.cost_per_million_tokens is not None
        and est.cost_per_million_tokens is not None
        and runner_up.estimate.cost_per_million_tokens < est.cost_per_million_tokens
    )
    if cheaper:
        assert runner_up is not None
        low = runner_up.estimate.cost_per_million_tokens if runner_up.estimate else None
        fewest = f"fewest accelerators ({layout.devices})"
        if runner_up.layout.devices == layout.devices and runner_up.estimate is not None:
            fewest = (
                f"most concurrent sequences ({est.batch} vs {runner_up.estimate.batch}) on as few "
                f"accelerators ({layout.devices})"
            )
        why = (
            f"{fewest} among plans within {NEAR_TIE:.0%} of the lowest $ per output token under the SLO "
            f"({per_million(low)}, {runner_up.layout.describe()}): {per_million(est.cost_per_million_tokens)}"
        )
        text = text.replace(cheapest, why, 1)
    if runner_up is not None and runner_up.estimate is not None:
        text += (
            f"; next best {runner_up.layout.describe()} at "
            f"{per_million(runner_up.estimate.cost_per_million_tokens)}"
        )
    return text


def order_alternatives(best: Candidate, ranked: list[Candidate]) -> list[Candidate]:
    """Runners-up in rank order, except that the best other shape on the chosen instance type comes first:
    it answers "why DP 8 and not TP 8 on this node" in the status's top three."""
    rest = ranked[1:]
    same = [c for c in rest if c.layout.instance.name == best.layout.instance.name]
    if not same:
        return rest
    return [same[0], *[c for c in rest if c is not same[0]]]


def host_share(total: int, layout: Layout) -> int:
    """A pod's share of the node's CPU or memory, in proportion to the devices it takes, less 10 % for the
    kubelet and system daemons (a whole-node replica must still fit the node's allocatable)."""
    share = layout.devices_per_node / layout.instance.devices_per_node
    return max(1, math.floor(total * share * 0.9))


def breakdown(s: Sizing) -> MemoryBreakdown:
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


def notes_for(ctx: Context, layout: Layout) -> list[str]:
    inst = layout.instance
    notes: list[str] = []
    if not ctx.spec.serving.max_model_len:
        notes.append(
            f"maxModelLen unset: serving {ctx.max_model_len} tokens (the model supports {ctx.arch.max_context})"
        )
    if ctx.entry is None:
        notes.append("model not in the catalog: sized from spec.model.architecture")
    weight_dtype = ctx.spec.serving.quantization or ctx.arch.native_dtype
    if ctx.upcast(inst):
        notes.append(
            f"{inst.accelerator_model} has no FP8 tensor cores: the FP8 checkpoint is planned at its BF16 cost "
            "(2 bytes/param, BF16 FLOPs); vLLM's weight-only FP8 path may hold it in less memory but no faster"
        )
    elif weight_dtype == "fp8" and inst.accelerator_kind == "gpu" and not ctx.fp8_compute(inst):
        notes.append(
            f"{inst.accelerator_model} has no FP8 compute: vLLM runs FP8 weights weight-only (Marlin)"
        )
    if layout.dp > 1:
        notes.append(
            "DP attention: each DP rank keeps its own sequences and KV cache; --max-num-seqs applies per DP rank"
        )
    if layout.dp > 1 and not layout.expert_parallel and ctx.arch.is_moe:
        notes.append(
            f"MoE TP {layout.expert_split}: without --enable-expert-parallel vLLM shards every expert "
            f"tensor-parallel over all {layout.expert_split} ranks; each MoE layer all-gathers the DP ranks' "
            "tokens and reduce-scatters the results"
        )
    elif layout.expert_split > 1 and not layout.expert_parallel and ctx.arch.is_moe:
        notes.append(
            f"MoE TP {layout.expert_split}: without --enable-expert-parallel every expert is sharded "
            f"tensor-parallel over the {layout.tp} TP ranks, which run every token (no EP load imbalance)"
        )
    if ctx.spec.serving.target is not None and ctx.spec.replicas is not None:
        notes.append("spec.replicas is set, so it is kept; the target's replica count is only reported")
    return notes


def to_plan(
    ctx: Context,
    best: Candidate,
    ranked: list[Candidate],
    all_candidates: list[Candidate],
    catalog: Catalog,
) -> Plan:
    layout, sizing = best.layout, best.sizing
    assert sizing is not None
    inst = layout.instance
    tokens, seqs = batching(ctx, inst)
    strategy = ctx.spec.placement.strategy
    position = {id(c): i + 1 for i, c in enumerate(ranked)}
    alternatives = [
        alternative(ctx, c, _why_lost(strategy, best, c, position[id(c)]))
        for c in order_alternatives(best, ranked)
    ]
    # Then what fits in memory but misses the SLO (the closest misses first), then what does not fit.
    slo_bound = [c for c in all_candidates if not c.feasible and c.slo_bound]
    slo_bound.sort(key=lambda c: -(c.estimate.batch if c.estimate else 0))
    alternatives += [alternative(ctx, c, c.problem or "") for c in slo_bound]
    alternatives += [
        alternative(ctx, c, c.problem or "")
        for c in all_candidates
        if not c.feasible and c.sizing and not c.slo_bound
    ]
    est = best.estimate
    assert est is not None
    return Plan(
        model_id=ctx.entry.id if ctx.entry else ctx.spec.model.name,
        instance_type=inst.name,
        accelerator_kind=inst.accelerator_kind,
        accelerator_model=inst.accelerator_model,
        engine=ctx.spec.engine.kind or engine_for(inst),
        resource_name=inst.resource_name,
        core_resource_name=inst.core_resource_name,
        nodes=layout.nodes,
        devices_per_node=layout.devices_per_node,
        node_devices=inst.devices_per_node,
        ranks_per_node=layout.ranks_per_node,
        pod_cpu=host_share(inst.vcpus, layout),
        pod_memory_gib=host_share(inst.host_memory_gib, layout),
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
        weights_total_gb=round(ctx.split_for(inst).total_bytes / mem.GB, 2),
        kv_bytes_per_token_per_rank=sizing.kv_per_token,
        memory=breakdown(sizing),
        concurrent_sequences=sizing.sequences * layout.dp,
        cost_per_hour=layout.cost_per_hour(),
        latency_score=latency_score(ctx, layout),
        footprint_gb=round(footprint(ctx, layout, sizing) / mem.GB, 1),
        trust_remote_code=ctx.entry.trust_remote_code if ctx.entry else False,
        neuron_path=ctx.entry.neuron if ctx.entry and inst.accelerator_kind == "neuron" else "none",
        reason=choice_reason(strategy, ctx, best, ranked[1] if len(ranked) > 1 else None),
        notes=notes_for(ctx, layout),
        alternatives=alternatives[:MAX_ALTERNATIVES],
        recipe=recipe_comparison(ctx, catalog),
        layout=layout.describe(),
        data_parallel_size_local=layout.dp_local,
        enable_eplb=eplb_helps(ctx, layout),
        batch_size=est.batch,
        kv_limit_sequences=est.kv_limit,
        tokens_per_second=est.tokens_per_second,
        requests_per_second=est.requests_per_second,
        cost_per_million_tokens=est.cost_per_million_tokens,
        time_to_first_token_seconds=est.ttft_seconds,
        time_per_output_token_ms=est.tpot_ms,
        target_replicas=replicas_for(ctx.spec.serving.target, best),
    )


def smallest_footprint_gb(ctx: Context, catalog: Catalog) -> float | None:
    """The least device memory (GB, all ranks) any feasible layout on any catalog instance needs."""
    instances = [i for i in catalog.instances.values() if i.accelerator_kind == "gpu"]
    feasible = [c for c in candidates(ctx, instances) if c.feasible and c.sizing]
    if not feasible:
        return None
    return min(footprint(ctx, c.layout, c.sizing) for c in feasible if c.sizing) / mem.GB


#: recipe_comparison's answers per catalog and per (model, settings). It depends on neither the placement nor
#: the serving settings of the spec being planned, yet costs more than the rest of a plan (55 ms of 70 for one
#: model), so planning a model for each instance type, or many CRs of one model, pays it once. Keyed by the
#: catalog's id, with a weak reference that drops the entry when that catalog goes, so a later catalog that
#: reuses the id never sees its answers. Bounded per catalog.
_RECIPE_MEMO: dict[int, tuple[weakref.ref[Catalog], dict[str, RecipeComparison | None]]] = {}
_RECIPE_MEMO_SIZE = 256


def recipe_comparison(ctx: Context, catalog: Catalog) -> RecipeComparison | None:
    """Compare with the published vLLM recipe, at the recipe's own settings (its weight format and length)."""
    recipe = ctx.entry.recipe if ctx.entry else None
    if recipe is None:
        return None
    held = _RECIPE_MEMO.get(id(catalog))
    if held is None:
        key_id = id(catalog)
        held = (weakref.ref(catalog, lambda _: _RECIPE_MEMO.pop(key_id, None)), {})
        _RECIPE_MEMO[key_id] = held
    key = ctx.spec.model.model_dump_json() + ctx.settings.model_dump_json()
    if key not in held[1]:
        if len(held[1]) >= _RECIPE_MEMO_SIZE:
            held[1].pop(next(iter(held[1])))
        held[1][key] = _recipe_comparison(ctx, catalog, recipe)
    return held[1][key]


def clear_recipe_memo() -> None:
    """Forget every remembered comparison (benchmarks time a plan from cold with it)."""
    _RECIPE_MEMO.clear()


def _recipe_comparison(ctx: Context, catalog: Catalog, recipe: Recipe) -> RecipeComparison | None:
    # The recipes launch a bare `vllm serve MODEL`, so their settings are vLLM's defaults: the model's full
    # context and gpu_memory_utilization 0.92, in the checkpoint's own weight format.
    serving = Serving(
        max_model_len=recipe.max_model_len or ctx.arch.max_context,
        gpu_memory_utilization=VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
    )
    spec = MoEModelSpec(model=ctx.spec.model, serving=serving)
    recipe_ctx = build_context(spec, catalog, ctx.settings)
    planned = smallest_footprint_gb(recipe_ctx, catalog)
    if planned is None:
        return None
    return RecipeComparison(
        recipe_gb=recipe.vram_minimum_gb,
        planned_gb=round(planned, 1),
        ratio=round(planned / recipe.vram_minimum_gb, 3),
        source=recipe.source,
    )
