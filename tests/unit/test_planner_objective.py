"""The planner's objective: $ per million output tokens within the SLO, at a useful batch.

First the performance model's arithmetic on one case, recomputed by hand; then the cases issue 10 names,
which must stop choosing what the $/hour planner chose; then the target, the minimum concurrency and the
status summary.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import Catalog, load_catalog
from kubemoe.planner import PlannerSettings, PlanningError, PlanReason, plan_placement
from kubemoe.planner.context import build_context
from kubemoe.planner.layouts import Layout
from kubemoe.planner.performance import (
    decode_heads_per_rank,
    operating_point,
    prefill_seconds,
    rates,
    stage_step_seconds,
)
from kubemoe.planner.ranking import NEAR_TIE


def spec(
    model: str, serving: dict[str, Any] | None = None, placement: dict[str, Any] | None = None
) -> MoEModelSpec:
    return MoEModelSpec.model_validate(
        {"model": {"name": model}, "serving": serving or {}, "placement": placement or {}}
    )


def test_decode_step_and_prefill_of_qwen3_30b_tp2_on_h100_by_hand(catalog: Catalog) -> None:
    """Qwen3-30B-A3B, TP 2 + EP 2 on p5 (H100), 100 sequences, the default 2000/500 workload.

    Rates per GPU: HBM 3350 GB/s x 0.75 = 2.5125 TB/s; BF16 989 TFLOPS; NVLink 900 / 2 = 450 GB/s.
    Weights (bf16): experts 48 x 128 x 3 x 2048 x 768 = 28.99B -> 57.98 GB, others 1.509B -> 3.018 GB, of
    which the input embedding 151936 x 2048 = 0.311B is looked up, not streamed: 2.396 GB per step.
    Decode only (p = 0):
    * dense: max(2.396 GB / 2 / 2.5125 TB/s = 0.477 ms, 2 x 100 x 1.198B / 0.5 / 989e12 / 2 = 0.242) = 0.477
    * experts: 100 tokens touch 1 - (1 - 8/128)^100 = 99.84 % of them: 57.98 / 2 x 0.9984 / 2.5125 TB/s =
      11.52 ms (their FLOPs at the fused-MoE kernel's rate, x epExpertImbalance[2] = 1.26 for the busiest
      of the 2 EP ranks, take 1.07 ms)
    * attention: KV at the mean context 2000 + 500/2 = 2250: 48 x 2 x 2 heads x 128 x 2 B x 2250 = 110.6 MB
      per sequence, 11.06 GB for 100 -> 4.40 ms (FLOPs 2 x 100 x 2250 x 48 x 16 x 256 / (989e12 x 0.2)
      = 0.45 ms)
    * TP: 48 layers x 2 all-reduces x (10 us + 2 x 1/2 x 100 x 4096 B / 450 GB/s) = 1.047 ms
    * EP at DP 1: no dispatch (both TP ranks hold the 100 tokens; vLLM's allgather_reducescatter gathers
      over the DP group, here of one) and the experts' partial sums ride the MLP's TP all-reduce: 0 ms.
    * fixed: 1 ms a step + 48 layers x 50 us = 3.4 ms
    Step = 0.477 + 11.52 + 4.40 + 1.047 + 3.4 = 20.84 ms.
    400 prompt tokens in the same step (500 tokens):
    * dense: compute 2 x (100 x 1.198B / 0.5 + 400 x (1.509 - 2 x 0.311)B / 0.4) / 989e12 / 2 = 1.139 ms
      now exceeds the 0.477 ms of weights;
    * experts: a fifth of such steps would carry a whole 2000-token prompt (400 / 2000): 0.8 x 99.84 % +
      0.2 x 100 % = 99.87 % touched, 11.52 ms of weights, more than their 5.35 ms of FLOPs;
    * attention: 4.40 + prompts 400 x 2 x 48 x 32 x 2 x 128 x (2000 - 1000) / 2 / (989e12 x 0.4) = 0.398;
    * TP: 48 x 2 x (10 us + 500 x 4096 / 450 GB/s) = 1.397 ms; EP nothing; fixed 3.4 ms. Step = 22.26 ms.
    A whole 2000-token prompt in the step (2100 tokens): dense 2 x (100 x 1.198B / 0.5 + 2000 x 0.887B /
    0.4) / 989e12 / 2 = 4.725 ms; every expert touched, their FLOPs 16.71 ms over 11.54 ms of weights;
    attention 4.40 + 1.99 = 6.39; TP 48 x 2 x (10 us + 2100 x 4096 / 450 GB/s) = 2.795; fixed 3.4: 34.02 ms.
    The steady state at 100 sequences brings 100 x 2000 / 500 = 400 prompt tokens per step, a fifth of a
    whole prompt (min(2000, maxNumBatchedTokens 8192 - 100)); vLLM gives a waiting prompt the whole step,
    so a fifth of the steps carry one: TPOT = 0.2 x 34.02 + 0.8 x 20.84 = 23.48 ms. The prompts cost 2.6 ms
    per token of output, not a prefill's 18, and not the 1.4 ms of spreading them over every step.
    Prefill alone: 2 x (1.509 + 1.812 - 2 x 0.311)B x 2000 + attention 2000 x 786.4M = 1.237e13 FLOPs /
    (2 x 989e12 x 0.4) = 15.63 ms, plus 48 x 2 x (10 us + 2000 x 4096 / 450 GB/s) = 2.71 ms of TP
    all-reduces = 18.34 ms (more than one read of the rank's 30.5 GB of weights, 12.14 ms).
    """
    ctx = build_context(spec("Qwen/Qwen3-30B-A3B"), catalog, PlannerSettings())
    layout = Layout(catalog.instances["p5.48xlarge"], tp=2, pp=1, dp=1, expert_parallel=True)
    r = rates(ctx, layout, fp8_compute=True)
    assert (r.hbm, r.flops, r.intra) == (
        pytest.approx(2.5125e12),
        pytest.approx(989e12),
        pytest.approx(450e9),
    )
    assert stage_step_seconds(ctx, layout, ctx.split, r, 100) == pytest.approx(20.84e-3, rel=2e-3)
    assert stage_step_seconds(ctx, layout, ctx.split, r, 100, p=400) == pytest.approx(22.26e-3, rel=2e-3)
    assert stage_step_seconds(ctx, layout, ctx.split, r, 100, p=2000) == pytest.approx(34.02e-3, rel=2e-3)
    prefill = prefill_seconds(ctx, layout, ctx.split, r)
    assert prefill == pytest.approx(18.34e-3, rel=2e-3)
    point = operating_point(ctx, layout, ctx.split, r, 100, prefill=prefill)
    assert point.tpot == pytest.approx(23.48e-3, rel=2e-3)
    assert point.step_tokens == 2100  # the budget check sees the step that carries the prompt


def test_mla_decode_attention_does_not_shrink_below_the_kernels_head_tile(catalog: Catalog) -> None:
    """DeepSeek-V3's 128 heads over TP 8 are 16 per rank, but FlashMLA on Hopper computes a 64-head tile
    and vLLM's CUTLASS MLA on Blackwell pads to 128: TP 8 decode attention costs what 64 (128) heads do."""
    ctx = build_context(spec("deepseek-ai/DeepSeek-V3"), catalog, PlannerSettings())
    h200, b200 = catalog.instances["p5en.48xlarge"], catalog.instances["p6-b200.48xlarge"]
    assert decode_heads_per_rank(ctx, Layout(h200, 8, 1, 1, True)) == 64
    assert decode_heads_per_rank(ctx, Layout(h200, 1, 1, 8, True)) == 128
    assert decode_heads_per_rank(ctx, Layout(b200, 2, 1, 4, True)) == 128
    mixtral = build_context(spec("mistralai/Mixtral-8x7B-Instruct-v0.1"), catalog, PlannerSettings())
    assert decode_heads_per_rank(mixtral, Layout(h200, 8, 1, 1, True)) == 4  # GQA: no MLA tile


# --- the cases issue 10 names -------------------------------------------------------------------------------


def test_mixtral_8x22b_at_64k_no_longer_picks_inf2_tp2_pp11_for_one_sequence(catalog: Catalog) -> None:
    plan = plan_placement(spec("mistralai/Mixtral-8x22B-Instruct-v0.1", {"maxModelLen": 65536}), catalog)
    assert (plan.instance_type, plan.pipeline_parallel_size) != ("inf2.48xlarge", 11)
    assert plan.batch_size >= PlannerSettings().min_concurrency
    # 56 layers: eleven stages would not divide them evenly, whatever the instance.
    with pytest.raises(PlanningError) as info:
        plan_placement(
            spec(
                "mistralai/Mixtral-8x22B-Instruct-v0.1",
                {"maxModelLen": 65536},
                {"instanceTypes": ["inf2.48xlarge"], "tensorParallelSize": 2, "pipelineParallelSize": 11},
            ),
            catalog,
        )
    assert "PP 11 does not divide the 56 layers evenly" in info.value.message


def test_mixtral_8x7b_default_is_no_longer_inf2(catalog: Catalog) -> None:
    plan = plan_placement(spec("mistralai/Mixtral-8x7B-Instruct-v0.1"), catalog)
    assert plan.accelerator_kind == "gpu"
    # inf2 is still planned when asked for, and it lost on $/M tokens.
    neuron = plan_placement(
        spec("mistralai/Mixtral-8x7B-Instruct-v0.1", placement={"accelerator": "neuron"}), catalog
    )
    assert neuron.cost_per_million_tokens is not None
    assert plan.cost_per_million_tokens is not None
    assert neuron.cost_per_million_tokens > plan.cost_per_million_tokens


def test_deepseek_v3_fp8_is_not_planned_on_a100_by_default(catalog: Catalog) -> None:
    plan = plan_placement(spec("deepseek-ai/DeepSeek-V3"), catalog)
    assert not plan.accelerator_model.startswith("A100")
    # On A100 only, at the default 50 ms TPOT, the BF16 weights (1342 GB) span three or more nodes and every
    # step's expert messages cross the nodes' 400 Gbps EFA. Only TP 8 x DP 4 over four nodes reaches the
    # useful minimum, just: the DP group's all-gather sends each token to the 3 other DP ranks once. With
    # EP 32 vLLM's default dispatch (allgather_reducescatter) is that same all-gather, and a decode step is
    # bound by the network and the weights; but the steps that carry a whole prompt are bound by the
    # experts' FLOPs, which EP's busiest rank stretches: at the same 16 sequences EP 32 takes 49.0 ms a token
    # against MoE TP 32's 46.6 ($93.48 against $88.75/M tokens).
    only_a100 = plan_placement(
        spec("deepseek-ai/DeepSeek-V3", placement={"instanceTypes": ["p4de.24xlarge"]}), catalog
    )
    assert only_a100.layout == "TP 8 x DP 4 (MoE TP 32) on p4de.24xlarge x 4 nodes"
    assert not only_a100.expert_parallel
    assert only_a100.batch_size == 16  # the minimum: a fragile plan an expert would not pick over H100/H200
    assert only_a100.time_per_output_token_ms <= 50
    twin = {a.layout: a for a in only_a100.alternatives}["TP 8 x DP 4 + EP 32 on p4de.24xlarge x 4 nodes"]
    assert twin.feasible
    assert twin.concurrent_sequences == only_a100.batch_size
    assert twin.time_per_output_token_ms > only_a100.time_per_output_token_ms
    assert twin.cost_per_million_tokens > only_a100.cost_per_million_tokens
    # With a slower TPOT it is planned at its BF16 cost (1342 GB) and says so.
    a100 = plan_placement(
        spec(
            "deepseek-ai/DeepSeek-V3",
            {"slo": {"timePerOutputTokenMs": 100}},
            placement={"instanceTypes": ["p4de.24xlarge"]},
        ),
        catalog,
    )
    assert a100.weights_total_gb == pytest.approx(1342.06, abs=0.1)
    assert any("no FP8 tensor cores" in n for n in a100.notes)


def test_deepseek_v3_on_one_h200_node_prefers_data_parallel_attention_over_tp8(catalog: Catalog) -> None:
    """MLA keeps the whole latent KV on every TP rank; DP attention gives each rank its own sequences."""
    plan = plan_placement(
        spec("deepseek-ai/DeepSeek-V3", placement={"instanceTypes": ["p5en.48xlarge"]}), catalog
    )
    assert plan.data_parallel_size > 1
    # aiconfigurator's choice too: DP 8 with the experts TP-sharded over the 8 ranks (EP 8's busiest rank
    # costs more, test_planner_moe_tp.py).
    assert plan.expert_parallel_size == 0
    assert not plan.expert_parallel
    tp8 = [a for a in plan.alternatives if a.tensor_parallel_size == 8 and a.data_parallel_size == 1]
    assert tp8
    assert tp8[0].feasible
    assert tp8[0].cost_per_million_tokens is not None
    assert plan.cost_per_million_tokens is not None
    assert tp8[0].cost_per_million_tokens > plan.cost_per_million_tokens
    # The status names the runner-up shapes with their estimates and why they lost.
    summary = plan.summary()
    assert len(summary.alternatives) == 3
    assert all(a.reason for a in summary.alternatives)
    assert summary.cost_per_million_tokens == plan.cost_per_million_tokens


# --- the SLO, the minimum concurrency and the target ----------------------------------------------------------


def test_a_tight_slo_no_layout_meets_is_slo_unreachable_with_the_closest_miss(catalog: Catalog) -> None:
    with pytest.raises(PlanningError) as info:
        plan_placement(
            spec(
                "deepseek-ai/DeepSeek-V3",
                {"slo": {"timePerOutputTokenMs": 5}},
                {"instanceTypes": ["p5en.48xlarge"]},
            ),
            catalog,
        )
    assert info.value.reason == PlanReason.SLO_UNREACHABLE
    assert "TPOT 5 ms" in info.value.message


def test_the_minimum_concurrency_is_a_setting_and_one_sequence_plans_do_not_win(catalog: Catalog) -> None:
    qwen72 = spec("Qwen/Qwen1.5-72B-Chat", placement={"instanceTypes": ["p4de.24xlarge"]})
    with pytest.raises(PlanningError) as info:
        plan_placement(qwen72, catalog, PlannerSettings(min_concurrency=4096))
    assert "4096" in info.value.message
    plan = plan_placement(qwen72, catalog)
    assert plan.batch_size >= 16


def test_a_target_in_requests_per_second_sizes_the_replicas(catalog: Catalog) -> None:
    plan = plan_placement(spec("Qwen/Qwen3-30B-A3B", {"target": {"requestsPerSecond": 100}}), catalog)
    assert plan.target_replicas is not None
    assert plan.target_replicas * plan.requests_per_second >= 100
    assert (plan.target_replicas - 1) * plan.requests_per_second < 100
    users = plan_placement(spec("Qwen/Qwen3-30B-A3B", {"target": {"concurrentUsers": 5000}}), catalog)
    assert users.target_replicas is not None
    assert users.target_replicas * users.batch_size >= 5000


def test_a_target_sets_exactly_one_of_its_fields() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        spec("Qwen/Qwen3-30B-A3B", {"target": {}})
    with pytest.raises(ValueError, match="exactly one"):
        spec("Qwen/Qwen3-30B-A3B", {"target": {"requestsPerSecond": 1, "concurrentUsers": 2}})


@pytest.mark.parametrize("model", sorted(load_catalog().models))
def test_every_catalog_model_plans_under_default_settings_with_its_throughput_and_cost(
    catalog: Catalog, model: str
) -> None:
    plan = plan_placement(spec(model), catalog)
    assert plan.tokens_per_second > 0
    assert plan.cost_per_million_tokens is not None
    assert plan.batch_size >= PlannerSettings().min_concurrency


# --- small models: one GPU per replica unless a wider layout is really cheaper per token ----------------


def test_a_model_that_fits_one_gpu_runs_as_one_gpu_replicas(catalog: Catalog) -> None:
    """OLMoE-1B-7B (13.8 GB) on p5: DP 8 + EP 8 estimates a few % less per token than TP 1, within what the
    estimate can tell apart (NEAR_TIE), so one-GPU replicas win, and the explanation says so truly."""
    plan = plan_placement(
        spec("allenai/OLMoE-1B-7B-0924", placement={"instanceTypes": ["p5.48xlarge"]}), catalog
    )
    assert (plan.tensor_parallel_size, plan.data_parallel_size, plan.pipeline_parallel_size) == (1, 1, 1)
    assert plan.accelerators == 1
    assert plan.cost_per_million_tokens is not None
    wider = [a for a in plan.alternatives if a.feasible and a.cost_per_million_tokens is not None]
    assert wider
    cheaper = [a for a in wider if a.cost_per_million_tokens < plan.cost_per_million_tokens]  # type: ignore[operator]
    # Whatever estimates lower is within NEAR_TIE, says it, and needs more GPUs.
    for a in cheaper:
        assert a.cost_per_million_tokens * (1 + NEAR_TIE) >= plan.cost_per_million_tokens  # type: ignore[operator]
        assert a.accelerators > 1
        assert f"cheaper per token by less than the {NEAR_TIE:.0%}" in a.reason
    assert plan.reason.startswith(
        f"TP 1 on p5.48xlarge: fewest accelerators (1) among plans within {NEAR_TIE:.0%}"
    )
    lowest = min(wider, key=lambda a: a.cost_per_million_tokens or 0.0)
    assert f"(${lowest.cost_per_million_tokens:.3f}/M tokens, {lowest.layout}): " in plan.reason
    # gpt-oss-20b on p5 is cheapest per token outright on one GPU.
    oss = plan_placement(spec("openai/gpt-oss-20b", placement={"instanceTypes": ["p5.48xlarge"]}), catalog)
    assert (oss.tensor_parallel_size, oss.data_parallel_size, oss.accelerators) == (1, 1, 1)
    assert "lowest $ per output token" in oss.reason


def test_a_wider_layout_wins_when_it_is_really_cheaper_per_token(catalog: Catalog) -> None:
    """Qwen3-30B-A3B (61 GB) fits one H100 but leaves it ~9 GiB of KV cache: TP 1 holds a few dozen
    2500-token sequences, and its $/M tokens is far beyond NEAR_TIE of the wider layouts'."""
    plan = plan_placement(spec("Qwen/Qwen3-30B-A3B", placement={"instanceTypes": ["p5.48xlarge"]}), catalog)
    assert plan.accelerators > 1
    tp1 = [a for a in plan.alternatives if a.accelerators == 1]
    assert tp1
    assert tp1[0].feasible
    assert tp1[0].cost_per_million_tokens is not None
    assert plan.cost_per_million_tokens is not None
    assert tp1[0].cost_per_million_tokens > plan.cost_per_million_tokens * (1 + NEAR_TIE)
