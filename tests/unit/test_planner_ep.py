"""Expert parallelism as vLLM runs it by default: the busiest EP rank sets the experts' time
(PlannerSettings.epExpertImbalance, epExpertImbalanceEplb with --enable-eplb), and between equally cheap
plans of as many accelerators the one holding more concurrent sequences wins. The messages (vLLM's
allgather_reducescatter dispatch) are held in test_planner_moe_tp.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import Catalog
from kubemoe.planner import PlannerSettings
from kubemoe.planner.context import build_context
from kubemoe.planner.feasibility import Candidate
from kubemoe.planner.layouts import Layout
from kubemoe.planner.moe import ep_imbalance, eplb_helps
from kubemoe.planner.performance import Estimate, rates, stage_step_seconds
from kubemoe.planner.ranking import rank
from kubemoe.planner.sizing import size_layout

DEEPSEEK_V3 = "deepseek-ai/DeepSeek-V3"
MIXTRAL_8X7B = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def spec(model: str, placement: dict[str, Any] | None = None) -> MoEModelSpec:
    return MoEModelSpec.model_validate({"model": {"name": model}, "placement": placement or {}})


def test_the_busiest_ep_ranks_share_by_ep_size(catalog: Catalog) -> None:
    """The table's entry at the largest EP size not above the layout's; 1 without EP, at EP 1 and on
    Neuron (the table is vLLM's GPU kernels); the EPLB entry where the plan renders --enable-eplb."""
    ctx = build_context(spec(MIXTRAL_8X7B), catalog, PlannerSettings())
    h100 = catalog.instances["p5.48xlarge"]
    assert ep_imbalance(ctx, Layout(h100, 1, 1, 8, False)) == 1.0  # MoE TP: every rank the same work
    assert ep_imbalance(ctx, Layout(h100, 1, 1, 1, True)) == 1.0
    assert ep_imbalance(ctx, Layout(h100, 2, 1, 1, True)) == 1.26
    assert ep_imbalance(ctx, Layout(h100, 1, 1, 8, True)) == 2.54
    assert ep_imbalance(ctx, Layout(h100, 2, 1, 4, True)) == 2.54  # EP = TP x DP
    assert ep_imbalance(ctx, Layout(h100, 1, 1, 16, True)) == 3.77
    assert ep_imbalance(ctx, Layout(catalog.instances["trn2.48xlarge"], 16, 1, 1, True)) == 1.0
    own = PlannerSettings(ep_expert_imbalance={4: 1.5})
    ctx_own = build_context(spec(MIXTRAL_8X7B), catalog, own)
    assert ep_imbalance(ctx_own, Layout(h100, 2, 1, 1, True)) == 1.0  # below the smallest size listed
    assert ep_imbalance(ctx_own, Layout(h100, 1, 1, 32, True)) == 1.5
    # DeepSeek-V3 DP 16 + EP 16 over two H200 nodes renders --enable-eplb: the balanced-routing figure.
    ds = build_context(spec(DEEPSEEK_V3), catalog, PlannerSettings())
    wide = Layout(catalog.instances["p5en.48xlarge"], 1, 1, 16, True)
    assert eplb_helps(ds, wide)
    assert ep_imbalance(ds, wide) == 2.85
    assert not eplb_helps(ds, Layout(catalog.instances["p5en.48xlarge"], 1, 1, 8, True))


def test_the_imbalance_stretches_the_experts_flops_not_their_weights(catalog: Catalog) -> None:
    """Mixtral DP 8 + EP 8 on H100. One decoding sequence per rank is bound by the expert weights it reads:
    the busiest rank's FLOPs stay under them and the step does not change with the table. A 4096-token
    prompt step per rank is bound by the experts' FLOPs, which the busiest rank multiplies."""
    h100 = catalog.instances["p5.48xlarge"]
    layout = Layout(h100, 1, 1, 8, True)
    flat = build_context(spec(MIXTRAL_8X7B), catalog, PlannerSettings(ep_expert_imbalance={8: 1.0}))
    skew = build_context(spec(MIXTRAL_8X7B), catalog, PlannerSettings(ep_expert_imbalance={8: 2.0}))
    r = rates(flat, layout, fp8_compute=False)
    small = [stage_step_seconds(c, layout, c.split, r, 1) for c in (flat, skew)]
    assert small[1] == pytest.approx(small[0])
    big = [stage_step_seconds(c, layout, c.split, r, 1, p=4096) for c in (flat, skew)]
    assert big[1] > big[0] * 1.2
    # MoE TP of the same ranks is not touched by the table.
    moe_tp = Layout(h100, 1, 1, 8, False)
    same = [stage_step_seconds(c, moe_tp, c.split, r, 1, p=4096) for c in (flat, skew)]
    assert same[1] == pytest.approx(same[0])


def test_equally_cheap_plans_of_as_many_accelerators_go_to_more_concurrent_sequences(
    catalog: Catalog,
) -> None:
    """Two 8-GPU plans 2 % apart per token: within NEAR_TIE (5 %) the one holding 300 sequences beats the
    slightly cheaper one holding 200; 10 % apart, the cheaper one wins whatever it holds."""
    ctx = build_context(spec(MIXTRAL_8X7B), catalog, PlannerSettings())
    h100 = catalog.instances["p5.48xlarge"]
    base = Estimate(
        batch=200,
        kv_limit=400,
        tpot_ms=50.0,
        ttft_seconds=0.2,
        tokens_per_second=10000.0,
        requests_per_second=20.0,
        cost_per_million_tokens=1.00,
        problem=None,
    )

    def candidate(layout: Layout, est: Estimate) -> Candidate:
        return Candidate(layout, size_layout(ctx, layout), None, est)

    cheap = candidate(Layout(h100, 1, 1, 8, False), base)
    fuller = candidate(Layout(h100, 2, 1, 4, False), replace(base, batch=300, cost_per_million_tokens=1.02))
    assert rank(ctx, [cheap, fuller])[0] is fuller
    dearer = candidate(Layout(h100, 2, 1, 4, False), replace(base, batch=300, cost_per_million_tokens=1.10))
    assert rank(ctx, [cheap, dearer])[0] is cheap
    # Fewer accelerators still come first among the near-equal.
    small = candidate(Layout(h100, 2, 1, 1, True), replace(base, batch=50, cost_per_million_tokens=1.03))
    assert rank(ctx, [cheap, fuller, small])[0] is small
