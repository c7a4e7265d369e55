"""The operator's pure parts: the work queue, the drift comparison, and condition transitions."""

from __future__ import annotations

import asyncio

import pytest

from kubemoe.controller import conditions as cond
from kubemoe.controller.queue import Key, WorkQueue, backoff_seconds
from kubemoe.controller.sync import HASH_ANNOTATION, _stamped, contains, desired_hash

KEY = Key("MoEModel", "ns", "m")


async def test_a_key_is_held_once_however_often_it_is_added() -> None:
    queue = WorkQueue()
    for _ in range(3):
        queue.add(KEY)
    assert await queue.get() == KEY
    queue.done(KEY, failed=False)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), timeout=0.05)


async def test_a_key_changed_while_processed_runs_again_after() -> None:
    queue = WorkQueue()
    queue.add(KEY)
    assert await queue.get() == KEY
    queue.add(KEY)  # an event arrives mid-reconcile
    queue.done(KEY, failed=False)
    assert await asyncio.wait_for(queue.get(), timeout=1) == KEY


async def test_failures_back_off_exponentially_and_resync_does_not_cut_the_wait() -> None:
    queue = WorkQueue()
    queue.add(KEY)
    await queue.get()
    assert queue.done(KEY, failed=True) == 1.0
    queue.add(KEY, resync=True)  # a resync while backing off leaves it alone
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), timeout=0.3)
    assert await asyncio.wait_for(queue.get(), timeout=2) == KEY
    assert queue.done(KEY, failed=True) == 2.0
    queue.close()
    assert [backoff_seconds(n) for n in (1, 2, 3, 10, 20)] == [1, 2, 4, 300, 300]


def test_live_objects_may_hold_more_than_we_applied_but_not_less() -> None:
    desired = {"spec": {"replicas": 2, "ports": [{"port": 80}], "enabled": True}}
    assert contains(
        {"spec": {"replicas": 2, "ports": [{"port": 80, "protocol": "TCP"}], "enabled": True}}, desired
    )
    assert not contains({"spec": {"replicas": 3, "ports": [{"port": 80}], "enabled": True}}, desired)
    assert not contains({"spec": {"replicas": 2, "ports": [], "enabled": True}}, desired), "a removed item"
    assert not contains({"spec": {"replicas": 2, "ports": [{"port": 80}], "enabled": 1}}, desired), (
        "bool vs int"
    )
    assert contains({"a": 1.0}, {"a": 1})


def test_the_applied_hash_changes_when_a_field_is_removed() -> None:
    with_selector = {"metadata": {"name": "x"}, "spec": {"nodeSelector": {"a": "b", "c": "d"}}}
    without = {"metadata": {"name": "x"}, "spec": {"nodeSelector": {"a": "b"}}}
    live = _stamped(with_selector)
    assert contains(live, _stamped(with_selector))
    assert not contains(live, _stamped(without)), "the hash annotation differs, so the removal is applied"
    assert live["metadata"]["annotations"][HASH_ANNOTATION] == desired_hash(with_selector)


def test_transition_time_moves_only_when_the_status_flips() -> None:
    conditions: list[dict[str, object]] = []
    cond.set_condition(conditions, cond.READY, False, reason="WaitingForPods", message="0 of 1", generation=1)
    first = conditions[0]["lastTransitionTime"]
    conditions[0]["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    cond.set_condition(conditions, cond.READY, False, reason="WaitingForPods", message="0 of 1", generation=2)
    assert conditions[0]["lastTransitionTime"] == "2000-01-01T00:00:00Z"
    assert conditions[0]["observedGeneration"] == 2
    cond.set_condition(conditions, cond.READY, True, reason="Ready", message="1 of 1", generation=2)
    assert conditions[0]["lastTransitionTime"] not in ("2000-01-01T00:00:00Z", None)
    assert first
    assert cond.is_true(conditions, cond.READY)
    long = "x" * 5000
    cond.set_condition(conditions, cond.DEGRADED, True, reason="R", message=long, generation=2)
    assert len(str(cond.condition(conditions, cond.DEGRADED)["message"])) == cond.MAX_MESSAGE  # type: ignore[index]


def test_json_logs_are_one_parseable_object_per_record() -> None:
    import json
    import logging

    from kubemoe.controller.logs import JsonFormatter

    record = logging.LogRecord(
        "kubemoe.operator", logging.WARNING, __file__, 1, "reconcile %s failed", ("x",), None
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "kubemoe.operator"
    assert entry["message"] == "reconcile x failed"
