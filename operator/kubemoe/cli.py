"""`kubemoe`: plan and render offline, print the catalogs and CRDs, run the operator or the MoA router.

Bad input ends with one `error:` message naming the field and what to do, and exit status 1 (2 for bad
usage); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from kubemoe.api.crd import all_crds, dump_crd
from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.api.moemodel import MoEModel, MoEModelSpec
from kubemoe.catalog.loader import Catalog, CatalogError, load_catalog
from kubemoe.documents import CustomResource, DocumentError, format_validation_error, load_documents
from kubemoe.planner import Plan, PlanningError, plan_placement
from kubemoe.planner.pipeline import PipelinePlan, plan_pipeline
from kubemoe.render import EngineDialectError
from kubemoe.render.all import render_documents
from kubemoe.render.refs import model_ref_state, referenced_model_names, resolve_refs


class CliError(Exception):
    """A problem with the user's input, reported as one message."""


def _read_input(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        return Path(path).read_text(), path
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc


def _dump(objects: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        json.dump(objects, out, indent=2)
        out.write("\n")
    else:
        yaml.safe_dump(objects, out, sort_keys=False, width=120)


# ---------------------------------------------------------------------------------------------- plan


def _spec_from_args(args: argparse.Namespace) -> list[tuple[str, MoEModelSpec]]:
    if not args.model:
        raise CliError("give a MODEL (e.g. mistralai/Mixtral-8x7B-Instruct-v0.1) or -f FILE")
    raw: dict[str, Any] = {
        "model": {"name": args.model},
        "serving": {},
        "placement": {"accelerator": args.accelerator, "strategy": args.strategy},
    }
    serving, placement = raw["serving"], raw["placement"]
    if args.max_model_len:
        serving["maxModelLen"] = args.max_model_len
    if args.kv_cache_dtype:
        serving["kvCacheDtype"] = args.kv_cache_dtype
    if args.quantization:
        serving["quantization"] = args.quantization
    if args.gpu_memory_utilization:
        serving["gpuMemoryUtilization"] = args.gpu_memory_utilization
    if args.instance_type:
        placement["instanceTypes"] = args.instance_type
    for key, value in (
        ("tensorParallelSize", args.tensor_parallel_size),
        ("pipelineParallelSize", args.pipeline_parallel_size),
        ("dataParallelSize", args.data_parallel_size),
    ):
        if value:
            placement[key] = value
    if getattr(args, "expert_parallel", None):
        placement["expertParallel"] = args.expert_parallel == "on"
    from pydantic import ValidationError

    try:
        return [(args.model, MoEModelSpec.model_validate(raw))]
    except ValidationError as exc:
        raise CliError(format_validation_error(exc, "arguments")) from exc


# --- `kubemoe plan` output (planner, issue 10): estimates per plan and per alternative -------------------


def _money(value: float | None, unit: str) -> str:
    return f"${value:.3f}{unit}" if value is not None else "-"


def _plan_table(name: str, plan: Plan) -> str:
    m = plan.memory
    price = f"${plan.cost_per_hour:.2f}/h" if plan.cost_per_hour is not None else "no on-demand price"
    lines = [
        f"{name}: {plan.model_id}",
        f"  layout        {plan.layout}",
        f"  instance      {plan.instance_type} ({plan.accelerator_model}), {plan.nodes} node(s) x "
        f"{plan.devices_per_node} device(s), {price} per replica",
        f"  engine        {plan.engine}; TP {plan.tensor_parallel_size}, PP {plan.pipeline_parallel_size}, "
        f"DP {plan.data_parallel_size}, EP {plan.expert_parallel_size or 'off'}"
        + (
            f", MoE TP {plan.tensor_parallel_size * plan.data_parallel_size}"
            if "(MoE TP " in plan.layout
            else ""
        )
        + (", EPLB" if plan.enable_eplb else ""),
        f"  serving       maxModelLen {plan.max_model_len}, maxNumSeqs {plan.max_num_seqs}, "
        f"maxNumBatchedTokens {plan.max_num_batched_tokens}, KV {plan.kv_cache_dtype}",
        f"  throughput    {plan.tokens_per_second:.0f} output tok/s per replica at {plan.batch_size} concurrent "
        f"requests ({plan.requests_per_second:.2f} req/s); {_money(plan.cost_per_million_tokens, '/M tokens')}",
        f"  latency       TTFT p95 {plan.time_to_first_token_seconds:.2f} s, TPOT {plan.time_per_output_token_ms:.1f} ms",
    ]
    if plan.target_replicas is not None:
        lines.append(f"  replicas      {plan.target_replicas} for the target")
    lines += [
        f"  capacity      {plan.concurrent_sequences} concurrent full-length sequences; weights "
        f"{plan.weights_total_gb:.1f} GB in all",
        "  memory per rank (GiB):",
        f"    device {m.device_gib:>8.2f}   usable {m.usable_gib:.2f} at {plan.gpu_memory_utilization:.2f}, "
        f"headroom {m.headroom_gib:.2f}",
        f"    weights {m.weights_gib:>7.2f}   activations {m.activation_gib:.2f}   overhead {m.overhead_gib:.2f}",
        f"    KV cache {m.kv_cache_gib:>6.2f}   ({plan.kv_bytes_per_token_per_rank / 1024:.1f} KiB per token)",
        f"  why           {plan.reason}",
    ]
    lines += [f"  note          {n}" for n in plan.notes]
    if plan.recipe is not None:
        r = plan.recipe
        lines.append(
            f"  vs recipe     smallest footprint {r.planned_gb:.0f} GB vs the vLLM recipe's {r.recipe_gb:.0f} GB "
            f"minimum ({(r.ratio - 1) * 100:+.0f} %; {r.source})"
        )
    if plan.alternatives:
        lines.append("  alternatives:  layout | tok/s/replica | $/M tokens | TTFT | TPOT | why it lost")
        for a in plan.alternatives[:12]:
            mark = "ok " if a.feasible else "no "
            tps = f"{a.tokens_per_second:.0f}" if a.tokens_per_second is not None else "-"
            ttft = (
                f"{a.time_to_first_token_seconds:.2f}s" if a.time_to_first_token_seconds is not None else "-"
            )
            tpot = f"{a.time_per_output_token_ms:.0f}ms" if a.time_per_output_token_ms is not None else "-"
            lines.append(
                f"    {mark}{a.layout:<44} {tps:>7} {_money(a.cost_per_million_tokens, ''):>9} {ttft:>6} "
                f"{tpot:>6}  {a.reason}"
            )
    return "\n".join(lines)


# --- end of the `kubemoe plan` output --------------------------------------------------------------------


def _file_documents(args: argparse.Namespace) -> list[CustomResource]:
    text, origin = _read_input(args.file)
    return load_documents(text, origin)


def _plan_or_none(spec: MoEModelSpec, catalog: Catalog) -> Plan | None:
    try:
        return plan_placement(spec, catalog)
    except PlanningError:
        return None


def _pipeline_plans(docs: list[CustomResource], catalog: Catalog) -> list[tuple[str, PipelinePlan]]:
    models = {(m.metadata.namespace, m.metadata.name): m for m in docs if isinstance(m, MoEModel)}
    out = []
    for doc in docs:
        if not isinstance(doc, MoAPipeline):
            continue
        ns = doc.metadata.namespace
        states = {}
        for n in referenced_model_names(doc):
            model = models.get((ns, n))
            # The operator reads these from each model's status.plan; here the file's models are planned.
            placed = _plan_or_none(model.spec, catalog) if model else None
            states[n] = model_ref_state(
                n,
                model,
                planned_replicas=placed.target_replicas if placed else None,
                planned_rate=placed.requests_per_second if placed else None,
            )
        refs = resolve_refs(doc, states)  # the operator's resolution; no cluster, so nothing is "ready"
        pipeline_plan = plan_pipeline(
            doc, endpoints=refs.endpoints, ready={}, replicas=refs.replicas, planned_rates=refs.rates
        )
        out.append((doc.metadata.name, pipeline_plan))
    return out


def _pipeline_table(name: str, plan: PipelinePlan) -> str:
    lines = [f"{name}: Mixture-of-Agents pipeline"]
    for agent in plan.agents:
        where = f"layer {agent.layer}" if agent.layer else "aggregator"
        lines.append(f"  {where:<11} {agent.name:<20} {agent.model} at {agent.url}")
    lines.append("  load per pipeline request:")
    for load in plan.capacity.models:
        stable = (
            f", stable below {load.max_stable_requests_per_second:g} req/s"
            if load.max_stable_requests_per_second is not None
            else ""
        )
        lines.append(
            f"    {load.calls_per_request} call(s) to {load.model} ({load.replicas} replica(s){stable})"
        )
    verdict = {True: "ok", False: "NOT OK", None: "unknown"}[plan.capacity_ok]
    lines.append(f"  capacity      {verdict}: {plan.capacity_message}")
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace, catalog: Catalog) -> int:
    if args.file:  # read once: `-` is stdin, which cannot be read twice
        docs = _file_documents(args)
        specs = [(m.metadata.name, m.spec) for m in docs if isinstance(m, MoEModel)]
        pipelines = _pipeline_plans(docs, catalog)
    else:
        specs, pipelines = _spec_from_args(args), []
    results = [(name, plan_placement(spec, catalog)) for name, spec in specs]
    if not results and not pipelines:
        raise CliError(f"{args.file}: no MoEModel or MoAPipeline documents to plan")
    if args.output == "table":
        tables = [_plan_table(n, p) for n, p in results] + [_pipeline_table(n, p) for n, p in pipelines]
        print("\n\n".join(tables))
    else:
        payload: list[Any] = [p.model_dump(mode="json", by_alias=True) for _, p in results]
        payload += [
            {
                "pipeline": n,
                "agents": [a.model_dump(by_alias=True, mode="json") for a in p.agents],
                "capacity": p.capacity.model_dump(by_alias=True, mode="json", exclude_none=True),
                "capacityOK": p.capacity_ok,
                "message": p.capacity_message,
            }
            for n, p in pipelines
        ]
        _dump(payload[0] if len(payload) == 1 else payload, args.output, sys.stdout)
    return 0


# -------------------------------------------------------------------------------------------- render


def cmd_render(args: argparse.Namespace, catalog: Catalog) -> int:
    text, origin = _read_input(args.file)
    objects = render_documents(load_documents(text, origin), catalog)
    if args.output == "json":
        _dump({"apiVersion": "v1", "kind": "List", "items": objects}, "json", sys.stdout)
    else:
        yaml.safe_dump_all(objects, sys.stdout, sort_keys=False, width=120)
    return 0


# ------------------------------------------------------------------------------------- catalog, crds


def cmd_catalog(args: argparse.Namespace, catalog: Catalog) -> int:
    if args.table == "models":
        rows: list[Any] = [
            m.model_dump(by_alias=True, exclude_none=True, mode="json") for m in catalog.models.values()
        ]
        if args.output == "table":
            print(f"{'MODEL':<48} {'PARAMS':>8} {'ACTIVE':>7} {'EXPERTS':>8} {'CONTEXT':>8} DTYPE")
            for m in catalog.models.values():
                a = m.architecture
                experts = f"{a.num_experts}/{a.experts_per_token}" if a.is_moe else "dense"
                active = f"{a.active_params_b:g}B" if a.active_params_b else "-"
                print(
                    f"{m.id:<48} {a.total_params_b:>7g}B {active:>7} {experts:>8} {a.max_context:>8} {a.native_dtype}"
                )
            return 0
    else:
        rows = [
            i.model_dump(by_alias=True, exclude_none=True, mode="json") for i in catalog.instances.values()
        ]
        if args.output == "table":
            print(
                f"{'INSTANCE':<18} {'ACCELERATOR':<12} {'DEVICES':>7} {'MiB/DEVICE':>10} {'$/HOUR':>9} RESOURCE"
            )
            for i in sorted(catalog.instances.values(), key=lambda i: i.name):
                price = f"{i.price_per_hour:.2f}" if i.price_per_hour is not None else "-"
                print(
                    f"{i.name:<18} {i.accelerator_model:<12} {i.devices_per_node:>7} "
                    f"{i.memory_per_device_mib:>10} {price:>9} {i.resource_name}"
                )
            return 0
    _dump({args.table: rows}, args.output, sys.stdout)
    return 0


def cmd_run(args: argparse.Namespace, catalog: Catalog) -> int:
    from kubemoe.controller.config import OperatorConfig
    from kubemoe.controller.logs import configure_logging
    from kubemoe.controller.wiring import run_operator  # kopf and kubernetes only when running

    configure_logging(verbose=args.verbose, fmt=args.log_format)
    cfg = OperatorConfig.from_env(  # flags win over the environment (controller.config.ENV)
        namespaces=args.namespace,
        standalone=args.standalone,
        lease_name=args.lease_name,
        lease_namespace=args.lease_namespace,
        lease_seconds=args.lease_seconds,
        resync_seconds=args.resync_seconds,
        health_port=args.health_port,
        catalog_paths=list(args.catalog),
        router_image=args.router_image,
    )
    run_operator(cfg)
    return 0


def cmd_crds(args: argparse.Namespace, catalog: Catalog) -> int:
    crds = all_crds()
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for filename, crd in crds.items():
            (out / filename).write_text(dump_crd(crd))
            print(f"wrote {out / filename}")
    else:
        sys.stdout.write("---\n".join(dump_crd(c) for c in crds.values()))
    return 0


# -------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubemoe", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="PATH",
        help="catalog override file or directory (same format as the shipped tables); repeatable, applied "
        "after those in $KUBEMOE_CATALOG_PATH",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="plan the placement of a model")
    plan.add_argument("model", nargs="?", help="model id, e.g. mistralai/Mixtral-8x7B-Instruct-v0.1")
    plan.add_argument("-f", "--file", help="plan every MoEModel in this YAML file (- for stdin)")
    plan.add_argument("--max-model-len", type=int)
    plan.add_argument("--instance-type", action="append", help="allowed instance type; repeatable")
    plan.add_argument("--accelerator", choices=["gpu", "neuron", "any"], default="any")
    plan.add_argument(
        "--strategy", choices=["cheapest", "fewest-accelerators", "lowest-latency"], default="cheapest"
    )
    plan.add_argument("--tensor-parallel-size", type=int)
    plan.add_argument("--pipeline-parallel-size", type=int)
    plan.add_argument("--data-parallel-size", type=int)
    plan.add_argument(
        "--expert-parallel",
        choices=["on", "off"],
        help="spec.placement.expertParallel; off with DP: the experts TP-sharded over all TP x DP ranks",
    )
    plan.add_argument("--kv-cache-dtype", choices=["auto", "fp8"])
    plan.add_argument("--quantization")
    plan.add_argument("--gpu-memory-utilization", type=float)
    plan.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    plan.set_defaults(func=cmd_plan)

    render = sub.add_parser("render", help="print the manifests the operator would apply for CRs")
    render.add_argument(
        "-f", "--file", required=True, help="YAML file of MoEModels/MoAPipelines (- for stdin)"
    )
    render.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    render.set_defaults(func=cmd_render)

    catalog = sub.add_parser("catalog", help="print the model or instance table")
    catalog.add_argument("table", choices=["models", "instances"])
    catalog.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    catalog.set_defaults(func=cmd_catalog)

    run = sub.add_parser("run", help="run the operator (in a cluster, or against $KUBECONFIG)")
    run.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch only this namespace; repeatable"
    )
    run.add_argument(
        "--standalone", action="store_true", help="no leader election: for one replica or development"
    )
    run.add_argument("--lease-name", help="coordination.k8s.io Lease for leader election (default kubemoe)")
    run.add_argument("--lease-namespace", help="namespace of the Lease (default: the pod's)")
    run.add_argument(
        "--lease-seconds",
        type=float,
        help="leader Lease duration; the renew deadline is 2/3 of it (env KUBEMOE_LEASE_DURATION_SECONDS)",
    )
    run.add_argument(
        "--resync-seconds",
        type=float,
        help="reconcile everything this often (env KUBEMOE_RESYNC_SECONDS, 60)",
    )
    run.add_argument("--health-port", type=int, default=8080, help="/healthz, /readyz and /metrics")
    run.add_argument("--router-image", help="image of the MoA router pods")
    run.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="json: one object per line"
    )
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)

    # Listed for --help; main() hands `kubemoe router ...` to the router's own parser.
    sub.add_parser("router", help="serve a MoA pipeline as one OpenAI-compatible endpoint (--config FILE)")

    # --- decentralised MoA peer (issue 12): listed for --help; main() hands `kubemoe peer ...` to its parser.
    sub.add_parser("peer", help="serve one decentralised MoA peer fronting one model (--config FILE)")

    # --- evaluation harness (issue 12): listed for --help; main() hands `kubemoe eval ...` to its parser.
    sub.add_parser("eval", help="grade a MoA pipeline against each of its models alone on a JSONL dataset")

    crds = sub.add_parser("crds", help="print (or write) the CustomResourceDefinitions")
    crds.add_argument("--output-dir", help="write one file per CRD into this directory")
    crds.set_defaults(func=cmd_crds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["router"]:  # the router parses its own flags (and imports aiohttp only then)
        from kubemoe.router.__main__ import main as router_main

        return router_main(argv[1:])
    if argv[:1] == ["peer"]:  # decentralised MoA peer: its own flags, aiohttp imported only then
        from kubemoe.peer.__main__ import main as peer_main

        return peer_main(argv[1:])
    if argv[:1] == ["eval"]:  # evaluation harness: its own flags, aiohttp imported only then
        from kubemoe.evaluate.cli import main as eval_main

        return eval_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        catalog = load_catalog(args.catalog)
        result: int = args.func(args, catalog)
        return result
    except PlanningError as exc:
        print(f"error: {exc.reason.value}: {exc.message}", file=sys.stderr)
    except (CliError, DocumentError, CatalogError, EngineDialectError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except BrokenPipeError:  # `kubemoe render ... | head`
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
