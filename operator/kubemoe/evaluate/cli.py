"""`kubemoe eval -f pipeline.yaml --dataset tasks.jsonl`: is MoA worth it on these tasks?

Prints one row per configuration (the pipeline, each sweep variant, each model alone) and writes the results
as JSON (`--output`) and a plot (`--plot`). Exit status: 0 when it ran (whatever the accuracy), 1 on bad
input, naming the file and line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp

from kubemoe.api.moapipeline import ClientAuth
from kubemoe.evaluate.dataset import EvalError, load_tasks
from kubemoe.evaluate.report import ProgressBar, plot, summarize, table
from kubemoe.evaluate.runner import (
    Evaluator,
    Resolver,
    Target,
    as_dicts,
    judges,
    load_pipeline,
    model_targets,
    serve_router,
    variant,
)
from kubemoe.router.config import ConfigError, RouterConfig


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            raise EvalError(f"{what}: expected NAME=VALUE, got {v!r}")
        out[key] = val
    return out


def parse_sweep(values: Sequence[str]) -> dict[str, list[int]]:
    """`layers=1,2,3 agents=1,3,6` -> {'layers': [1, 2, 3], 'agents': [1, 3, 6]}."""
    out: dict[str, list[int]] = {}
    for key, raw in _pairs(values, "--sweep").items():
        if key not in ("layers", "agents"):
            raise EvalError(f"--sweep: unknown dimension {key!r} (layers, agents)")
        try:
            nums = [int(x) for x in raw.split(",") if x]
        except ValueError as exc:
            raise EvalError(f"--sweep {key}: not a list of integers: {raw!r}") from exc
        limit = 8 if key == "layers" else 16
        if not nums or any(n < 1 or n > limit for n in nums):
            raise EvalError(f"--sweep {key}: values must be 1..{limit}, got {raw!r}")
        out[key] = nums
    return out


async def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    pipeline = load_pipeline(args.file)
    tasks = load_tasks(args.dataset)
    spec, name = pipeline.spec, pipeline.metadata.name
    resolve = Resolver(_pairs(args.model_url, "--model-url"))
    try:
        prices = {k: float(v) for k, v in _pairs(args.price, "--price").items()}
    except ValueError as exc:
        raise EvalError(f"--price: {exc}") from exc
    sweep = parse_sweep(args.sweep)
    if sweep and args.url:
        raise EvalError("--sweep builds pipeline variants in-process; it cannot be used with --url")
    timeout = aiohttp.ClientTimeout(total=args.timeout, connect=10)
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout, trust_env=False))
        targets: list[Target] = []
        if args.url:
            targets.append(Target("pipeline", "pipeline", args.url.rstrip("/"), name))
        else:
            variants = [("pipeline", spec)]
            if sweep:
                layers = sweep.get("layers", [len(spec.layers)])
                agents = sweep.get("agents", [max(len(layer.agents) for layer in spec.layers)])
                variants = [
                    (f"moa L={m} A={a}", variant(spec, layers=m, agents=a)) for m in layers for a in agents
                ]
            for label, s in variants:
                # The in-process router listens on loopback for this evaluation alone, so it needs no
                # client keys; the deployed pipeline keeps its own auth settings.
                local = s.model_copy(update={"auth": ClientAuth(enabled=False)})
                try:
                    config = RouterConfig.from_spec(name, local, resolve, keys_dir=None)
                except (ValueError, ConfigError) as exc:
                    raise EvalError(f"{label}: {exc}") from exc
                url = await stack.enter_async_context(serve_router(config))
                targets.append(Target(label, "pipeline", url, name))
        if not args.no_models:
            targets += model_targets(spec, resolve)
        evaluator = Evaluator(http, judges=judges(spec, resolve), prices=prices, concurrency=args.concurrency)
        progress = None if args.quiet else ProgressBar()
        results = await evaluator.run(targets, tasks, progress)
    summaries = summarize(results, [t.label for t in targets])
    return {
        "pipeline": name,
        "dataset": str(args.dataset),
        "configurations": [s.as_dict() for s in summaries],
        "results": as_dicts(results),
        "_summaries": summaries,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubemoe eval", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("-f", "--file", required=True, help="MoAPipeline YAML")
    p.add_argument("--dataset", required=True, help="tasks, one JSON object per line")
    p.add_argument("--url", help="evaluate a running router at this base URL (…/v1) instead of starting one")
    p.add_argument(
        "--model-url",
        action="append",
        default=[],
        metavar="MOEMODEL=URL",
        help="where a moeModelRef is served",
    )
    p.add_argument("--sweep", nargs="+", default=[], metavar="DIM=N,N", help="e.g. layers=1,2,3 agents=1,3,6")
    p.add_argument("--price", action="append", default=[], metavar="MODEL=USD", help="USD per million tokens")
    p.add_argument("--no-models", action="store_true", help="skip the models-alone baselines")
    p.add_argument("--concurrency", type=int, default=4, help="calls in flight at once (default 4)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per call (default 300)")
    p.add_argument("-o", "--output", help="write results JSON here")
    p.add_argument("--plot", help="write an accuracy-vs-latency PNG here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency < 1:
        print("kubemoe eval: --concurrency must be at least 1", file=sys.stderr)
        return 1
    try:
        report = asyncio.run(evaluate(args))
        summaries = report.pop("_summaries")
        print(table(summaries))
        if args.output:
            Path(args.output).write_text(json.dumps(report, indent=2), encoding="utf-8")
            print(f"results: {args.output}")
        if args.plot:
            title = f"{report['pipeline']} on {Path(args.dataset).name}"
            print(f"plot: {plot(summaries, args.plot, title=title)}")
    except EvalError as exc:
        print(f"kubemoe eval: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
