"""Profiling aid (not a subject): per-object timelines of one operator or floor rollout, from watch streams.

``python -m hack.bench._timeline N [floor|operator|both|watched] [--resync S] [--py-spy FILE]`` on the
bench cluster (``KUBEMOE_CLUSTER_NAME``; brought up with the bench sizing if it is not). For every model it
records when the CR and the Deployment were first seen on a watch, when the Deployment became available
and (operator) when the MoEModel's status said Ready, and prints the first, median and last of each phase
relative to the start of the rollout, the per-model gaps between them, CPU seconds per process (the
cluster's components, the operator, this process: hack.bench._cpu) and the API server's request seconds.
``watched``: the floor with an idle operator watching its objects (what watching alone costs).
``--py-spy FILE``: a GIL-holding profile of the operator (py-spy, ``pip install py-spy``; raw format).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hack.bench import _cpu as cpu
from hack.bench import _opbench as ob
from hack.bench._cluster import (
    Api,
    create_namespace,
    delete_namespace,
    ensure_fleet,
    start_cluster,
)
from hack.bench._operator_proc import Operator, cache_root, install_crds
from kubemoe.controller.config import OperatorConfig


class Watcher:
    """Records the first time (monotonic) each (kind, name, phase) was seen on a watch stream."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.seen: dict[tuple[str, str, str], float] = {}
        self.threads: list[threading.Thread] = []
        self.stop = False

    def note(self, kind: str, name: str, phase: str) -> None:
        self.seen.setdefault((kind, name, phase), time.monotonic())

    def _watch(self, kind: str) -> None:
        path = Api.path(kind, self.namespace)
        while not self.stop:
            method, url, headers, _, _ = self.api.client.param_serialize(
                "GET",
                path,
                query_params=[("watch", "true"), ("timeoutSeconds", "30")],
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            resp = self.api.client.call_api(method, url, header_params=headers, _request_timeout=60)
            buf = b""
            for chunk in resp.response.stream(4096):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._event(kind, json.loads(line))
                if self.stop:
                    return

    def _event(self, kind: str, ev: dict[str, Any]) -> None:
        obj = ev["object"]
        name = obj["metadata"]["name"]
        self.note(kind, name, "seen")
        if kind == "Deployment" and ob.deployment_available(obj):
            self.note(kind, name, "available")
        if kind in ("MoEModel", "MoAPipeline"):
            if obj.get("status"):
                self.note(kind, name, "status")
            if ob._condition_true(obj, "Ready"):
                self.note(kind, name, "ready")

    def start(self, kinds: list[str]) -> None:
        for k in kinds:
            t = threading.Thread(target=self._watch, args=(k,), daemon=True)
            t.start()
            self.threads.append(t)
        time.sleep(1.0)


def cpu_all(extra: dict[str, int]) -> dict[str, float]:
    return cpu.sampler(os.environ["KUBEMOE_CLUSTER_NAME"], {k: v for k, v in extra.items() if k != "bench"})()


def print_cpu(before: dict[str, float], after: dict[str, float], seconds: float) -> None:
    print(f"  over {seconds:.2f} s wall: {cpu.line(cpu.spent(before, after))}")


def durations(api: Api) -> dict[str, float]:
    """apiserver_request_duration_seconds_sum by verb/resource/subresource."""
    import re

    _, data = api.call("GET", "/metrics", raw=True)
    out: dict[str, float] = {}
    for line in data.decode().splitlines():
        if not line.startswith("apiserver_request_duration_seconds_sum{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        k = f"{labels.get('verb')}/{labels.get('resource')}/{labels.get('subresource', '')}"
        out[k] = out.get(k, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def print_durations(before: dict[str, float], after: dict[str, float]) -> None:
    d = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0.005}
    top = sorted(d.items(), key=lambda kv: -kv[1])[:14]
    print(
        f"  apiserver request seconds: total {sum(d.values()):.2f}: "
        + ", ".join(f"{k} {v:.2f}" for k, v in top)
    )


def report(label: str, t0: float, w: Watcher) -> None:
    phases: dict[tuple[str, str], list[float]] = {}
    for (kind, _, phase), t in w.seen.items():
        phases.setdefault((kind, phase), []).append(t - t0)
    print(f"--- {label}")
    for (kind, phase), ts in sorted(phases.items(), key=lambda kv: statistics.median(kv[1])):
        print(
            f"  {kind:12s} {phase:10s} n={len(ts):4d} first {min(ts):6.2f} "
            f"median {statistics.median(ts):6.2f} last {max(ts):6.2f}"
        )
    # Per-model phase gaps (operator: seen->deployment seen->available->ready).
    gaps: dict[str, list[float]] = {}
    for (kind, name, phase), t in w.seen.items():
        if kind != "Deployment" or phase != "available":
            continue
        d_seen = w.seen.get(("Deployment", name, "seen"))
        if d_seen is not None:
            gaps.setdefault("deployment seen -> available", []).append(t - d_seen)
        ready = w.seen.get(("MoEModel", name, "ready"))
        if ready is not None:
            gaps.setdefault("deployment available -> CR Ready", []).append(ready - t)
        cr = w.seen.get(("MoEModel", name, "seen"))
        if cr is not None and d_seen is not None:
            gaps.setdefault("CR seen -> deployment seen", []).append(d_seen - cr)
    for g, ts in gaps.items():
        print(f"  gap {g:36s} median {statistics.median(ts):5.2f} max {max(ts):5.2f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("n", type=int)
    p.add_argument("which", default="both", nargs="?")
    p.add_argument("--py-spy", default="")
    p.add_argument("--resync", type=float, default=600.0, help="the operator's resync period (s)")
    p.add_argument("--workers", type=int, default=OperatorConfig().workers)
    args = p.parse_args()

    cluster = start_cluster(os.environ["KUBEMOE_CLUSTER_NAME"], cache_root())
    api = Api(cluster.kubeconfig)
    install_crds(cluster.env)
    n = args.n
    probe = ob.render(ob.model_docs("probe", 1))
    ensure_fleet(
        api,
        {
            ob.INSTANCE_TYPE: math.ceil(n * ob.gpus_requested(probe) / 8) + 1,
            ob.CPU_INSTANCE_TYPE: max(1, n // 500),
        },
    )
    pipes = max(1, n // 10)
    stamp = int(time.time()) % 100000
    if args.which in ("floor", "both", "watched"):
        ns = f"tl-floor-{stamp}"
        create_namespace(api, ns)
        extra = {"bench": os.getpid()}
        watcher_op = None
        if args.which == "watched":  # an idle operator watching the floor's objects (it owns none of them)
            watcher_op = Operator(ns, args.resync, cluster.env, Path(f"/tmp/opb-tl-{ns}.log")).start()
            watcher_op.wait_ready()
            extra["operator"] = watcher_op.pid
        objects = ob.render(ob.model_docs(ns, n) + ob.pipeline_docs(ns, n, pipes))
        w = Watcher(api, ns)
        w.start(["Deployment"])
        c0, d0 = cpu_all(extra), durations(api)
        t0 = time.monotonic()
        r = ob.floor_rollout(api, ns, objects, workers=args.workers, timeout_s=600, poll_s=0.25)
        report(f"floor N={n}: {r.seconds:.2f} s ({len(objects)} objects, {args.workers} writers)", t0, w)
        print_cpu(c0, cpu_all(extra), r.seconds)
        print_durations(d0, durations(api))
        if watcher_op is not None:
            watcher_op.stop()
        w.stop = True
        delete_namespace(api, ns)
    if args.which in ("operator", "both"):
        ns = f"tl-op-{stamp}"
        create_namespace(api, ns)
        crs = ob.model_docs(ns, n) + ob.pipeline_docs(ns, n, pipes)
        op = Operator(ns, args.resync, cluster.env, Path(f"/tmp/opb-tl-{ns}.log")).start()
        op.wait_ready()
        w = Watcher(api, ns)
        w.start(["Deployment", "MoEModel", "MoAPipeline"])
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-p",
                    str(op.pid),
                    "-o",
                    args.py_spy,
                    "-f",
                    "speedscope" if args.py_spy.endswith(".json") else "raw",
                    "--threads",
                    "--gil",
                    "-r",
                    "100",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        c0, d0 = cpu_all({"bench": os.getpid(), "operator": op.pid}), durations(api)
        t0 = time.monotonic()
        r = ob.operator_rollout(api, op, ns, crs, workers=args.workers, timeout_s=600, poll_s=0.25)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=30)
        report(
            f"operator N={n}: {r.seconds:.2f} s, reconciles {r.reconciles:.0f}, cpu {r.cpu_s:.2f} s", t0, w
        )
        print_cpu(c0, cpu_all({"bench": os.getpid(), "operator": op.pid}), r.seconds)
        print_durations(d0, durations(api))
        w.stop = True
        op.stop()
        delete_namespace(api, ns)


if __name__ == "__main__":
    main()
