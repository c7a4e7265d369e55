"""LeaderElector against an in-memory Lease store with the API server's optimistic concurrency (a PUT
with a stale resourceVersion is a 409). The e2e test (tests/e2e/test_operator_runtime.py) runs two real
operators on a real Lease; these tests pin down the races it can only hit by chance."""

from __future__ import annotations

import copy
import threading
from typing import Any, cast

import pytest

from kubemoe.controller.kube import Conflict, Kind, KubeClient
from kubemoe.controller.leader import LeaderElector


class LeaseStore:
    """get/create/replace of one Lease; `before_replace` runs inside replace, before the version check."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.version = 0
        self.before_replace: Any = None
        self.lock = threading.Lock()

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self.lock:
            return copy.deepcopy(self.obj)

    def create(self, kind: Kind, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.obj is not None:
                raise Conflict(409, "already exists")
            return self._store(obj)

    def replace(self, kind: Kind, namespace: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        hook, self.before_replace = self.before_replace, None
        if hook is not None:
            hook()
        with self.lock:
            assert self.obj is not None
            if obj["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]:
                raise Conflict(409, "the object has been modified")
            return self._store(obj)

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.obj = copy.deepcopy(obj)
        self.obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.obj)

    def holder(self) -> str:
        assert self.obj is not None
        return str(self.obj["spec"].get("holderIdentity") or "")


def elector(store: LeaseStore, identity: str) -> LeaderElector:
    return LeaderElector(
        cast(KubeClient, store),
        "ns",
        "kubemoe",
        identity,
        lease_seconds=3,
        renew_deadline_seconds=2,
        retry_seconds=0.5,
    )


def test_the_first_candidate_takes_the_lease_and_the_second_stands_by() -> None:
    store = LeaseStore()
    a, b = elector(store, "a"), elector(store, "b")
    assert a.step() is True
    assert b.step() is False
    assert store.holder() == "a"
    assert a.step() is True  # renews
    assert store.holder() == "a"


def test_release_empties_the_holder_and_no_later_step_takes_the_lease_back() -> None:
    store = LeaseStore()
    a = elector(store, "a")
    assert a.step()
    a.release()
    assert store.holder() == ""
    assert a.leading is False
    assert a.step() is False  # the election is over for this process
    assert store.holder() == ""
    b = elector(store, "b")
    assert b.step() is True  # a successor takes over at once, not after the lease duration


def test_release_retries_when_a_write_in_between_makes_its_put_conflict() -> None:
    # What CI saw: a renewal landed between the release's read and its PUT, the PUT got 409 and the
    # Lease stayed in the leader's name. Release now re-reads and tries again.
    store = LeaseStore()
    a = elector(store, "a")
    assert a.step()

    def renewal_in_between() -> None:
        assert store.obj is not None
        store._store(store.obj)  # bumps resourceVersion, holder unchanged

    store.before_replace = renewal_in_between
    a.release()
    assert store.holder() == ""


def test_a_step_in_flight_finishes_before_release_and_does_not_renew_after_it() -> None:
    store = LeaseStore()
    a = elector(store, "a")
    assert a.step()
    in_put, go_on = threading.Event(), threading.Event()

    def stall() -> None:  # the renewal's PUT is on the wire when release is called
        in_put.set()
        assert go_on.wait(5)

    store.before_replace = stall
    stepping = threading.Thread(target=a.step)
    stepping.start()
    assert in_put.wait(5)
    releasing = threading.Thread(target=a.release)
    releasing.start()
    releasing.join(0.2)
    assert releasing.is_alive(), "release must wait for the step in flight"
    go_on.set()
    stepping.join(5)
    releasing.join(5)
    assert store.holder() == ""
    assert a.leading is False
    assert a.step() is False
    assert store.holder() == ""


def test_release_leaves_a_lease_that_a_successor_already_took() -> None:
    store = LeaseStore()
    a = elector(store, "a")
    assert a.step()
    assert store.obj is not None
    store.obj["spec"]["holderIdentity"] = "b"
    a.release()
    assert store.holder() == "b"


def test_release_of_a_follower_writes_nothing() -> None:
    store = LeaseStore()
    a, b = elector(store, "a"), elector(store, "b")
    assert a.step()
    assert not b.step()
    version = store.version
    b.release()
    assert store.version == version
    assert store.holder() == "a"


def test_timings_must_nest() -> None:
    with pytest.raises(ValueError, match="retry < renew deadline < lease duration"):
        LeaderElector(
            cast(KubeClient, LeaseStore()), "ns", "l", "a", lease_seconds=3, renew_deadline_seconds=4
        )


def test_lease_transitions_count_every_take_over_a_released_lease_included() -> None:
    """client-go's count: 0 on creation, +1 for each new holder, whether the old one let go or expired."""
    store = LeaseStore()
    a, b = elector(store, "a"), elector(store, "b")
    assert a.step() is True
    assert store.obj is not None
    assert store.obj["spec"]["leaseTransitions"] == 0
    assert a.step() is True  # a renewal is no transition
    assert store.obj["spec"]["leaseTransitions"] == 0
    a.release()
    assert b.step() is True
    assert store.holder() == "b"
    assert store.obj["spec"]["leaseTransitions"] == 1
