"""The operator's pure parts: the work queue, the drift comparison, and condition transitions."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from kubemoe.api.common import Condition
from kubemoe.api.conditions import ConditionType, Reason
from kubemoe.api.moemodel import MoEModelStatus
from kubemoe.controller import conditions as cond
from kubemoe.controller.frame import dump_status
from kubemoe.controller.queue import Key, WorkQueue, backoff_seconds
from kubemoe.controller.sync import HASH_ANNOTATION, _stamped, contains, desired_hash

KEY = Key("MoEModel", "ns", "m")
READY, DEGRADED = ConditionType.READY, ConditionType.DEGRADED


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
    conditions: list[Condition] = []
    cond.set_condition(
        conditions, READY, False, reason=Reason.WAITING_FOR_PODS, message="0 of 1", generation=1
    )
    assert conditions[0].last_transition_time is not None
    old = datetime(2000, 1, 1, tzinfo=UTC)
    conditions[0] = conditions[0].model_copy(update={"last_transition_time": old})
    cond.set_condition(
        conditions, READY, False, reason=Reason.WAITING_FOR_PODS, message="0 of 1", generation=2
    )
    assert conditions[0].last_transition_time == old
    assert conditions[0].observed_generation == 2
    cond.set_condition(conditions, READY, True, reason=Reason.READY, message="1 of 1", generation=2)
    assert conditions[0].last_transition_time not in (old, None)
    assert cond.is_true(conditions, READY)
    long = "x" * 5000
    cond.set_condition(conditions, DEGRADED, True, reason=Reason.CRASH_LOOP, message=long, generation=2)
    degraded = cond.condition(conditions, DEGRADED)
    assert degraded is not None
    assert len(degraded.message) == cond.MAX_MESSAGE


def test_a_status_survives_the_round_trip_through_json_unchanged() -> None:
    """The frame compares the status it read with the one it built; a read-back status must compare
    equal to what was written, or every resync would write (timestamps in the API server's format)."""
    status = MoEModelStatus()
    cond.set_condition(status.conditions, READY, True, reason=Reason.READY, message="ok", generation=3)
    status.observed_generation = 3
    written = dump_status(status)
    assert written["conditions"][0]["lastTransitionTime"].endswith("Z")
    assert written["conditions"][0]["type"] == "Ready"
    read_back = json.loads(json.dumps(written))
    assert dump_status(MoEModelStatus.model_validate(read_back)) == written
    # A misspelt condition type is refused by the model (and by the CRD's enum), not silently pruned.
    with pytest.raises(ValidationError):
        Condition.model_validate({"type": "Readdy", "status": "True", "reason": "Ready"})


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


def test_only_the_keys_beyond_an_exact_map_are_removed() -> None:
    from kubemoe.controller.sync import extra_keys

    desired = {"kind": "Service", "spec": {"selector": {"a": "1"}}}
    assert extra_keys({"spec": {"selector": {"a": "1"}}}, desired) == {}
    assert extra_keys({"spec": {"selector": {"a": "1", "b": "2"}}}, desired) == {
        "spec": {"selector": {"b": None}}
    }
    # Other kinds, and labels, are left to whoever added them.
    assert extra_keys({"spec": {"selector": {"a": "1", "b": "2"}}}, {**desired, "kind": "Deployment"}) == {}
