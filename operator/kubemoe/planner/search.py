"""The planner's entry point: spec + catalog -> the best feasible Plan and the alternatives it beat.

Read the parts in this order: `context` (the model and what the placement allows), `layouts` (candidate
arrangements of ranks), `memory` and `sizing` (what each rank holds), `performance` and `moe` (what a
layout delivers; `moe` the expert layer, EP or MoE TP), `feasibility` (what fits, with reasons), `ranking`
(the strategy's order) and `explanation` (the Plan and its reasons). Explicit overrides
are checked, never silently replaced: an override that does not fit is an error that names the plan that
would.
"""

from __future__ import annotations

from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import Catalog
from kubemoe.catalog.schema import InstanceEntry
from kubemoe.planner.context import Context, allowed_instances, build_context, capability_problem
from kubemoe.planner.errors import PlanningError
from kubemoe.planner.explanation import MAX_ALTERNATIVES, alternative, to_plan
from kubemoe.planner.feasibility import Candidate, candidates
from kubemoe.planner.ranking import rank
from kubemoe.planner.settings import PlannerSettings
from kubemoe.planner.types import Plan, PlanReason


def plan_placement(spec: MoEModelSpec, catalog: Catalog, settings: PlannerSettings | None = None) -> Plan:
    """The best feasible plan for `spec`, or a PlanningError that says what to change."""
    settings = settings or PlannerSettings()
    ctx = build_context(spec, catalog, settings)
    instances = capable_instances(ctx, allowed_instances(spec, ctx.entry, catalog))
    found = candidates(ctx, instances)
    ranked = rank(ctx, found)
    if not ranked:
        raise _no_plan_error(spec, catalog, settings, ctx, found)
    return to_plan(ctx, ranked[0], ranked, found, catalog)


def capable_instances(ctx: Context, instances: list[InstanceEntry]) -> list[InstanceEntry]:
    """The instances whose accelerator runs these weights and KV cache (the capability table)."""
    problems = {i.name: capability_problem(ctx, i) for i in instances}
    kept = [i for i in instances if problems[i.name] is None]
    if not kept:
        raise PlanningError(
            PlanReason.NO_MATCHING_INSTANCE,
            "no allowed instance type runs this model as asked: "
            + "; ".join(f"{n} ({p})" for n, p in problems.items())
            + ". Allow other instance types or change spec.serving (kvCacheDtype, quantization)",
        )
    return kept


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


def _no_plan_error(
    spec: MoEModelSpec,
    catalog: Catalog,
    settings: PlannerSettings,
    ctx: Context,
    found: list[Candidate],
) -> PlanningError:
    problems = [c for c in found if c.problem]
    slo_bound = [c for c in problems if c.slo_bound]
    memory_bound = [c for c in problems if c.sizing is not None and not c.slo_bound]
    shown = slo_bound or memory_bound or problems
    # The most telling problem: the closest to working (most sequences within the SLO; else the largest
    # layout that was sized, i.e. the closest to fitting).
    shown.sort(
        key=lambda c: (-(c.estimate.batch if c.estimate else 0), -(c.layout.ranks), c.layout.instance.name)
    )
    detail = shown[0].problem if shown else "no candidate layouts"
    alternatives = [alternative(ctx, c, c.problem or "") for c in shown[:MAX_ALTERNATIVES]]
    if slo_bound:
        slo = spec.serving.slo
        return PlanningError(
            PlanReason.SLO_UNREACHABLE,
            f"no layout of {spec.model.name} meets the SLO (TPOT {slo.time_per_output_token_ms:g} ms, TTFT p95 "
            f"{slo.time_to_first_token_p95_seconds:g} s) with at least {settings.min_concurrency} concurrent "
            f"sequences: closest {detail}. Relax spec.serving.slo, allow faster instance types or lower "
            "PlannerSettings.minConcurrency",
            alternatives,
        )
    reason = PlanReason.INSUFFICIENT_MEMORY if memory_bound else PlanReason.INVALID_PARALLELISM
    if _has_overrides(spec):
        try:
            fallback = plan_placement(_without_overrides(spec), catalog, settings)
            hint = (
                f"; a plan that fits: {fallback.layout} (remove the explicit parallelism to let the planner "
                "choose)"
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
