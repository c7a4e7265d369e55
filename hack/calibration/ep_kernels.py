"""Derive PlannerSettings.epExpertImbalance / epExpertImbalanceEplb from aiconfigurator's measured vLLM MoE kernels.

Run with the aiconfigurator venv (it has pandas and the parquet files; kubemoe is not imported):

    ~/.cache/kubemoe/aic-venv/bin/python hack/calibration/ep_kernels.py

aiconfigurator 0.12.0 measured vLLM 0.24.0's fused-MoE kernel for the same shapes (hidden, intermediate,
top-k, experts, dtype, tokens routed by the whole expert group) both expert-parallel (moe_ep_size n,
moe_tp_size 1: whole experts per rank) and tensor-parallel (moe_tp_size n, moe_ep_size 1: every expert's
columns split n ways). Every rank of the TP shape runs the same work; an EP rank runs the tokens its experts
got, and the step waits for the busiest one. kubemoe's kernel model (planner.moe.fused_moe_efficiency) rates
both shapes by their columns per rank, n / (n + 300) (and, for B200's BF16 kernel, x (768 / n) ^ 0.3 above
768 columns: moeGemmColumnsKnee): whole experts under EP, a 1/n slice under TP. So

    imbalance(n) = latency(EP n) / latency(TP n) x shape(EP columns) / shape(TP columns)

is what kubemoe must multiply an EP rank's mean expert time by to reproduce the measured EP kernel: the
busiest rank's load over the mean (routing skew) together with whatever else the EP path costs per rank.
It is the median over H100/H200/B200, every shape measured both ways with the kernel vLLM picks for the
dtype, at 2048+ tokens (where the kernel is compute-bound and the rows per expert fill its tiles):

* with aiconfigurator's power-law routing at alpha 1.01 (its DeepSeek models' routing, and the rows
  moe_kernels.py fits the kernel rates to): epExpertImbalance, vLLM's default (no --enable-eplb). Its
  other MoE models route at alpha 1.2, a little more skewed: 1.29, 1.85, 2.77, 4.19, 6.71 at EP 2-32;
  one table serves every model;
* with its balanced routing (every expert the same load), the limit EPLB's rebalancing of experts over
  ranks aims at: epExpertImbalanceEplb.

The script prints both tables (per system and pooled) and the pooled rows as settings.py holds them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]

ROOT = Path(sys.prefix) / "lib"
VERSION = "0.24.0"
SYSTEMS = ("h100_sxm", "h200_sxm", "b200_sxm")
DTYPES = ("bfloat16", "fp8_block", "w4a16_mxfp4")
COLUMNS_HALF = 300.0  # PlannerSettings.moeGemmColumnsHalf
MIN_TOKENS = 2048
DISTRIBUTIONS = {"power_law_1.01": "epExpertImbalance", "balanced": "epExpertImbalanceEplb"}
SHAPE = ["moe_dtype", "hidden_size", "inter_size", "topk", "num_experts", "num_tokens"]


#: accelerators.yaml's moeGemmColumnsKnee by (system, dtype), and PlannerSettings.moeGemmColumnsFall.
KNEE = {("b200_sxm", "bfloat16"): 768.0}
FALL = 0.3


def columns(n: pd.Series, knee: pd.Series) -> pd.Series:
    """The planner's column factor, n / (n + 300), with its fall above the chip's knee where it has one."""
    fall = (knee / n).clip(upper=1.0).pow(FALL).fillna(1.0)
    return n / (n + COLUMNS_HALF) * fall


def load(system: str, distribution: str) -> pd.DataFrame:
    path = next(
        ROOT.glob(f"python3*/site-packages/aiconfigurator_core/systems/data/{system}/moe/vllm/{VERSION}")
    )
    df = pd.read_parquet(path / "moe_perf.parquet")
    df = df[(df.distribution == distribution) & df.moe_dtype.isin(DTYPES) & (df.num_tokens >= MIN_TOKENS)]
    kept = []
    for _, group in df.groupby("moe_dtype"):
        kernel = group.kernel_source.value_counts().index[0]  # the kernel vLLM picks for the dtype
        kept.append(group[group.kernel_source == kernel])
    return pd.concat(kept)


def ratios(system: str, distribution: str) -> pd.DataFrame:
    """One row per shape and size n measured both as EP n and as TP n, with the imbalance it implies."""
    df = load(system, distribution)
    ep = df[(df.moe_tp_size == 1) & (df.moe_ep_size > 1)].rename(columns={"moe_ep_size": "n"})
    tp = df[(df.moe_ep_size == 1) & (df.moe_tp_size > 1)].rename(columns={"moe_tp_size": "n"})
    both = ep.set_index([*SHAPE, "n"]).latency.rename("ep").to_frame()
    both = both.join(tp.set_index([*SHAPE, "n"]).latency.rename("tp"), how="inner").reset_index()
    knee = both.moe_dtype.map(lambda dtype: KNEE.get((system, dtype), math.nan))
    both["imbalance"] = (
        both.ep / both.tp * columns(both.inter_size, knee) / columns(both.inter_size / both.n, knee)
    )
    both["system"] = system
    return both


def median(values: pd.Series) -> float:
    return math.exp(float(values.map(math.log).median()))


def main() -> None:
    for distribution, setting in DISTRIBUTIONS.items():
        pooled = pd.concat([ratios(system, distribution) for system in SYSTEMS])
        print(f"{distribution} ({setting}):")
        for system, group in pooled.groupby("system"):
            cells = ", ".join(f"EP {n}: {median(g.imbalance):.2f}" for n, g in group.groupby("n"))
            print(f"  {system}: {cells}")
        cells = ", ".join(
            f"EP {n}: {median(g.imbalance):.2f} ({len(g)} shapes, quartiles "
            f"{g.imbalance.quantile(0.25):.2f}-{g.imbalance.quantile(0.75):.2f})"
            for n, g in pooled.groupby("n")
        )
        print(f"  pooled: {cells}")
        table = ", ".join(f"{n}: {median(g.imbalance):.2f}" for n, g in pooled.groupby("n"))
        print(f"  settings.py {setting}: {{{table}}}")


if __name__ == "__main__":
    main()
