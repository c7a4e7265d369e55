"""Fit the capability table's moeGemmEfficiency to aiconfigurator's measured vLLM fused-MoE kernels.

Run with the aiconfigurator venv (it has pandas and the parquet files; kubemoe is not imported):

    ~/.cache/kubemoe/aic-venv/bin/python hack/calibration/moe_kernels.py [--sample]

For every system and weight dtype it prints the median of measured rate / (datasheet peak x shape factor),
the value accelerators.yaml holds, and how many points fall within +-25 % of the fitted figure. The shape
factor is the planner's (planner.moe.fused_moe_efficiency, repeated here because this script runs
outside kubemoe's venv): M / (M + min(M, 64)) x n / (n + 300) for M rows per touched expert and n
intermediate columns per rank, and where accelerators.yaml gives the chip a moeGemmColumnsKnee (KNEE here)
x (knee / n) ^ 0.3 above it; the fit without the knee is printed beside it. `--sample` prints the YAML rows
of calibration.yaml's `moeKernels`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]

ROOT = Path(sys.prefix) / "lib"
VERSION = "0.24.0"
#: Dense datasheet TFLOP/s (BF16, FP8) per GPU, as instances.yaml holds them.
PEAK = {"h100_sxm": (989.0, 1979.0), "h200_sxm": (989.0, 1979.0), "b200_sxm": (2250.0, 4500.0)}
DTYPES = {"bfloat16": "bf16", "fp8_block": "fp8", "w4a16_mxfp4": "mxfp4"}
TOKENS_HALF, COLUMNS_HALF = 64.0, 300.0
#: accelerators.yaml's moeGemmColumnsKnee by (system, dtype), and PlannerSettings.moeGemmColumnsFall.
KNEE = {("b200_sxm", "bfloat16"): 768.0}
FALL = 0.3
#: Shapes of catalog models sampled into calibration.yaml: hidden, intermediate, top-k, experts, dtype.
SAMPLE = {
    "DeepSeek-V3": (7168, 2048, 8, 256, "fp8_block"),
    "Qwen3-235B-A22B": (4096, 1536, 8, 128, "bfloat16"),
    "gpt-oss-120b": (2880, 2880, 4, 128, "w4a16_mxfp4"),
    "Mixtral-8x7B": (4096, 14336, 2, 8, "bfloat16"),
}


def touched(tokens: float, k: int, experts: int) -> float:
    return 1.0 - math.pow(1.0 - k / experts, tokens)


def shape(tokens: float, k: int, experts: int, columns: float, knee: float | None = None) -> float:
    rows = tokens * k / experts / touched(tokens, k, experts)
    fall = (knee / columns) ** FALL if knee is not None and columns > knee else 1.0
    return rows / (rows + min(rows, TOKENS_HALF)) * columns / (columns + COLUMNS_HALF) * fall


def load(system: str) -> pd.DataFrame:
    path = next(
        ROOT.glob(f"python3*/site-packages/aiconfigurator_core/systems/data/{system}/moe/vllm/{VERSION}")
    )
    df = pd.read_parquet(path / "moe_perf.parquet")
    df = df[(df.distribution == "power_law_1.01") & (df.moe_ep_size == 1) & df.moe_dtype.isin(list(DTYPES))]
    return df[df.num_tokens >= 2048]


def rate(row: pd.Series, system: str) -> float:
    """Measured share of the datasheet peak of the row's compute dtype."""
    flops = 2 * row.num_tokens * row.topk * 3 * row.hidden_size * row.inter_size / row.moe_tp_size
    peak = PEAK[system][1 if row.moe_dtype == "fp8_block" else 0] * 1e12
    return float(flops / (row.latency * 1e-3) / peak)


def main() -> None:
    for system in PEAK:
        df = load(system)
        for dtype, points in df.groupby("moe_dtype"):
            kernel = points.kernel_source.value_counts().index[0]  # the kernel vLLM picks for the dtype
            group = points[points.kernel_source == kernel]
            for knee in dict.fromkeys([None, KNEE.get((system, str(dtype)))]):
                ratios = [
                    rate(r, system)
                    / shape(r.num_tokens, r.topk, r.num_experts, r.inter_size / r.moe_tp_size, knee)
                    for r in group.itertuples()
                ]
                wide = math.exp(sorted(math.log(x) for x in ratios)[len(ratios) // 2])
                within = sum(abs(math.log(x / wide)) <= math.log(1.25) for x in ratios) / len(ratios)
                print(
                    f"{system} {DTYPES[str(dtype)]}: {wide:.3f} ({len(ratios)} points, {within:.0%} within 25 %, "
                    f"{kernel}{f', knee {knee:g}' if knee else ''})"
                )
    if "--sample" in sys.argv:
        print("moeKernels:")
        for system in PEAK:
            df = load(system)
            for name, (h, i, k, e, dtype) in SAMPLE.items():
                for tp in (1, 2, 4, 8) if name == "Mixtral-8x7B" else (1, 8):
                    rows = df[
                        (df.hidden_size == h)
                        & (df.inter_size == i)
                        & (df.topk == k)
                        & (df.num_experts == e)
                        & (df.moe_dtype == dtype)
                        & (df.moe_tp_size == tp)
                        & (df.num_tokens == 8192)
                    ]
                    if rows.empty:
                        continue
                    kernel = df[df.moe_dtype == dtype].kernel_source.value_counts().index[0]
                    rows = rows[rows.kernel_source == kernel]
                    if rows.empty:
                        continue
                    r = rows.iloc[0]
                    print(
                        f"- {{system: {system}, shape: {name}, dtype: {DTYPES[dtype]}, hidden: {h}, "
                        f"intermediate: {i}, topK: {k}, experts: {e}, moeTp: {tp}, tokens: 8192, "
                        f"latencyUs: {r.latency * 1e3:.1f}}}"
                    )


if __name__ == "__main__":
    main()
