"""DP 1 with TP > 1 on a MoE model plans both expert modes, as DP > 1 does: MoE TP (vLLM's default at
DP 1, plain `--tensor-parallel-size n`, every expert sharded over the n TP ranks) and TP + EP
(`--enable-expert-parallel`, whole experts per rank, costed with PlannerSettings.epExpertImbalance).
MoE TP comes first so an exact tie goes to vLLM's default; `spec.placement.expertParallel` pins one.
Before, DP 1 planned TP + EP only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubemoe.api import MoEModel
from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import Catalog, load_catalog
from kubemoe.planner import PlannerSettings, plan_placement
from kubemoe.planner.context import build_context
from kubemoe.planner.layouts import Layout, expert_modes
from kubemoe.planner.sizing import size_layout
from kubemoe.render import render_moemodel

MIXTRAL_8X7B = "mistralai/Mixtral-8x7B-Instruct-v0.1"
LLAMA_3_70B = "meta-llama/Meta-Llama-3-70B-Instruct"


def spec(model: str, placement: dict[str, Any] | None = None) -> MoEModelSpec:
    return MoEModelSpec.model_validate({"model": {"name": model}, "placement": placement or {}})


def test_expert_modes_at_dp1_try_moe_tp_first_then_ep(catalog: Catalog) -> None:
    moe = build_context(spec(MIXTRAL_8X7B), catalog, PlannerSettings())
    assert expert_modes(moe, 4, 1) == [False, True]  # MoE TP 4, then TP 4 + EP 4
    assert expert_modes(moe, 1, 8) == [False, True]  # DP 8 as before
    assert expert_modes(moe, 1, 1) == [False]  # one rank: nothing to split
    dense = build_context(spec(LLAMA_3_70B), catalog, PlannerSettings())
    assert expert_modes(dense, 4, 1) == [False]
    pinned = build_context(spec(MIXTRAL_8X7B, {"expertParallel": True}), catalog, PlannerSettings())
    assert expert_modes(pinned, 4, 1) == [True]
    off = build_context(spec(MIXTRAL_8X7B, {"expertParallel": False}), catalog, PlannerSettings())
    assert expert_modes(off, 4, 1) == [False]


def test_moe_tp_and_ep_at_dp1_hold_the_same_memory(catalog: Catalog) -> None:
    """Mixtral-8x7B TP 4 on p4d: experts 90.2 GB / 4 and the rest 3.2 GB / 4 per rank either way (21.75 GiB),
    the same KV per sequence; at DP 1 no DP rank's tokens are gathered, so the activations match too."""
    ctx = build_context(spec(MIXTRAL_8X7B), catalog, PlannerSettings())
    inst = catalog.instances["p4d.24xlarge"]
    tp, ep = size_layout(ctx, Layout(inst, 4, 1, 1, False)), size_layout(ctx, Layout(inst, 4, 1, 1, True))
    assert tp.weights == ep.weights
    assert tp.weights / 1024**3 == pytest.approx(21.75, abs=0.01)
    assert tp.activation == ep.activation
    assert tp.kv_per_sequence == ep.kv_per_sequence
    assert tp.sequences == ep.sequences == 11


def test_mixtral_on_p4d_plans_plain_tp_over_tp_plus_ep(catalog: Catalog) -> None:
    """TP 8 (MoE TP 8): 5219 tok/s at 256 sequences, $1.169/M tokens on 8 A100-40GB ($21.96/h), ahead of
    TP 4 (MoE TP 4) at $1.431 (2130 tok/s at 106 sequences: the steps that carry a whole 1942-token prompt
    chunk are compute-bound, and take twice as long on four A100s). With EP on the same GPUs and memory the
    busiest EP rank takes epExpertImbalance[n] (1.77x at 4, 2.54x at 8) the mean expert time: TP 8 + EP 8
    $2.337/M, TP 4 + EP 4 $2.233/M."""
    plan = plan_placement(spec(MIXTRAL_8X7B, {"instanceTypes": ["p4d.24xlarge"]}), catalog)
    assert plan.layout == "TP 8 (MoE TP 8) on p4d.24xlarge"
    assert (plan.tensor_parallel_size, plan.data_parallel_size, plan.expert_parallel) == (8, 1, False)
    assert plan.expert_parallel_size == 0
    assert any(n.startswith("MoE TP 8: without --enable-expert-parallel") for n in plan.notes)
    alternatives = {a.layout: a for a in plan.alternatives}
    for plain, ep_layout in [
        (plan, "TP 8 + EP 8 on p4d.24xlarge"),
        (alternatives["TP 4 (MoE TP 4) on p4d.24xlarge"], "TP 4 + EP 4 on p4d.24xlarge"),
    ]:
        ep = alternatives[ep_layout]
        assert ep.feasible
        assert ep.expert_parallel
        assert plain.cost_per_million_tokens is not None
        assert ep.cost_per_million_tokens is not None
        assert ep.cost_per_million_tokens > 1.4 * plain.cost_per_million_tokens


def test_expert_parallel_true_still_forces_ep_at_dp1(catalog: Catalog) -> None:
    plan = plan_placement(
        spec(
            MIXTRAL_8X7B, {"instanceTypes": ["p4d.24xlarge"], "tensorParallelSize": 4, "expertParallel": True}
        ),
        catalog,
    )
    assert plan.layout == "TP 4 + EP 4 on p4d.24xlarge"
    assert (plan.expert_parallel, plan.expert_parallel_size) == (True, 4)
    assert not any("(MoE TP" in a.layout for a in plan.alternatives)


def _render(spec_doc: dict[str, Any]) -> list[str]:
    model = MoEModel.model_validate(
        {"apiVersion": "kubemoe.io/v1alpha1", "kind": "MoEModel", "metadata": {"name": "m"}, "spec": spec_doc}
    )
    objs = {o["kind"]: o for o in render_moemodel(model, plan_placement(model.spec, load_catalog()))}
    command: list[str] = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
    return command


def _neuron_config(command: list[str]) -> dict[str, Any]:
    arg = next(a for a in command if a.startswith("--additional-config="))
    config: dict[str, Any] = json.loads(arg.split("=", 1)[1])["override_neuron_config"]
    return config


def test_nxdi_renders_moe_tp_as_moe_ep_degree_1_and_ep_when_pinned() -> None:
    """Mixtral on trn2 (the NxD Inference path): MoE TP 8 is moe_ep_degree 1, moe_tp_degree 8, NxDI's own
    default; `expertParallel: true` renders moe_ep_degree 8, moe_tp_degree 1. Neither passes the vLLM flag."""
    placement = {"instanceTypes": ["trn2.48xlarge"]}
    plain = _render({"model": {"name": MIXTRAL_8X7B}, "placement": placement})
    assert "--tensor-parallel-size=8" in plain
    assert "--enable-expert-parallel" not in plain
    config = _neuron_config(plain)
    assert (config["tp_degree"], config["moe_ep_degree"], config["moe_tp_degree"]) == (8, 1, 8)
    ep = _render({"model": {"name": MIXTRAL_8X7B}, "placement": {**placement, "expertParallel": True}})
    assert "--enable-expert-parallel" not in ep
    config = _neuron_config(ep)
    assert (config["tp_degree"], config["moe_ep_degree"], config["moe_tp_degree"]) == (8, 8, 1)


def test_kubemoe_plan_shows_the_moe_tp_layout_and_engine_line() -> None:
    kubemoe = shutil.which("kubemoe", path=str(Path(sys.executable).parent)) or "kubemoe"
    proc = subprocess.run(
        [kubemoe, "plan", MIXTRAL_8X7B, "--instance-type", "p4d.24xlarge"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "layout        TP 8 (MoE TP 8) on p4d.24xlarge" in proc.stdout
    assert "TP 8, PP 1, DP 1, EP off, MoE TP 8" in proc.stdout
