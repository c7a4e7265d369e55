"""Per model and GPU that aiconfigurator covers: kubemoe's choice and estimate beside aiconfigurator's.

Reads the aiconfigurator runs recorded in catalog/data/calibration.yaml (its top layouts for the model on 8
GPUs of one system, ISL 2000 / OSL 500, TTFT 2 s, TPOT 50 ms) and plans the same model on the matching
instance type with kubemoe's defaults. Prints a Markdown table: kubemoe's chosen layout with its estimated
output tokens/s per GPU and $/M output tokens, aiconfigurator's first layout with its tokens/s, kubemoe's
estimate for that same layout (and the ratio), and whether kubemoe's choice is in aiconfigurator's top three.
Then a summary: how many of aiconfigurator's rows kubemoe's same-layout estimate is within +-25 % of, and
how many of kubemoe's choices are in aiconfigurator's top three.

"The same layout" is aiconfigurator's as vLLM runs it: its rows are MoE EP 1 (moeTp = TP x DP), i.e. vLLM's
DP without --enable-expert-parallel, experts TP-sharded over all TP x DP ranks, which kubemoe plans as
`DP n (MoE TP n)` or, at DP 1, `TP n (MoE TP n)` (`same_layout`). A choice is in the top three when its TP
and DP match a row's and, by expert mode, its EP mode does too (`in_top3`): kubemoe plans both modes
wherever the experts span more than one rank.

    .venv/bin/python hack/calibration/table.py
"""

from __future__ import annotations

import math
import sys
from importlib import resources
from typing import Any

import yaml

from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import Catalog, load_catalog
from kubemoe.catalog.schema import InstanceEntry
from kubemoe.planner import PlannerSettings, plan_placement
from kubemoe.planner.context import build_context
from kubemoe.planner.layouts import Layout
from kubemoe.planner.performance import estimate
from kubemoe.planner.sizing import size_layout
from kubemoe.planner.types import Plan

#: The band the issue holds kubemoe's same-layout estimate to.
BAND = 0.25


def same_layout(inst: InstanceEntry, row: dict[str, Any]) -> Layout:
    """aiconfigurator's row as a kubemoe layout: EP only where its MoE EP is over 1 (moeTp = TP x DP)."""
    return Layout(inst, row["tp"], 1, row["dp"], row["moeEp"] > 1)


def in_top3(plan: Plan, rows: list[dict[str, Any]], *, strict: bool) -> bool:
    """Whether kubemoe's choice is one of aiconfigurator's first three rows: the same TP x DP (what
    tests/unit/test_recipe_calibration.py records as kubemoeInTop3), and with `strict` the same expert
    mode too (aiconfigurator's rows here are all MoE EP 1); kubemoe plans both modes at DP 1 as at DP > 1."""
    for row in rows[:3]:
        if (row["tp"], row["dp"]) != (plan.tensor_parallel_size, plan.data_parallel_size):
            continue
        if not strict or plan.expert_parallel == (row["moeEp"] > 1):
            return True
    return False


def _layout(plan: Plan) -> str:
    tp, dp, ep = plan.tensor_parallel_size, plan.data_parallel_size, plan.expert_parallel_size
    parts = [f"TP {tp}" if tp > 1 else "", f"DP {dp}" if dp > 1 else "", f"EP {ep}" if ep > 1 else ""]
    if tp * dp > 1 and not plan.expert_parallel:
        parts.append(f"MoE TP {tp * dp}")
    return " x ".join(p for p in parts if p) or "TP 1"


def _aic_layout(row: dict[str, Any]) -> str:
    moe = f"MoE EP {row['moeEp']}" if row["moeEp"] > 1 else f"MoE TP {row['moeTp']}"
    return f"TP {row['tp']} x DP {row['dp']}, {moe}"


def entries() -> list[dict[str, Any]]:
    data: dict[str, Any] = yaml.safe_load(
        (resources.files("kubemoe.catalog") / "data" / "calibration.yaml").read_text()
    )
    return list(data["aiconfigurator"])


def spec_of(entry: dict[str, Any]) -> MoEModelSpec:
    return MoEModelSpec.model_validate(
        {
            "model": {"name": entry["model"]},
            "serving": {"kvCacheDtype": entry["kvCacheDtype"]},
            "placement": {"instanceTypes": [entry["instanceType"]]},
        }
    )


def same_layout_ratios(entry: dict[str, Any], catalog: Catalog) -> list[float]:
    """kubemoe's tokens/s over aiconfigurator's, per row, for the row's own layout."""
    ctx = build_context(spec_of(entry), catalog, PlannerSettings())
    inst = catalog.instances[entry["instanceType"]]
    out = []
    for row in entry["rows"]:
        layout = same_layout(inst, row)
        est = estimate(ctx, layout, size_layout(ctx, layout), ctx.split_for(inst), ctx.fp8_compute(inst))
        out.append(est.tokens_per_second / row["tokensPerSecondPerReplica"])
    return out


def rows() -> tuple[list[list[str]], str]:
    catalog = load_catalog(environ={})
    out = []
    within = total = top3 = strict = 0
    for entry in entries():
        plan = plan_placement(spec_of(entry), catalog)
        summary = plan.summary()
        first = entry["rows"][0]
        ratios = same_layout_ratios(entry, catalog)
        within += sum(1 for r in ratios if abs(math.log(r)) <= math.log(1 + BAND))
        total += len(ratios)
        mine = in_top3(plan, entry["rows"], strict=False)
        exact = in_top3(plan, entry["rows"], strict=True)
        top3 += mine
        strict += exact
        gpus = summary.accelerators_per_replica
        same = ratios[0] * first["tokensPerSecondPerReplica"]
        out.append(
            [
                entry["model"].split("/")[-1],
                f"{summary.accelerator} ({entry['instanceType']})",
                _layout(plan) + f" ({gpus} GPUs)",
                f"{summary.tokens_per_second / gpus:,.0f}" if summary.tokens_per_second else "-",
                f"${summary.cost_per_million_tokens:.3f}" if summary.cost_per_million_tokens else "-",
                f"{_aic_layout(first)} ({first['gpusPerReplica']} GPUs)",
                f"{first['tokensPerSecondPerReplica'] / first['gpusPerReplica']:,.0f}",
                f"{same / first['gpusPerReplica']:,.0f} ({ratios[0]:.2f})",
                ("yes" if mine else "no") + ("" if exact or not mine else " (EP mode differs)"),
            ]
        )
    note = (
        f"same-layout rows within +-{BAND:.0%}: {within} of {total}; "
        f"kubemoe's choice in aiconfigurator's top 3: {top3} of {len(out)} by TP x DP, {strict} of "
        f"{len(out)} with the same expert mode"
    )
    return out, note


def main() -> int:
    head = [
        "model", "GPU (instance)", "kubemoe's choice", "its tok/s per GPU", "its $/M out",
        "aic's first layout", "aic tok/s per GPU", "kubemoe, same layout (ratio)", "kubemoe in aic top 3",
    ]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    table, note = rows()
    for row in table:
        print("| " + " | ".join(row) + " |")
    print()
    print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
