"""Planner speed: plans per second over the whole catalog, and one full `kubemoe plan` of the largest model.

Side by side in the same run:
* the full planner (memory model + performance model + ranking + explanation) against its memory-only
  floor (every candidate layout enumerated and sized, as the $/hour planner before issue 10 did), so the
  cost of the performance model is a ratio;
* when aiconfigurator is installed in its own venv (~/.cache/kubemoe/aic-venv, never a project
  dependency) and this is not a quick run, one `aiconfigurator cli default` of the same model and system,
  against one kubemoe plan of it.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from hack.bench.common import Context, Figure
from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import Catalog, load_catalog
from kubemoe.planner import PlannerSettings, PlanningError, plan_placement
from kubemoe.planner.context import allowed_instances, build_context
from kubemoe.planner.explanation import clear_recipe_memo
from kubemoe.planner.layouts import enumerate_layouts, structural_problem
from kubemoe.planner.sizing import size_layout

SUBJECT = "planner"
LARGEST = "moonshotai/Kimi-K2-Instruct"
AIC = Path.home() / ".cache" / "kubemoe" / "aic-venv" / "bin" / "aiconfigurator"


def _spec(model: str, instance: str | None = None) -> MoEModelSpec:
    placement = {"instanceTypes": [instance]} if instance else {}
    return MoEModelSpec.model_validate({"model": {"name": model}, "placement": placement})


def _plan_all(specs: list[MoEModelSpec]) -> int:
    clear_recipe_memo()  # each timed sweep from cold: a model's recipe comparison is paid once per sweep
    errors = 0
    catalog = load_catalog()
    for spec in specs:
        try:
            plan_placement(spec, catalog)
        except PlanningError:
            errors += 1
    return errors


def _plan_cold(spec: MoEModelSpec, catalog: Catalog) -> None:
    """One plan as the first CR of a model gets it: nothing remembered from an earlier plan."""
    clear_recipe_memo()
    plan_placement(spec, catalog)


def _size_all(specs: list[MoEModelSpec]) -> None:
    """The floor: enumerate and size every layout, no performance model, no ranking."""
    catalog, settings = load_catalog(), PlannerSettings()
    for spec in specs:
        try:
            ctx = build_context(spec, catalog, settings)
            instances = allowed_instances(spec, ctx.entry, catalog)
        except PlanningError:
            continue
        for layout in enumerate_layouts(ctx, instances):
            if structural_problem(ctx, layout) is None:
                size_layout(ctx, layout)


def _timed(fn: object, *args: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(ctx: Context) -> list[Figure]:
    catalog = load_catalog()
    models = sorted(catalog.models)
    instances = sorted(catalog.instances)
    if ctx.quick:
        models, instances = models[:4], instances[:4]
    specs = [_spec(m, i) for m in models for i in instances]
    repeat = 1 if ctx.quick else 3
    full = _timed(_plan_all, specs, repeat=repeat)
    floor = _timed(_size_all, specs, repeat=repeat)
    largest = _timed(_plan_cold, _spec(LARGEST), catalog, repeat=3 if ctx.quick else 10)
    cli_start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kubemoe.cli", "plan", LARGEST], check=True, capture_output=True)
    cli = time.perf_counter() - cli_start
    data: dict[str, object] = {
        "plans": len(specs),
        "full_seconds": full,
        "memory_only_seconds": floor,
        "largest_model_plan_seconds": largest,
        "largest_model_cli_seconds": cli,
    }
    figures = [
        Figure(
            SUBJECT,
            "plans per second (catalog models x instance types)",
            round(len(specs) / full, 1),
            "plans/s",
        ),
        Figure(
            SUBJECT,
            "full plan / memory-only sizing, same specs",
            round(full / floor, 2),
            "x",
            goal="<= 20",
            passed=full / floor <= 20,
            bound="<= 60",
            bound_passed=full / floor <= 60,
        ),
        Figure(
            SUBJECT,
            f"one plan of {LARGEST}, all instance types",
            round(largest * 1000, 1),
            "ms",
            goal="<= 250",
            passed=largest <= 0.25,
            bound="<= 1000",
            bound_passed=largest <= 1.0,
        ),
        Figure(SUBJECT, f"`kubemoe plan {LARGEST}` process, start-up included", round(cli * 1000), "ms"),
    ]
    if AIC.exists() and not ctx.quick:
        start = time.perf_counter()
        proc = subprocess.run(
            [
                str(AIC),
                "cli",
                "default",
                "--model-path",
                "deepseek-ai/DeepSeek-V3",
                "--system",
                "h200_sxm",
                "--backend",
                "vllm",
                "--total-gpus",
                "8",
                "--serving-mode",
                "agg",
                "--isl",
                "2000",
                "--osl",
                "500",
                "--ttft",
                "2000",
                "--tpot",
                "50",
            ],
            capture_output=True,
            timeout=900,
            check=False,
        )
        aic = time.perf_counter() - start
        ours = _timed(plan_placement, _spec("deepseek-ai/DeepSeek-V3", "p5en.48xlarge"), catalog, repeat=5)
        data.update(
            {"aiconfigurator_seconds": aic, "aiconfigurator_rc": proc.returncode, "kubemoe_seconds": ours}
        )
        figures.append(
            Figure(
                SUBJECT,
                "aiconfigurator cli default / kubemoe plan, DeepSeek-V3 on 8 x H200",
                round(aic / ours),
                "x",
            )
        )
    ctx.save_json(SUBJECT, data)
    return figures


if __name__ == "__main__":
    import tempfile

    for fig in run(Context(quick="--quick" in sys.argv, results_dir=Path(tempfile.mkdtemp()))):
        print(f"{fig.figure}: {fig.value} {fig.unit} {fig.goal} {fig.passed}")
