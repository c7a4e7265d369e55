"""Per model and GPU that aiconfigurator covers: kubemoe's choice and estimate beside aiconfigurator's.

Reads the aiconfigurator runs recorded in catalog/data/calibration.yaml (its top layouts for the model on 8
GPUs of one system, ISL 2000 / OSL 500, TTFT 2 s, TPOT 50 ms) and plans the same model on the matching
instance type with kubemoe's defaults. Prints a Markdown table: kubemoe's chosen layout with its estimated
output tokens/s per GPU and $/M output tokens, aiconfigurator's first layout with its tokens/s, kubemoe's
estimate for that same layout (and the ratio), and whether kubemoe's choice is in aiconfigurator's top three.

    .venv/bin/python hack/calibration/table.py
"""

from __future__ import annotations

import sys
from importlib import resources
from typing import Any

import yaml

from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import load_catalog
from kubemoe.planner import PlannerSettings, plan_placement
from kubemoe.planner.context import build_context
from kubemoe.planner.layouts import Layout, expert_parallel
from kubemoe.planner.performance import estimate
from kubemoe.planner.sizing import size_layout


def _layout(tp: int, dp: int, ep: int) -> str:
    parts = [f"TP {tp}" if tp > 1 else "", f"DP {dp}" if dp > 1 else "", f"EP {ep}" if ep > 1 else ""]
    return " x ".join(p for p in parts if p) or "TP 1"


def rows() -> list[list[str]]:
    catalog = load_catalog(environ={})
    entries: list[dict[str, Any]] = yaml.safe_load(
        (resources.files("kubemoe.catalog") / "data" / "calibration.yaml").read_text()
    )["aiconfigurator"]
    out = []
    for entry in entries:
        spec = MoEModelSpec.model_validate(
            {
                "model": {"name": entry["model"]},
                "serving": {"kvCacheDtype": entry["kvCacheDtype"]},
                "placement": {"instanceTypes": [entry["instanceType"]]},
            }
        )
        plan = plan_placement(spec, catalog).summary()
        ctx = build_context(spec, catalog, PlannerSettings())
        inst = catalog.instances[entry["instanceType"]]
        first = entry["rows"][0]
        layout = Layout(inst, first["tp"], 1, first["dp"], expert_parallel(ctx, first["tp"], first["dp"]))
        same = estimate(ctx, layout, size_layout(ctx, layout), ctx.split_for(inst), ctx.fp8_compute(inst))
        top3 = [(r["tp"], r["dp"]) for r in entry["rows"][:3]]
        mine = (plan.tensor_parallel_size, plan.data_parallel_size)
        gpus = plan.accelerators_per_replica
        out.append(
            [
                entry["model"].split("/")[-1],
                f"{plan.accelerator} ({entry['instanceType']})",
                _layout(plan.tensor_parallel_size, plan.data_parallel_size, plan.expert_parallel_size)
                + f" ({gpus} GPUs)",
                f"{plan.tokens_per_second / gpus:,.0f}" if plan.tokens_per_second else "-",
                f"${plan.cost_per_million_tokens:.3f}" if plan.cost_per_million_tokens else "-",
                f"TP {first['tp']} x DP {first['dp']} ({first['gpusPerReplica']} GPUs)",
                f"{first['tokensPerSecondPerReplica'] / first['gpusPerReplica']:,.0f}",
                f"{same.tokens_per_second / first['gpusPerReplica']:,.0f} "
                f"({same.tokens_per_second / first['tokensPerSecondPerReplica']:.2f})",
                "yes" if mine in top3 else "no",
            ]
        )
    return out


def main() -> int:
    head = [
        "model", "GPU (instance)", "kubemoe's choice", "its tok/s per GPU", "its $/M out",
        "aic's first layout", "aic tok/s per GPU", "kubemoe, same layout (ratio)", "kubemoe in aic top 3",
    ]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows():
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
