"""Diagnostic (not a subject): how much of the operator's gap to the floor any operator must pay.

``python -m hack.bench._inherent N`` (default 100), on clusters of its own (``KUBEMOE_CLUSTER_NAME``, default
``kubemoe-inh``; one per run, hack.bench._sites). Three rollouts of the same N models (and N/10 MoAPipelines):

1. **operator**: ``kubemoe run`` from the CRs to every CR Ready (as operator_scale); then every CR's final
   status is read;
2. **floor**: server-side apply of what ``kubemoe render`` produces, until every workload is available (as
   operator_scale);
3. **floor + CRs**: the floor, plus what the CRs themselves cost the API server with no operator at all: the
   benchmark applies each CR, writes its status twice (a merge patch of the status read in run 1 with no
   replica ready, then the final one) and posts one Event, which is the operator's own budget per CR (its
   writes beyond the children). Timed until every workload is available and those writes are done.

It prints each run's seconds and CPU by process, and the ratios (3) / (2), the part of the gap that is the
CRs' API work on this machine, and (1) / (2), the benchmark's figure. On 2 busy cores the wall ratio follows
the CPU ratio, so (3) / (2) bounds from below what any operator writing a status can reach here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hack.bench import _cpu as cpu
from hack.bench import _opbench as ob
from hack.bench._cluster import Api
from hack.bench._operator_proc import Operator, cache_root
from hack.bench._sites import Sites


def _event(cr: Mapping[str, Any], i: int) -> dict[str, Any]:
    meta = cr["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.inherent-{i}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": cr["apiVersion"],
            "kind": cr["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
        },
        "reason": "Planned",
        "message": "as the operator's one Event per first reconcile: a plan reason and what was applied",
        "type": "Normal",
        "source": {"component": "kubemoe-inherent"},
    }


def _cr_writes(api: Api, crs: Sequence[Mapping[str, Any]], statuses: Mapping[str, Any], workers: int) -> int:
    """Per CR: apply it, write its status twice (not ready, then final), post one Event; returns the writes."""

    def one(item: tuple[int, Mapping[str, Any]]) -> None:
        i, cr = item
        api.apply(cr, ob.BENCH_MANAGER)
        final = statuses[f"{cr['kind']}/{cr['metadata']['name']}"]
        first = dict(final) | {"readyReplicas": 0}
        for body in (first, final):
            code, data = api.call(
                "PATCH",
                Api.object_path(cr) + "/status",
                {"status": body},
                content_type="application/merge-patch+json",
            )
            if code >= 300:
                raise RuntimeError(f"status of {cr['metadata']['name']}: {code} {str(data)[:300]}")
        code, data = api.call(
            "POST", f"/api/v1/namespaces/{cr['metadata']['namespace']}/events", _event(cr, i)
        )
        if code >= 300:
            raise RuntimeError(f"event for {cr['metadata']['name']}: {code} {str(data)[:300]}")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, enumerate(crs)))
    return 4 * len(crs)


def final_statuses(api: Api, ns: str) -> dict[str, Any]:
    """Every CR's status in ``ns`` (``Kind/name`` -> status), as the operator left it."""
    return {
        f"{kind}/{o['metadata']['name']}": o["status"]
        for kind in ("MoEModel", "MoAPipeline")
        for o in api.list(kind, ns)
    }


def crs_floor_rollout(
    api: Api,
    cluster: str,
    ns: str,
    *,
    objects: Sequence[Mapping[str, Any]],
    crs: Sequence[Mapping[str, Any]],
    statuses: Mapping[str, Any],
    workers: int,
    timeout: float,
    poll: float,
) -> ob.Rollout:
    """The floor rollout, and then every CR's own writes (``statuses``: :func:`final_statuses` of an operator
    run of the same CRs); done when both are. ``applied`` counts the benchmark's writes of both."""
    return ob.floor_rollout(
        api,
        ns,
        objects,
        workers=workers,
        timeout_s=timeout,
        poll_s=poll,
        cpu_sample=cpu.sampler(cluster),
        then=lambda: _cr_writes(api, crs, statuses, workers),
    )


def main() -> None:
    from hack.bench.operator_scale import Plan, fleet_for  # it imports this module

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("n", type=int, nargs="?", default=100)
    args = parser.parse_args()
    n, pipes = args.n, max(1, args.n // 10)
    plan = Plan.for_run(quick=False)
    name = os.environ.get("KUBEMOE_CLUSTER_NAME") or "kubemoe-inh"
    sites = Sites(name, fleet_for)
    timeout, poll = 120 + 1.5 * n, 0.25 if n <= 100 else 1.0
    out: dict[str, Any] = {}
    log = cache_root() / "bench" / "inherent-operator.log"
    try:
        # 1. The operator's rollout, and the statuses it wrote.
        ns = "inh"
        crs = ob.model_docs(ns, n) + ob.pipeline_docs(ns, n, pipes)
        api, env = sites.clean(ns, n)
        op = Operator(ns, plan.rollout_resync_s, env, log).start()
        op.wait_ready()
        run = ob.operator_rollout(
            api, op, ns, crs, workers=plan.workers, timeout_s=timeout, poll_s=poll,
            cpu_sample=cpu.sampler(name, {"operator": op.pid}),
        )  # fmt: skip
        op.stop()
        statuses = final_statuses(api, ns)
        out["operator"] = run

        # 2. The floor; 3. the floor and the CRs' own writes, no operator.
        objects = ob.render(crs)
        api, _ = sites.clean(ns, n)
        out["floor"] = ob.floor_rollout(
            api,
            ns,
            objects,
            workers=plan.workers,
            timeout_s=timeout,
            poll_s=poll,
            cpu_sample=cpu.sampler(name),
        )
        api, _ = sites.clean(ns, n)
        out["floor+crs"] = crs_floor_rollout(
            api,
            name,
            ns,
            objects=objects,
            crs=crs,
            statuses=statuses,
            workers=plan.workers,
            timeout=timeout,
            poll=poll,
        )
    finally:
        sites.close()

    for label, r in out.items():
        print(f"{label:10s} {r.seconds:7.1f} s   {cpu.line(r.cpu_by_process)}")
    base = out["floor"]
    for label in ("floor+crs", "operator"):
        r = out[label]
        wall = r.seconds / base.seconds
        cpu_ratio = sum(r.cpu_by_process.values()) / sum(base.cpu_by_process.values())
        print(f"{label} / floor: {wall:.2f} wall, {cpu_ratio:.2f} CPU")


if __name__ == "__main__":
    main()
