"""The operator benchmark's parts: the workload (MoEModels and MoAPipelines), the operator process, and
the timed phases (floor rollout, operator rollout, waits), each returning what it measured.

The floor is what any tool would have to do: server-side apply exactly the objects ``kubemoe render``
produces, with as many concurrent writers as the operator has workers, then wait until every workload is
available. The operator run applies only the CRs and waits until every one reports Ready.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hack.bench._cluster import WRITE_VERBS, Api, count, delta
from hack.bench._cpu import Sampler, spent
from hack.bench._operator_proc import KUBEMOE, Operator
from hack.bench._watch import ReadyWatch

MODEL_ID = "allenai/OLMoE-1B-7B-0924"  # one A100 per replica: eight models per fake p4de node
INSTANCE_TYPE = "p4de.24xlarge"
CPU_INSTANCE_TYPE = "m7i.8xlarge"  # the fleet's untainted nodes, where router pods go
#: Resources the operator writes; writes to anything else are not its doing.
OPERATOR_RESOURCES = frozenset(
    {
        "deployments",
        "services",
        "configmaps",
        "httproutes",
        "prometheusrules",
        "servicemonitors",
        "leaderworkersets",
        "moemodels",
        "moapipelines",
    }
)
#: What the operator's writes reach: its kinds and the Events it sends.
OPERATOR_WRITTEN = OPERATOR_RESOURCES | {"events"}
FLOOR_MANAGER = "kubemoe"  # the operator's field manager: the floor's objects are the operator's objects
BENCH_MANAGER = "kubemoe-bench"


# ------------------------------------------------------------------------------------------- workload


def model_name(i: int) -> str:
    return f"m-{i:04d}"


def model_docs(namespace: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "kubemoe.io/v1alpha1",
            "kind": "MoEModel",
            "metadata": {"name": model_name(i), "namespace": namespace},
            "spec": {
                "model": {"name": MODEL_ID},
                "placement": {"instanceTypes": [INSTANCE_TYPE]},
                "replicas": 1,
                "routing": {"parentRefs": [{"name": "inference-gateway"}]},
            },
        }
        for i in range(n)
    ]


def pipeline_docs(namespace: str, n_models: int, n_pipelines: int) -> list[dict[str, Any]]:
    """Two proposers and an aggregator each, over distinct models where there are enough."""
    docs = []
    for p in range(n_pipelines):
        a, b, c = (model_name((3 * p + k) % n_models) for k in range(3))
        docs.append(
            {
                "apiVersion": "kubemoe.io/v1alpha1",
                "kind": "MoAPipeline",
                "metadata": {"name": f"p-{p:04d}", "namespace": namespace},
                "spec": {
                    "layers": [
                        {
                            "agents": [
                                {"name": "a", "moeModelRef": {"name": a}},
                                {"name": "b", "moeModelRef": {"name": b}},
                            ]
                        }
                    ],
                    "aggregator": {"moeModelRef": {"name": c}},
                },
            }
        )
    return docs


def render(docs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Exactly what ``kubemoe render`` prints for ``docs``."""
    text = "\n---\n".join(json.dumps(d) for d in docs)
    out = subprocess.run(
        [KUBEMOE, "render", "-f", "-", "-o", "json"], input=text, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubemoe render failed: {out.stderr[-2000:]}")
    return list(json.loads(out.stdout)["items"])


def gpus_requested(objects: Sequence[Mapping[str, Any]]) -> int:
    total = 0
    for o in objects:
        if o["kind"] != "Deployment":
            continue
        pod = o["spec"]["template"]["spec"]
        per_pod = sum(
            int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))
            for c in pod["containers"]
        )
        total += per_pod * int(o["spec"].get("replicas", 1))
    return total


# --------------------------------------------------------------------------------------------- phases


@dataclass
class Rollout:
    seconds: float = 0.0
    first_ready_s: float = 0.0
    requests: dict[tuple[str, str, str], float] = field(default_factory=dict)
    applied: int = 0  # objects the benchmark itself applied
    reconciles: float = 0.0
    self_counted_writes: float = 0.0  # the operator's own kubemoe_api_writes_total
    self_counted_events: float = 0.0  # of which Events
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    #: CPU seconds per process (cluster components, operator, bench) over the rollout (hack.bench._cpu).
    cpu_by_process: dict[str, float] = field(default_factory=dict)


def _condition_true(obj: Mapping[str, Any], type_: str) -> bool:
    status = obj.get("status") or {}
    gen = obj["metadata"].get("generation")
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return bool(c.get("status") == "True" and status.get("observedGeneration", gen) == gen)
    return False


def deployment_available(d: Mapping[str, Any]) -> bool:
    st = d.get("status") or {}
    want = int(d["spec"].get("replicas", 1))
    return (
        st.get("observedGeneration", 0) >= d["metadata"].get("generation", 1)
        and int(st.get("availableReplicas", 0)) >= want
        and int(st.get("updatedReplicas", 0)) >= want
    )


def deployments_ready(
    api: Api, namespace: str, names: set[str] | None = None, fresh_from: Mapping[str, str] | None = None
) -> Callable[[], int]:
    """Probe: how many Deployments (of ``names``, not the uid in ``fresh_from``) are available."""

    def probe() -> int:
        n = 0
        for d in api.list("Deployment", namespace):
            name = d["metadata"]["name"]
            if names is not None and name not in names:
                continue
            if fresh_from is not None and fresh_from.get(name) == d["metadata"]["uid"]:
                continue
            n += deployment_available(d)
        return n

    return probe


def cr_ready(obj: Mapping[str, Any]) -> bool:
    return _condition_true(obj, "Ready")


def crs_ready(api: Api, namespace: str) -> Callable[[], int]:
    """Probe by LIST (waits outside the timed rollouts; those watch, see ``hack.bench._watch``)."""

    def probe() -> int:
        return sum(cr_ready(o) for kind in ("MoEModel", "MoAPipeline") for o in api.list(kind, namespace))

    return probe


def timed_until(
    start: Callable[[], object], probe: Callable[[], int], total: int, *, timeout_s: float, poll_s: float
) -> tuple[float, float]:
    """Run ``start`` in a thread from t0 and poll ``probe`` meanwhile; returns (seconds until ``total`` are
    ready and ``start`` has returned, seconds until the first one was ready). A run is not over while its
    writes are: a floor whose workloads are available before its last write has not done its work."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            start()
        except BaseException as exc:
            errors.append(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    first = 0.0
    while True:
        if errors:
            raise errors[0]
        ready = probe()
        now = time.monotonic() - t0
        if ready and not first:
            first = now
        if ready >= total and not worker.is_alive():
            if errors:
                raise errors[0]
            return now, first
        if now > timeout_s:
            writing = " (its writes not done)" if worker.is_alive() else ""
            raise TimeoutError(f"only {ready} of {total} ready{writing} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def floor_rollout(
    api: Api,
    namespace: str,
    objects: Sequence[Mapping[str, Any]],
    *,
    workers: int,
    timeout_s: float,
    poll_s: float,
    cpu_sample: Sampler | None = None,
    then: Callable[[], int] | None = None,
) -> Rollout:
    """Server-side apply ``objects`` until every Deployment is available. ``then`` (writes made after the
    objects', returning how many) is part of the run: it ends when those are done too."""
    n_deploy = sum(o["kind"] == "Deployment" for o in objects)
    before = api.request_counts()
    cpu0 = cpu_sample() if cpu_sample else {}
    extra = [0]

    def writes() -> None:
        api.apply_all(objects, FLOOR_MANAGER, workers)
        extra[0] = then() if then else 0

    with ReadyWatch(api, namespace, ["Deployment"], deployment_available) as seen:
        seconds, first = timed_until(
            writes,
            seen.count,
            n_deploy,
            timeout_s=timeout_s,
            poll_s=poll_s,
        )
    return Rollout(
        seconds=seconds,
        first_ready_s=first,
        requests=delta(api.request_counts(), before),
        applied=len(objects) + extra[0],
        cpu_by_process=spent(cpu0, cpu_sample()) if cpu_sample else {},
    )


def operator_rollout(
    api: Api,
    op: Operator,
    namespace: str,
    crs: Sequence[Mapping[str, Any]],
    *,
    workers: int,
    timeout_s: float,
    poll_s: float,
    cpu_sample: Sampler | None = None,
) -> Rollout:
    before, cpu0, rec0 = api.request_counts(), op.cpu(), op.reconciles()
    all0 = cpu_sample() if cpu_sample else {}
    own0 = op.metric("kubemoe_api_writes_total")
    events0 = op.metric("kubemoe_api_writes_total", kind="Event")
    with ReadyWatch(api, namespace, ["MoEModel", "MoAPipeline"], cr_ready) as seen:
        seconds, first = timed_until(
            lambda: api.apply_all(crs, BENCH_MANAGER, workers),
            seen.count,
            len(crs),
            timeout_s=timeout_s,
            poll_s=poll_s,
        )
    return Rollout(
        seconds=seconds,
        first_ready_s=first,
        requests=delta(api.request_counts(), before),
        applied=len(crs),
        reconciles=op.reconciles() - rec0,
        self_counted_writes=op.metric("kubemoe_api_writes_total") - own0,
        self_counted_events=op.metric("kubemoe_api_writes_total", kind="Event") - events0,
        cpu_s=op.cpu() - cpu0,
        peak_rss_mib=op.rss(),
        cpu_by_process=spent(all0, cpu_sample()) if cpu_sample else {},
    )


#: The verbs of the operator's writes: server-side apply, merge patches (status, hand-added keys), deletes
#: (prune), creates (Events). Never PUT: that is how the cluster's own controllers write every status, a
#: count that differs between two runs of the same objects by timing alone (Deployment status updates).
OPERATOR_VERBS = WRITE_VERBS - {"PUT"}


def writes(
    requests: Mapping[tuple[str, str, str], float], resources: frozenset[str] = OPERATOR_RESOURCES
) -> float:
    return count(requests, OPERATOR_VERBS, resources)


def operator_writes(op_run: Rollout, floor_run: Rollout) -> float:
    """The operator's writes to its kinds during its rollout, from the API server's counters: every write
    of the operator's verbs there, less the benchmark's own CR applies, less what the cluster's
    controllers wrote with those verbs to the same kinds in the floor run of the same objects."""
    controllers = writes(floor_run.requests) - floor_run.applied
    return writes(op_run.requests) - op_run.applied - controllers


def wait_quiet(api: Api, quiet_s: float, timeout_s: float) -> tuple[float, dict[str, float]]:
    """Until a whole ``quiet_s`` went by with no write, by anyone, to the operator's kinds and Events (the API
    server's counters): the rollout's echoes are over, such as the Deployment controller's last status
    updates and Events that the controllers' recorders send late on busy cores. At ``timeout_s`` it returns
    anyway: writes that never stop then show in the window measured next, where they count. Returns the
    seconds waited and the writes seen meanwhile (:func:`write_breakdown`)."""
    t0 = time.monotonic()
    first = api.request_counts()
    last, quiet_since = count(first, WRITE_VERBS, OPERATOR_WRITTEN), t0
    while time.monotonic() - quiet_since < quiet_s and time.monotonic() - t0 < timeout_s:
        time.sleep(min(0.5, quiet_s / 4))
        now = count(api.request_counts(), WRITE_VERBS, OPERATOR_WRITTEN)
        if now != last:
            last, quiet_since = now, time.monotonic()
    return time.monotonic() - t0, write_breakdown(delta(api.request_counts(), first))


def write_breakdown(requests: Mapping[tuple[str, str, str], float]) -> dict[str, float]:
    """The writes to the operator's kinds and Events by ``VERB resource[/subresource]``, for the record."""
    return {
        f"{verb} {res}{'/' + sub if sub else ''}": v
        for (verb, res, sub), v in sorted(requests.items())
        if verb in WRITE_VERBS and res in OPERATOR_WRITTEN
    }
