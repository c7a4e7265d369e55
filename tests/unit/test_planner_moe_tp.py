"""DP attention with the experts tensor-parallel over all TP x DP ranks ("DP 8 (MoE TP 8)"): vLLM's DP without
--enable-expert-parallel, where `FusedMoEParallelConfig.make` flattens TP across DP (moe_tp = DP x TP,
moe_ep = 1; aiconfigurator's "moeTp 8, moeEp 1"). Its arithmetic by hand, its words, and what
`spec.placement.expertParallel: false` means now. Its memory is held in test_planner_golden.py (the MoE TP
cases) and its flags in test_render.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import Catalog
from kubemoe.planner import PlannerSettings, plan_placement
from kubemoe.planner.context import build_context
from kubemoe.planner.layouts import Layout
from kubemoe.planner.moe import expert_columns, moe_comm_seconds, moe_gemm_efficiency

DEEPSEEK_V3 = "deepseek-ai/DeepSeek-V3"
MIXTRAL_8X7B = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def spec(model: str, placement: dict[str, Any] | None = None) -> MoEModelSpec:
    return MoEModelSpec.model_validate({"model": {"name": model}, "placement": placement or {}})


def test_the_dp_groups_gather_and_reduce_scatter_by_hand(catalog: Catalog) -> None:
    """Per MoE layer, 10 tokens on each of 8 DP ranks of one H200 node (NVSwitch 900 GB/s both ways, so
    450e9 B/s one way; 10 us per collective), hidden states in bf16.

    DeepSeek-V3 (hidden 7168: 14336 B a token): the all-gather and the reduce-scatter each move
    (8 - 1) x 10 x 14336 = 1,003,520 B per rank: 2 x (10e-6 + 1,003,520 / 450e9) = 24.46 us. Mixtral
    (hidden 4096: 8192 B): 7 x 10 x 8192 = 573,440 B, 2 x (10e-6 + 573,440 / 450e9) = 22.55 us. EP 8 over
    the DP ranks costs the same: vLLM's default all2all backend, allgather_reducescatter, dispatches with
    that all-gather and combines with that reduce-scatter (not k copies of each token to its experts, which
    for Mixtral at k = 2 would have been a quarter of the bytes). At DP 1 (TP 8, with EP or without) the TP
    ranks hold the same tokens: nothing beyond the layer's TP all-reduce. Neuron keeps the all-to-all: TP 16
    + EP 16 on trn2 sends each rank's 10 / 16 tokens to k = 2 experts, 15/16 remote: 9,600 B each way.
    """
    inst = catalog.instances["p5en.48xlarge"]
    link, latency = 450e9, 10e-6
    cases = [(DEEPSEEK_V3, 14336, 1_003_520), (MIXTRAL_8X7B, 8192, 573_440)]
    for model, act, gather in cases:
        ctx = build_context(spec(model), catalog, PlannerSettings())
        moe_tp = moe_comm_seconds(ctx, Layout(inst, 1, 1, 8, False), 10, act=act, link=link, latency=latency)
        ep = moe_comm_seconds(ctx, Layout(inst, 1, 1, 8, True), 10, act=act, link=link, latency=latency)
        assert moe_tp == pytest.approx(2 * (latency + gather / link))
        assert ep == pytest.approx(2 * (latency + gather / link))
    for ep_on in (False, True):
        tp8 = Layout(inst, 8, 1, 1, ep_on)
        assert moe_comm_seconds(ctx, tp8, 10, act=8192, link=link, latency=latency) == 0.0
    trn2 = Layout(catalog.instances["trn2.48xlarge"], 16, 1, 1, True)
    neuron = moe_comm_seconds(ctx, trn2, 10, act=8192, link=link, latency=latency)
    assert neuron == pytest.approx(2 * (latency + 10 / 16 * 2 * 8192 * 15 / 16 / link))


def test_expert_gemm_columns_and_rate_of_moe_tp_by_hand(catalog: Catalog) -> None:
    """DeepSeek-V3's 2048 expert-intermediate columns: whole under EP, 2048 / 8 = 256 per rank at MoE TP 8
    (DP 8, TP 2 x DP 4 or TP 8 alike). At 4096 routed tokens in FP8 on H200 (moeGemmEfficiency 0.36):
    rows per touched expert 4096 x 8 / 256 = 128 (all 256 touched: 1 - (1 - 8/256)^4096 = 1), so
    0.36 x 128 / (128 + 64) x 256 / (256 + 300) = 0.1105 against EP's 0.36 x 2/3 x 2048 / 2348 = 0.2093."""
    inst = catalog.instances["p5en.48xlarge"]
    ctx = build_context(spec(DEEPSEEK_V3), catalog, PlannerSettings())
    assert expert_columns(ctx, Layout(inst, 1, 1, 8, True)) == 2048
    for tp, dp in ((1, 8), (2, 4), (8, 1)):
        assert expert_columns(ctx, Layout(inst, tp, 1, dp, False)) == 256
    moe_tp = moe_gemm_efficiency(ctx, Layout(inst, 1, 1, 8, False), 4096.0, fp8_compute=True)
    ep = moe_gemm_efficiency(ctx, Layout(inst, 1, 1, 8, True), 4096.0, fp8_compute=True)
    assert moe_tp == pytest.approx(0.36 * 128 / 192 * 256 / 556, rel=1e-3)
    assert ep == pytest.approx(0.36 * 128 / 192 * 2048 / 2348, rel=1e-3)


def test_the_shape_text_tells_the_two_dp_layouts_apart(catalog: Catalog) -> None:
    inst = catalog.instances["p5en.48xlarge"]
    assert Layout(inst, 1, 1, 8, True).shape() == "DP 8 + EP 8"
    assert Layout(inst, 1, 1, 8, False).shape() == "DP 8 (MoE TP 8)"
    assert Layout(inst, 2, 1, 4, False).shape() == "TP 2 x DP 4 (MoE TP 8)"
    # DP 1 plans both modes too, so TP alone says which: vLLM's plain TP shards every expert over the TP ranks.
    assert Layout(inst, 8, 1, 1, False).shape() == "TP 8 (MoE TP 8)"
    assert Layout(inst, 8, 1, 1, True).shape() == "TP 8 + EP 8"
    assert Layout(inst, 1, 1, 1, False).shape() == "TP 1"  # one rank: no expert split to name
    assert Layout(inst, 8, 1, 1, False, moe=False).shape() == "TP 8"  # a dense model has no experts
    assert Layout(inst, 1, 1, 2, False, moe=False).shape() == "DP 2"  # a dense model has no MoE TP group
    assert Layout(inst, 1, 1, 8, False).expert_split == Layout(inst, 1, 1, 8, True).expert_split == 8


def test_expert_parallel_false_with_a_dp_size_plans_moe_tp_instead_of_dropping_dp(catalog: Catalog) -> None:
    """Before, `expertParallel: false` left DP out of the search; now it is the MoE TP layout, said the same
    way in the plan, the status and the notes."""
    plan = plan_placement(
        spec(
            MIXTRAL_8X7B, {"instanceTypes": ["p5.48xlarge"], "dataParallelSize": 8, "expertParallel": False}
        ),
        catalog,
    )
    assert (plan.tensor_parallel_size, plan.data_parallel_size) == (1, 8)
    assert not plan.expert_parallel
    assert plan.expert_parallel_size == 0
    assert plan.layout == "DP 8 (MoE TP 8) on p5.48xlarge"
    summary = plan.summary()
    assert summary.layout == plan.layout
    assert summary.expert_parallel_size == 0
    assert summary.data_parallel_size == 8
    assert plan.reason.startswith("DP 8 (MoE TP 8) on p5.48xlarge: ")
    assert any(n.startswith("MoE TP 8: without --enable-expert-parallel") for n in plan.notes)
    assert not any("+ EP" in a.layout for a in plan.alternatives)


def test_expert_parallel_false_alone_lets_the_planner_choose_dp_with_moe_tp(catalog: Catalog) -> None:
    plan = plan_placement(
        spec(MIXTRAL_8X7B, {"instanceTypes": ["p5.48xlarge"], "expertParallel": False}), catalog
    )
    assert not plan.expert_parallel
    assert any("(MoE TP " in a.layout for a in plan.alternatives) or "(MoE TP " in plan.layout
    assert not any(a.expert_parallel for a in plan.alternatives)


def test_both_dp_layouts_are_ranked_side_by_side_by_the_objective(catalog: Catalog) -> None:
    """Unpinned, each DP size is tried with EP and with MoE TP, and the objective says by how much one lost.
    For Mixtral on H100 the two move the same messages (vLLM's default EP dispatch is the DP group's
    all-gather) and EP's whole experts run the fused-MoE GEMM at a better shape factor (14336 / 14636 =
    0.98 against 1792 / 2092 = 0.86), but the busiest of 8 EP ranks takes epExpertImbalance[8] = 2.54x the
    mean: 2.54 x 0.86 / 0.98 = 2.2x MoE TP's expert time, so MoE TP ranks above it ($0.890 against $1.536/M
    tokens, aiconfigurator's choice of mode too). The plan itself is TP 4 (MoE TP 4), vLLM's plain TP on
    half the node, since DP 1 tries MoE TP as well: $0.863/M tokens, 3 % under DP 8 (MoE TP 8)."""
    plan = plan_placement(spec(MIXTRAL_8X7B, {"instanceTypes": ["p5.48xlarge"]}), catalog)
    by_layout = {a.layout: a for a in plan.alternatives}
    assert plan.layout == "TP 4 (MoE TP 4) on p5.48xlarge"
    assert not plan.expert_parallel
    dp8 = by_layout["DP 8 (MoE TP 8) on p5.48xlarge"]
    assert dp8.feasible
    assert not dp8.expert_parallel
    ep = by_layout["DP 8 + EP 8 on p5.48xlarge"]
    assert ep.feasible
    assert ep.expert_parallel
    assert ep.cost_per_million_tokens is not None
    assert dp8.cost_per_million_tokens is not None
    assert plan.cost_per_million_tokens is not None
    assert plan.cost_per_million_tokens < dp8.cost_per_million_tokens
    assert ep.cost_per_million_tokens > 1.5 * dp8.cost_per_million_tokens
    assert "by cheapest" in ep.reason
    # DeepSeek-V3 on H200: a decode step is bound by the expert weights each rank reads, the steps that
    # carry a prompt by the experts' FLOPs, which EP 8's busiest rank stretches: MoE TP wins at every DP
    # size. TP 2 x DP 4 (aiconfigurator's rank 2) and DP 8 (its rank 1) hold 120 sequences each, 1 % apart.
    ds = plan_placement(spec(DEEPSEEK_V3, {"instanceTypes": ["p5en.48xlarge"]}), catalog)
    assert ds.layout == "TP 2 x DP 4 (MoE TP 8) on p5en.48xlarge"
    assert not ds.expert_parallel
    ds_ep = {a.layout: a for a in ds.alternatives}["DP 8 + EP 8 on p5en.48xlarge"]
    assert ds_ep.feasible
    assert ds_ep.cost_per_million_tokens is not None
    assert ds.cost_per_million_tokens is not None
    assert ds_ep.cost_per_million_tokens > ds.cost_per_million_tokens
