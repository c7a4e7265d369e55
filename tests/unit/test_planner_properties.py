"""Properties of `plan_placement` over generated specs: every plan fits, meets its SLO at a useful batch,
obeys the structural rules and is the best under its strategy; every rejection is justified; errors only
when nothing fits (or, with SLOUnreachable, when what fits misses the SLO).

Fits are recomputed here from `planner.memory`'s formulas, the settings' overheads, vLLM's batching
defaults written out per accelerator (`VLLM_BATCH_DEFAULTS`) and the capability table's FP8 upcast, never
with the planner's sizing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kubemoe.api.moemodel import Architecture, MoEModelSpec
from kubemoe.catalog.loader import load_catalog
from kubemoe.catalog.schema import InstanceEntry, ModelEntry
from kubemoe.planner import Plan, PlannerSettings, PlanningError, PlanReason, plan_placement
from kubemoe.planner import memory as mem
from kubemoe.planner.ranking import NEAR_TIE

CATALOG = load_catalog()
MODELS = sorted(CATALOG.models)
INSTANCES = sorted(CATALOG.instances)
GIB = 1024**3
DEFAULTS = PlannerSettings()


# --- an independent fit check ------------------------------------------------------------------------------


#: vLLM 0.33's `get_batch_defaults` (vllm/engine/arg_utils.py, usage context OPENAI_API_SERVER) written out
#: per accelerator, not re-derived from memory thresholds as the planner does: B200-class (>= 160 GiB)
#: 16384 tokens / 1024 sequences, H100/H200 8192 / 1024, everything else (A100, L40S, A10G, Neuron) 2048 / 256.
VLLM_BATCH_DEFAULTS = {
    "B200": (16384, 1024),
    "H100-80GB": (8192, 1024),
    "H200-141GB": (8192, 1024),
    "A100-40GB": (2048, 256),
    "A100-80GB": (2048, 256),
    "L40S": (2048, 256),
    "A10G": (2048, 256),
    "Trainium": (2048, 256),
    "Trainium2": (2048, 256),
    "Inferentia2": (2048, 256),
}


def batching(inst: InstanceEntry) -> tuple[int, int]:
    """vLLM's (max_num_batched_tokens, max_num_seqs) for this instance's accelerator."""
    return VLLM_BATCH_DEFAULTS[inst.accelerator_model]


def test_every_catalog_accelerator_has_its_vllm_batch_defaults() -> None:
    # A new accelerator in the catalog must be classified here by reading vLLM, not by the planner's rule.
    assert {i.accelerator_model for i in CATALOG.instances.values()} <= set(VLLM_BATCH_DEFAULTS)


def overhead(inst: InstanceEntry, ranks: int) -> float:
    if inst.accelerator_kind == "neuron":
        return DEFAULTS.neuron_runtime_gib * GIB
    nccl = DEFAULTS.gpu_nccl_gib if ranks > 1 else 0.0
    return (DEFAULTS.gpu_context_gib + DEFAULTS.gpu_cuda_graphs_gib + nccl) * GIB


@dataclass(frozen=True)
class Request:
    arch: Architecture
    max_model_len: int
    kv_bytes: int
    utilization: float
    quantization: str | None = None


def weight_split(req: Request, inst: InstanceEntry) -> mem.WeightSplit:
    """The checkpoint's bytes; an FP8 checkpoint counted as BF16 where the accelerator has no FP8."""
    cap = CATALOG.accelerators[inst.accelerator_model]
    if req.quantization is None and req.arch.native_dtype == "fp8" and cap.fp8_checkpoint == "upcast":
        return mem.weight_split(req.arch.model_copy(update={"native_dtype": "bfloat16"}), None)
    return mem.weight_split(req.arch, req.quantization)


def sequences(
    req: Request, inst: InstanceEntry, tp: int, pp: int, dp: int = 1, ep: bool | None = None
) -> int:
    """Full-length sequences one replica holds at this layout (0: it does not fit). `ep`: expert
    parallelism, by default on for MoE models over more than one rank. Either way the experts split over
    all TP x DP ranks (vLLM's EP size, or its MoE TP size without EP); without EP at DP > 1 each rank's MoE
    layers also run the other DP ranks' gathered tokens."""
    if ep is None:
        ep = req.arch.is_moe and tp * dp > 1
    split = tp * dp
    weights = mem.weights_per_rank(weight_split(req, inst), tp=tp, pp=pp, expert_split=split)
    tokens, seqs = batching(inst)
    act = mem.activation_bytes_per_rank(
        req.arch,
        batched_tokens=tokens,
        max_num_seqs=seqs,
        tp=tp,
        expert_split=split,
        dtype_bytes=2,
        gathered=1 if ep else dp,
    )
    usable = inst.memory_per_device_mib / inst.cores_per_device * 1024**2 * req.utilization
    left = usable - weights - act - overhead(inst, tp * pp * dp)
    kv = mem.kv_bytes_per_sequence_per_rank(
        req.arch, tokens=req.max_model_len, tp=tp, pp=pp, kv_dtype_bytes=req.kv_bytes
    )
    return max(0, math.floor(left / kv)) * dp


def structurally_valid(arch: Architecture, inst: InstanceEntry, tp: int, pp: int, dp: int = 1) -> bool:
    per_node = inst.ranks_per_node
    ranks = tp * pp * dp
    multi_node_dp = dp > 1 and pp == 1 and tp * dp > per_node and (tp * dp) % per_node == 0
    return (
        (tp * dp <= per_node or (multi_node_dp and inst.accelerator_kind == "gpu"))
        and tp <= per_node
        and not (dp > 1 and pp > 1)
        and not (dp > 1 and inst.accelerator_kind != "gpu")
        and arch.num_attention_heads % tp == 0
        and pp <= arch.num_layers
        and arch.num_layers % pp == 0
        and (ranks <= per_node or tp * dp == per_node or multi_node_dp)
        and nodes_of(inst, tp, pp, dp) <= DEFAULTS.max_nodes_per_replica
    )


def searched_layouts(arch: Architecture, inst: InstanceEntry) -> list[tuple[int, int]]:
    """The documented search space: power-of-two TP up to a node, extra stages only across whole nodes."""
    per_node = inst.ranks_per_node
    out = []
    for tp in (2**i for i in range(8) if 2**i <= per_node):
        pps = [1] + (list(range(2, DEFAULTS.max_nodes_per_replica + 1)) if tp == per_node else [])
        out += [(tp, pp, 1) for pp in pps if structurally_valid(arch, inst, tp, pp)]
        if arch.is_moe and inst.accelerator_kind == "gpu":
            fill = per_node // tp
            dps = [fill * n for n in range(1, DEFAULTS.max_nodes_per_replica + 1) if fill * n > 1]
            out += [(tp, 1, dp) for dp in dps if structurally_valid(arch, inst, tp, 1, dp)]
    return out


def allowed(
    entry: ModelEntry | None, names: list[str], accelerator: str, kv: str = "auto"
) -> list[InstanceEntry]:
    out = []
    for name in names or INSTANCES:
        inst = CATALOG.instances[name]
        if accelerator not in ("any", inst.accelerator_kind):
            continue
        if kv not in CATALOG.accelerators[inst.accelerator_model].kv_dtypes:
            continue
        if inst.accelerator_kind == "neuron":
            path = entry.neuron if entry else "none"
            families = CATALOG.accelerators[inst.accelerator_model].neuron_families
            if entry is None or path == "none" or entry.family not in families.get(path, []):
                continue
        out.append(inst)
    return out


def nodes_of(inst: InstanceEntry, tp: int, pp: int, dp: int) -> int:
    return 1 if tp * pp * dp <= inst.ranks_per_node else math.ceil(tp * pp * dp / inst.ranks_per_node)


# --- generated specs ---------------------------------------------------------------------------------------

specs = st.fixed_dictionaries(
    {
        "model": st.sampled_from(MODELS),
        "instances": st.one_of(
            st.just([]), st.lists(st.sampled_from(INSTANCES), min_size=1, max_size=4, unique=True)
        ),
        "accelerator": st.sampled_from(["any", "any", "gpu", "neuron"]),
        # A length, the model's whole context, or one token past it (which must be InvalidServing).
        "max_model_len": st.sampled_from([None, 1024, 4096, 8192, 32768, 131072, "context", "over"]),
        "kv": st.sampled_from(["auto", "fp8"]),
        "utilization": st.sampled_from([0.5, 0.7, 0.85, 0.9, 0.95, 0.98]),
        "strategy": st.sampled_from(["cheapest", "fewest-accelerators", "lowest-latency"]),
    }
)


def max_model_len(g: dict[str, Any]) -> int | None:
    context = CATALOG.models[g["model"]].architecture.max_context
    choice = g["max_model_len"]
    if choice == "context":
        return context
    if choice == "over":
        return context + 1
    return None if choice is None else min(choice, context)


def build(g: dict[str, Any]) -> MoEModelSpec:
    serving: dict[str, Any] = {"kvCacheDtype": g["kv"], "gpuMemoryUtilization": g["utilization"]}
    if max_model_len(g):
        serving["maxModelLen"] = max_model_len(g)
    return MoEModelSpec.model_validate(
        {
            "model": {"name": g["model"]},
            "serving": serving,
            "placement": {
                "instanceTypes": g["instances"],
                "accelerator": g["accelerator"],
                "strategy": g["strategy"],
            },
        }
    )


def request_of(g: dict[str, Any]) -> Request:
    entry = CATALOG.models[g["model"]]
    arch = entry.architecture
    length = max_model_len(g) or min(arch.max_context, DEFAULTS.default_max_model_len_cap)
    return Request(arch, length, 1 if g["kv"] == "fp8" else 2, g["utilization"])


def check_plan(g: dict[str, Any], plan: Plan) -> None:
    req = request_of(g)
    arch = req.arch
    inst = CATALOG.instances[plan.instance_type]
    tp, pp, dp = plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.data_parallel_size
    names = [i.name for i in allowed(CATALOG.models[g["model"]], g["instances"], g["accelerator"], g["kv"])]
    assert plan.instance_type in names
    # Fits: weights + activations + overhead + one full sequence of KV within usable memory.
    assert sequences(req, inst, tp, pp, dp) >= 1
    assert plan.concurrent_sequences == sequences(req, inst, tp, pp, dp, plan.expert_parallel) >= 1
    # The SLO and the performance model: a useful batch within the latency target and the KV cache.
    slo = MoEModelSpec.model_validate({"model": {"name": g["model"]}}).serving.slo
    assert plan.time_per_output_token_ms <= slo.time_per_output_token_ms
    assert plan.time_to_first_token_seconds <= slo.time_to_first_token_p95_seconds
    assert DEFAULTS.min_concurrency <= plan.batch_size <= plan.kv_limit_sequences
    assert plan.tokens_per_second > 0
    if plan.cost_per_hour is not None:
        assert plan.cost_per_million_tokens == pytest.approx(
            plan.cost_per_hour / (plan.tokens_per_second * 3600) * 1e6, rel=1e-3
        )
    # Structure.
    assert structurally_valid(arch, inst, tp, pp, dp)
    assert arch.num_attention_heads % tp == 0
    assert plan.ranks_per_node <= inst.ranks_per_node
    assert plan.nodes == nodes_of(inst, tp, pp, dp)
    if plan.nodes > 1:
        assert tp * dp == inst.ranks_per_node or (pp == 1 and tp * dp == inst.ranks_per_node * plan.nodes)
        # A replica spans nodes only when no single-node layout of its instance type works.
        assert not any(
            a.feasible and a.instance_type == plan.instance_type and a.nodes == 1 for a in plan.alternatives
        )
    assert plan.devices_per_node == math.ceil(plan.ranks_per_node / inst.cores_per_device)
    assert plan.devices_per_node <= inst.devices_per_node
    if dp > 1:
        # DP + EP, or DP with the experts TP-sharded over all TP x DP ranks (MoE TP): the objective chose.
        assert arch.is_moe
    else:
        # DP 1: EP only for a MoE model over more than one TP rank, where the objective also tried MoE TP
        # (vLLM's plain TP, no --enable-expert-parallel); one rank has neither.
        assert not plan.expert_parallel or (arch.is_moe and tp > 1)
    assert plan.expert_parallel_size == (tp * dp if plan.expert_parallel else 0)
    assert plan.engine == ("vllm" if inst.accelerator_kind == "gpu" else "neuronx")
    assert plan.max_model_len == req.max_model_len

    # Every alternative's verdict is justified, and none beats the plan under its strategy.
    for alt in plan.alternatives:
        a_inst = CATALOG.instances[alt.instance_type]
        at, ap, ad = alt.tensor_parallel_size, alt.pipeline_parallel_size, alt.data_parallel_size
        assert alt.instance_type in names
        fit = (
            structurally_valid(arch, a_inst, at, ap, ad)
            and sequences(req, a_inst, at, ap, ad, alt.expert_parallel) >= 1
        )
        if alt.feasible:
            assert fit, alt
        elif fit:
            # It fits in memory, so what it missed is the SLO or the useful minimum of sequences.
            assert (
                "SLO" in alt.reason or "useful minimum" in alt.reason or "KV cache holds no" in alt.reason
            ), alt
        if not alt.feasible:
            continue
        assert alt.time_per_output_token_ms is not None
        assert alt.time_per_output_token_ms <= slo.time_per_output_token_ms
        assert alt.concurrent_sequences >= DEFAULTS.min_concurrency
        a_nodes = nodes_of(a_inst, at, ap, ad)
        if g["strategy"] == "cheapest":
            mine = math.inf if plan.cost_per_million_tokens is None else plan.cost_per_million_tokens
            theirs = math.inf if alt.cost_per_million_tokens is None else alt.cost_per_million_tokens
            # Within NEAR_TIE of the best $/M tokens the smaller replica wins, then the one holding more
            # concurrent sequences (ranking.NEAR_TIE).
            smaller_or_fuller = alt.accelerators > plan.accelerators or (
                alt.accelerators == plan.accelerators and alt.concurrent_sequences <= plan.batch_size
            )
            near_tie = smaller_or_fuller and mine <= theirs * (1 + NEAR_TIE) + 1e-9
            assert theirs >= mine or near_tie, alt
        elif g["strategy"] == "fewest-accelerators":
            assert alt.accelerators >= plan.accelerators, alt
        else:
            assert a_nodes >= plan.nodes, alt


def check_error(g: dict[str, Any], err: PlanningError) -> None:
    entry = CATALOG.models[g["model"]]
    instances = allowed(entry, g["instances"], g["accelerator"], g["kv"])
    if err.reason == PlanReason.NO_MATCHING_INSTANCE:
        assert instances == []
        return
    assert instances, f"{err.reason}: {err.message}"
    req = request_of(g)
    if err.reason == PlanReason.SLO_UNREACHABLE:
        # Something fits in memory, and every alternative shown missed the SLO or the minimum.
        assert err.alternatives
        assert all(not a.feasible for a in err.alternatives)
        return
    assert err.reason in (PlanReason.INSUFFICIENT_MEMORY, PlanReason.INVALID_PARALLELISM), err.message
    # Brute force over the documented search space: nothing fits.
    for inst in instances:
        for tp, pp, dp in searched_layouts(req.arch, inst):
            for ep in [True, False] if tp * dp > 1 and req.arch.is_moe else [None]:
                assert sequences(req, inst, tp, pp, dp, ep) == 0, (inst.name, tp, pp, dp, ep, err.message)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_every_plan_fits_obeys_the_rules_and_beats_its_alternatives(g: dict[str, Any]) -> None:
    spec = build(g)
    if g["max_model_len"] == "over":
        event("error InvalidServing")
        with pytest.raises(PlanningError) as info:
            plan_placement(spec, CATALOG)
        assert info.value.reason == PlanReason.INVALID_SERVING
        return
    try:
        plan = plan_placement(spec, CATALOG)
    except PlanningError as err:
        event(f"error {err.reason}")
        check_error(g, err)
    else:
        event(f"plan on {plan.accelerator_kind}, {plan.nodes} node(s)")
        check_plan(g, plan)


@settings(max_examples=60, deadline=None)
@given(specs)
def test_planning_is_deterministic(g: dict[str, Any]) -> None:
    spec = build(g)
    first = _plan_or_error(spec)
    assert _plan_or_error(spec) == first
    # A fresh copy of the same spec (not the same object) plans the same.
    assert _plan_or_error(MoEModelSpec.model_validate(spec.model_dump(by_alias=True))) == first


def _plan_or_error(spec: MoEModelSpec) -> Plan | tuple[str, str]:
    try:
        return plan_placement(spec, CATALOG)
    except PlanningError as err:
        return (err.reason, err.message)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(MODELS),
    st.sampled_from([t for t in INSTANCES if CATALOG.instances[t].accelerator_kind == "gpu"]),
    st.sampled_from([1, 2, 4, 8]),
)
def test_an_explicit_tp_is_used_as_written_or_rejected_with_a_reason(
    model: str, instance: str, tp: int
) -> None:
    spec = MoEModelSpec.model_validate(
        {"model": {"name": model}, "placement": {"instanceTypes": [instance], "tensorParallelSize": tp}}
    )
    outcome = _plan_or_error(spec)
    if isinstance(outcome, Plan):
        assert outcome.tensor_parallel_size == tp
    else:
        reason, message = outcome
        if reason == PlanReason.SLO_UNREACHABLE:
            assert "SLO" in message
            return
        assert reason in (PlanReason.INSUFFICIENT_MEMORY, PlanReason.INVALID_PARALLELISM)
        assert f"tensorParallelSize={tp}" in message


@pytest.mark.parametrize(
    ("model", "instance"),
    [
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "trn2.48xlarge"),
        ("mistralai/Mixtral-8x22B-Instruct-v0.1", "trn1.32xlarge"),
    ],
)
def test_an_error_is_raised_only_when_no_layout_of_any_pipeline_shape_fits(model: str, instance: str) -> None:
    inst = CATALOG.instances[instance]
    req = Request(CATALOG.models[model].architecture, 4096, 2, 0.9)
    in_node = [
        (tp, pp)
        for tp in (1, 2, 4, 8, 16)
        for pp in (2, 3, 4)
        if tp * pp <= inst.ranks_per_node
        and structurally_valid(req.arch, inst, tp, pp)
        and sequences(req, inst, tp, pp) >= 1
    ]
    assert in_node, "the brute force finds an in-node pipeline that fits"
    # A relaxed SLO: the property is about memory and pipeline shapes, not the latency target.
    spec = MoEModelSpec.model_validate(
        {
            "model": {"name": model},
            "serving": {"maxModelLen": 4096, "slo": {"timePerOutputTokenMs": 1000}},
            "placement": {"instanceTypes": [instance]},
        }
    )
    # Since a layout fits, the planner must return a plan (not raise), and that plan must fit and obey the
    # rules by this file's own arithmetic.
    plan = plan_placement(spec, CATALOG)
    assert plan.instance_type == instance
    req_plan = Request(CATALOG.models[model].architecture, plan.max_model_len, 2, 0.9)
    assert plan.max_model_len == 4096
    tp, pp, dp = plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.data_parallel_size
    assert structurally_valid(req_plan.arch, inst, tp, pp, dp)
    assert plan.concurrent_sequences == sequences(req_plan, inst, tp, pp, dp, plan.expert_parallel) >= 1
    assert plan.nodes == nodes_of(inst, tp, pp, dp)


def test_stage_counts_that_do_not_divide_the_layers_are_rejected_with_the_reason() -> None:
    """DBRX has 40 layers: on inf2 its 48 heads cap TP at 8, and 8 x 3 = 24 NeuronCores would need three
    stages of 13.3 layers; the planner says so instead of planning uneven stages."""
    spec = MoEModelSpec.model_validate(
        {
            "model": {"name": "databricks/dbrx-instruct"},
            "placement": {
                "instanceTypes": ["inf2.48xlarge"],
                "tensorParallelSize": 8,
                "pipelineParallelSize": 3,
            },
        }
    )
    with pytest.raises(PlanningError) as info:
        plan_placement(spec, CATALOG)
    assert "PP 3 does not divide the 40 layers evenly" in info.value.message


@pytest.mark.parametrize("model", MODELS)
def test_a_model_a_neuron_path_does_not_implement_is_never_planned_on_that_chip(model: str) -> None:
    """The capability table lists the families each Neuron path runs per chip; nothing else goes there."""
    entry = CATALOG.models[model]
    spec = MoEModelSpec.model_validate({"model": {"name": model}, "placement": {"accelerator": "neuron"}})
    outcome = _plan_or_error(spec)
    if isinstance(outcome, Plan):
        families = CATALOG.accelerators[outcome.accelerator_model].neuron_families
        assert entry.family in families[outcome.neuron_path]
    else:
        assert outcome[0] in (
            PlanReason.NO_MATCHING_INSTANCE,
            PlanReason.INSUFFICIENT_MEMORY,
            PlanReason.SLO_UNREACHABLE,
            PlanReason.INVALID_PARALLELISM,
        )
