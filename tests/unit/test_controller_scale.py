"""What keeps the operator cheap at scale: the queue's urgent lane, the cache telling news from echoes of
our own writes, and how a child set is applied (workload last, rolled back when refused; dry runs only for
changes to existing children)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from kubemoe.controller import queue as queue_module
from kubemoe.controller.cache import WatchCache
from kubemoe.controller.kube import KINDS, Kind, KubeApiError
from kubemoe.controller.queue import Key, WorkQueue
from kubemoe.controller.sync import HASH_ANNOTATION, ChildRejected, _stamped, apply_children

NORMAL = [Key("MoEModel", "ns", f"n{i}") for i in range(10)]
URGENT = Key("MoEModel", "ns", "u")


# --------------------------------------------------------------------------------------------- queue


async def _drain(queue: WorkQueue, n: int) -> list[Key]:
    out = []
    for _ in range(n):
        key = await asyncio.wait_for(queue.get(), timeout=1)
        queue.done(key, failed=False)
        out.append(key)
    return out


async def test_an_urgent_key_waits_behind_at_most_a_burst_of_normal_ones() -> None:
    queue = WorkQueue()
    for key in NORMAL:
        queue.add(key)
    queue.add(URGENT, urgent=True)
    order = await _drain(queue, len(NORMAL) + 1)
    assert order.index(URGENT) == queue_module.NORMAL_BURST
    assert [k for k in order if k != URGENT] == NORMAL  # first come, first served within a lane


async def test_urgent_keys_do_not_starve_normal_ones() -> None:
    queue = WorkQueue()
    urgent = [Key("MoEModel", "ns", f"u{i}") for i in range(10)]
    for key in urgent:
        queue.add(key, urgent=True)
    queue.add(NORMAL[0])
    assert (await _drain(queue, 1)) == [NORMAL[0]]
    assert await _drain(queue, len(urgent)) == urgent


async def test_a_waiting_key_moves_up_when_it_becomes_urgent_and_is_still_held_once() -> None:
    queue = WorkQueue()
    for key in NORMAL:
        queue.add(key)
    queue.add(NORMAL[-1], urgent=True)
    queue.add(NORMAL[-1], urgent=True)
    assert len(queue) == len(NORMAL)
    order = await _drain(queue, len(NORMAL))
    assert order.index(NORMAL[-1]) == queue_module.NORMAL_BURST
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), timeout=0.05)


async def test_an_urgent_event_during_a_reconcile_reruns_the_key_urgently() -> None:
    queue = WorkQueue()
    queue.add(URGENT)
    assert await queue.get() == URGENT
    for key in NORMAL:
        queue.add(key)
    queue.add(URGENT, urgent=True)  # mid-reconcile: dirty, and urgent
    queue.done(URGENT, failed=False)
    order = await _drain(queue, len(NORMAL) + 1)
    # (the burst already counts the key's own first run from the normal lane)
    assert order.index(URGENT) <= queue_module.NORMAL_BURST < len(NORMAL)


# --------------------------------------------------------------------------------------------- cache

DEPLOY = KINDS["Deployment"]


def deployment(name: str, rv: int) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv)}}


class Server:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.lists: list[str] = []

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        raise AssertionError("read through to the API server")

    def list(self, kind: Kind, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        self.lists.append(kind.kind)
        return [dict(o) for o in self.items if o["kind"] == kind.kind]


def test_the_watch_event_of_our_own_write_is_no_news_and_a_later_change_is() -> None:
    server = Server([deployment("a", 5)])
    cache = WatchCache(server, [DEPLOY, KINDS["Service"]], label_selectors={})
    assert cache.upsert("Deployment", deployment("a", 4)), "not listed yet: every event is news"
    cache.relist(server, ["ns"])
    cache.remember("Deployment", deployment("a", 7))  # what our apply got back
    assert cache.get(DEPLOY, "ns", "a")["metadata"]["resourceVersion"] == "7"  # type: ignore[index]
    assert not cache.upsert("Deployment", deployment("a", 7)), "the echo of our own apply"
    assert not cache.upsert("Deployment", deployment("a", 6)), "an old event"
    assert cache.upsert("Deployment", deployment("a", 8)), "someone else's change"
    assert cache.remove("Deployment", deployment("a", 9))
    assert not cache.remove("Deployment", deployment("a", 9)), "already gone"
    assert cache.upsert("Deployment", deployment("b", 10)), "a new object"


def test_a_relist_of_some_kinds_leaves_the_others_alone() -> None:
    server = Server([deployment("a", 5)])
    cache = WatchCache(server, [DEPLOY, KINDS["Service"]], label_selectors={})
    assert cache.relist(server, ["ns"], ["Deployment"]) == 1
    assert server.lists == ["Deployment"]
    assert cache.listed("Deployment")
    assert not cache.listed("Service")


# ---------------------------------------------------------------------------------------- child sets


class Kube:
    """The API server's side of the writes: refuses the kinds in `refuse` (dry run or not)."""

    def __init__(self, refuse: set[str] | None = None, live: list[dict[str, Any]] | None = None) -> None:
        self.refuse = refuse or set()
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in live or []}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.rv = 100

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind.kind, name))

    def list(self, kind: Kind, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        return [o for (k, _), o in self.objects.items() if k == kind.kind]

    def apply(self, obj: Mapping[str, Any], *, force: bool = True, dry_run: bool = False) -> dict[str, Any]:
        with self.lock:
            self.calls.append(("dry-run" if dry_run else "apply", obj["kind"]))
            if obj["kind"] in self.refuse:
                raise KubeApiError(422, f"{obj['kind']} refused")
            if dry_run:
                return dict(obj)
            self.rv += 1
            stored = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
            self.objects[(obj["kind"], obj["metadata"]["name"])] = stored
            return stored

    def delete(self, kind: Kind, namespace: str | None, name: str) -> None:
        with self.lock:
            self.calls.append(("delete", kind.kind))
            self.objects.pop((kind.kind, name), None)

    def merge_patch(self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("no hand-added keys here")


def child(kind: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": KINDS[kind].api_version,
        "kind": kind,
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": spec or {"v": 1},
    }


SET = [child("Deployment"), child("Service"), child("HTTPRoute"), child("ServiceMonitor")]


def test_a_new_set_is_applied_without_dry_runs_and_the_workload_last() -> None:
    kube = Kube()
    result = apply_children(kube, SET)  # type: ignore[arg-type]
    assert all(verb == "apply" for verb, _ in kube.calls), kube.calls
    assert kube.calls[-1] == ("apply", "Deployment")
    assert sorted(result.applied) == sorted(f"{o['kind']}/m" for o in SET)
    assert len(result.live) == len(SET)


def test_a_refused_child_of_a_new_set_leaves_nothing_behind_and_no_workload_is_ever_applied() -> None:
    kube = Kube(refuse={"HTTPRoute"})
    with pytest.raises(ChildRejected) as refused:
        apply_children(kube, SET)  # type: ignore[arg-type]
    assert refused.value.child == "HTTPRoute/m"
    assert "HTTPRoute refused" in str(refused.value)
    assert ("apply", "Deployment") not in kube.calls
    assert kube.objects == {}, "the Service and ServiceMonitor created meanwhile were deleted again"
    assert sorted(k for v, k in kube.calls if v == "delete") == ["Service", "ServiceMonitor"]


def test_a_refused_workload_rolls_back_the_rest_of_its_new_set() -> None:
    kube = Kube(refuse={"Deployment"})
    with pytest.raises(ChildRejected) as refused:
        apply_children(kube, SET)  # type: ignore[arg-type]
    assert refused.value.child == "Deployment/m"
    assert kube.objects == {}


def test_changes_to_existing_children_are_dry_run_first_and_a_refusal_applies_none() -> None:
    live = [_stamped(o) for o in SET]
    kube = Kube(refuse={"HTTPRoute"}, live=live)
    changed = [child(o["kind"], {"v": 2}) for o in SET]
    with pytest.raises(ChildRejected):
        apply_children(kube, changed)  # type: ignore[arg-type]
    assert {verb for verb, _ in kube.calls} == {"dry-run"}, kube.calls
    assert all(o["spec"] == {"v": 1} for o in kube.objects.values())


def test_one_changed_child_is_applied_at_once_and_an_unchanged_one_not_at_all() -> None:
    live = [_stamped(o) for o in SET if o["kind"] != "Deployment"]
    kube = Kube(live=live)
    result = apply_children(kube, SET)  # type: ignore[arg-type]
    assert kube.calls == [("apply", "Deployment")]
    assert result.applied == ["Deployment/m"]


def test_what_was_applied_is_remembered_by_the_cache_so_the_next_pass_writes_nothing() -> None:
    kube = Kube()
    kinds = [KINDS[o["kind"]] for o in SET]
    cache = WatchCache(kube, kinds, label_selectors={})  # type: ignore[arg-type]
    cache.relist(kube, ["ns"])  # type: ignore[arg-type]
    apply_children(kube, SET, cache)  # type: ignore[arg-type]
    held = cache.get(KINDS["Deployment"], "ns", "m")
    assert held is not None
    assert HASH_ANNOTATION in held["metadata"]["annotations"]
    assert not cache.upsert("Deployment", dict(held)), "its watch event is an echo"
    kube.calls.clear()
    assert apply_children(kube, SET, cache).applied == []  # type: ignore[arg-type]
    assert kube.calls == []


# -------------------------------------------------------------------------------------------- resync


async def test_a_resync_pass_lists_the_owners_only_and_every_fifth_every_cached_kind() -> None:
    from kubemoe.controller import runtime
    from kubemoe.controller.config import OperatorConfig

    models = [
        {"kind": "MoEModel", "metadata": {"name": f"m{i}", "namespace": "ns", "resourceVersion": "1"}}
        for i in range(3)
    ]
    server = Server([*models, deployment("m0", 2)])
    cache = WatchCache(server, runtime.CACHED_KINDS, label_selectors={})  # type: ignore[arg-type]
    rt = runtime.Runtime(
        cfg=OperatorConfig(namespaces=["ns"], standalone=True),
        identity="test",
        kube=server,  # type: ignore[arg-type]
        ctx=None,  # type: ignore[arg-type]
        pipelines=None,  # type: ignore[arg-type]
        cache=cache,
    )
    await runtime.resync_once(rt, full=True)
    assert sorted(server.lists) == sorted(k.kind for k in runtime.CACHED_KINDS)
    assert len(rt.queue) == 3
    server.lists.clear()
    await runtime.resync_once(rt, full=False)
    assert sorted(server.lists) == ["MoAPipeline", "MoEModel"], "children come from the watch alone"
    assert len(rt.queue) == 3, "every owner queued once"
    assert cache.get(KINDS["Deployment"], "ns", "m0") is not None


async def test_events_of_children_do_not_cut_a_backoff_short_but_a_change_of_the_object_does() -> None:
    queue = WorkQueue()
    queue.add(URGENT)
    assert await queue.get() == URGENT
    assert queue.done(URGENT, failed=True) == 1.0
    # The failed reconcile's own children come and go (a refused set rolled back): no retry before 1 s.
    queue.add(URGENT, urgent=True, keep_backoff=True)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), timeout=0.3)
    queue.add(URGENT)  # the spec changed
    assert await asyncio.wait_for(queue.get(), timeout=0.1) == URGENT
    queue.close()


def test_a_healthy_pod_starting_wakes_nobody_but_a_problem_coming_or_going_does() -> None:
    from kubemoe.controller.observe import pod_change_matters

    def pod(waiting: str | None = None, phase: str = "Running") -> dict[str, Any]:
        state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
        return {
            "metadata": {"name": "p"},
            "status": {"phase": phase, "containerStatuses": [{"name": "c", "state": state}]},
        }

    assert not pod_change_matters(None, pod(phase="Pending"))
    assert not pod_change_matters(pod(phase="Pending"), pod())
    assert not pod_change_matters(pod(), None), "a healthy pod deleted: its workload's status tells"
    assert pod_change_matters(pod(), pod("CrashLoopBackOff"))
    assert not pod_change_matters(pod("CrashLoopBackOff"), pod("CrashLoopBackOff"))
    assert pod_change_matters(pod("CrashLoopBackOff"), pod("ImagePullBackOff"))
    assert pod_change_matters(pod("CrashLoopBackOff"), pod())
    assert pod_change_matters(pod("ErrImagePull"), None)


async def test_resync_keys_wait_until_the_other_lanes_are_empty_and_move_up_on_a_real_trigger() -> None:
    queue = WorkQueue()
    resynced = [Key("MoEModel", "ns", f"r{i}") for i in range(3)]
    for key in resynced:
        queue.add(key, resync=True)
    queue.add(NORMAL[0])  # created after the resync pass
    queue.add(resynced[2], urgent=True)  # its Deployment changed
    assert await _drain(queue, 4) == [NORMAL[0], resynced[2], resynced[0], resynced[1]]
    assert len(queue) == 0


async def test_a_key_the_api_server_failed_backs_off_no_longer_than_the_transient_cap() -> None:
    assert queue_module.backoff_seconds(20, transient=True) == queue_module.TRANSIENT_MAX_BACKOFF_SECONDS
    assert queue_module.backoff_seconds(20) == queue_module.MAX_BACKOFF_SECONDS
    assert queue_module.backoff_seconds(3, transient=True) == 4.0, "exponential below the cap"
    queue = WorkQueue()
    for _ in range(12):
        queue.add(URGENT)
        await queue.get()
        queue.close()  # drop the scheduled retry: the next add queues it at once
        retry = queue.done(URGENT, failed=True, transient=True)
    assert retry == queue_module.TRANSIENT_MAX_BACKOFF_SECONDS
    queue.close()


def test_a_workload_status_rewrite_with_new_timestamps_alone_wakes_nobody() -> None:
    from kubemoe.controller.observe import workload_change_matters

    def deploy(ready: int = 0, available: str = "False", stamp: str = "t0", **meta: Any) -> dict[str, Any]:
        return {
            "kind": "Deployment",
            "metadata": {"name": "d", "generation": 1, "resourceVersion": stamp, **meta},
            "spec": {"replicas": 1},
            "status": {
                "observedGeneration": 1,
                "replicas": 1,
                "updatedReplicas": 1,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": [
                    {"type": "Available", "status": available, "lastUpdateTime": stamp},
                    {"type": "Progressing", "status": "True", "message": f"progressing at {stamp}"},
                ],
            },
        }

    assert workload_change_matters(None, deploy()), "a workload not seen before"
    assert workload_change_matters(deploy(), None), "a deleted workload is restored"
    assert not workload_change_matters(deploy(stamp="t0"), deploy(stamp="t1"))
    assert workload_change_matters(deploy(), deploy(ready=1))
    assert workload_change_matters(deploy(ready=1), deploy(ready=1, available="True"))
    assert workload_change_matters(deploy(), deploy(labels={"x": "y"})), "metadata drift is re-applied"
    edited = deploy()
    edited["spec"]["replicas"] = 3
    assert workload_change_matters(deploy(), edited), "spec drift is re-applied"


def test_kopf_builds_no_diff_base_and_the_registry_refuses_handlers_that_would_need_one() -> None:
    import kopf

    from kubemoe.controller.config import EventsOnlyDiffBase, OperatorConfig, operator_settings
    from kubemoe.controller.wiring import check_events_only

    storage = operator_settings(OperatorConfig()).persistence.diffbase_storage
    assert isinstance(storage, EventsOnlyDiffBase)
    body = kopf.Body(
        {"metadata": {"name": "m", "annotations": {"kubemoe.io/last-handled-configuration": "{}"}}}
    )
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None

    registry = kopf.OperatorRegistry()
    kopf.on.event("kubemoe.io", "v1alpha1", "moemodels", registry=registry)(lambda **_: None)
    check_events_only(registry)  # watching only: fine
    kopf.on.update("kubemoe.io", "v1alpha1", "moemodels", registry=registry, id="upd")(lambda **_: None)
    with pytest.raises(RuntimeError, match=r"only kopf\.on\.event handlers"):
        check_events_only(registry)


def test_the_plan_of_a_spec_is_searched_once_and_its_error_is_raised_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubemoe.api.moemodel import MoEModelSpec
    from kubemoe.catalog.loader import load_catalog
    from kubemoe.controller import moemodel
    from kubemoe.planner import PlannerSettings, PlanningError

    calls: list[str] = []
    real = moemodel.plan_placement

    def counted(spec: MoEModelSpec, *args: Any) -> Any:
        calls.append(spec.model.name)
        return real(spec, *args)

    monkeypatch.setattr(moemodel, "plan_placement", counted)
    ctx = moemodel.ReconcileContext(kube=None, catalog=load_catalog([]), planner=PlannerSettings())  # type: ignore[arg-type]
    good = MoEModelSpec.model_validate(
        {"model": {"name": "allenai/OLMoE-1B-7B-0924"}, "placement": {"instanceTypes": ["p4de.24xlarge"]}}
    )
    assert ctx.plan_for(good) is ctx.plan_for(good)
    bad = MoEModelSpec.model_validate(
        {"model": {"name": "allenai/OLMoE-1B-7B-0924"}, "placement": {"instanceTypes": ["m7i.8xlarge"]}}
    )
    for _ in range(2):
        with pytest.raises(PlanningError):
            ctx.plan_for(bad)
    assert calls == ["allenai/OLMoE-1B-7B-0924"] * 2, "one search per distinct spec"
    edited = good.model_copy(update={"replicas": 3})
    ctx.plan_for(edited)
    assert len(calls) == 3, "a changed spec is planned afresh"
