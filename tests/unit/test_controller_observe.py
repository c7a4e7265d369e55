"""The pod classifier names each way a pod fails with one stable reason, and the settings table reads the
environment with flags on top."""

from __future__ import annotations

from typing import Any

import pytest

from kubemoe.api.conditions import Reason
from kubemoe.controller.config import ENV, OperatorConfig
from kubemoe.controller.kube import Kind
from kubemoe.controller.observe import LWS_GROUP_LABEL, classify_pods, observe_workload, pod_problem


def pod(
    name: str, *, phase: str = "Pending", labels: dict[str, str] | None = None, **status: Any
) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}}, "status": {"phase": phase, **status}}


def waiting(reason: str, message: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "containerStatuses": [
            {"name": "server", "state": {"waiting": {"reason": reason, "message": message}}, **extra}
        ]
    }


CASES = [
    (
        pod(
            "a",
            conditions=[
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
            ],
        ),
        Reason.UNSCHEDULABLE,
        "0/3 nodes",
    ),
    (
        pod("b", **waiting("ImagePullBackOff", "Back-off pulling image x")),
        Reason.IMAGE_PULL_FAILED,
        "Back-off pulling",
    ),
    (pod("c", **waiting("ErrImagePull", "not found")), Reason.IMAGE_PULL_FAILED, "not found"),
    (
        pod(
            "d",
            phase="Running",
            **waiting(
                "CrashLoopBackOff",
                lastState={"terminated": {"reason": "Error", "exitCode": 3}},
                restartCount=4,
            ),
        ),
        Reason.CRASH_LOOP,
        "exit code 3",
    ),
    (
        pod(
            "e",
            phase="Running",
            **waiting("CrashLoopBackOff", lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}}),
        ),
        Reason.OOM_KILLED,
        "limits.memory",
    ),
    (
        pod("f", **waiting("CreateContainerConfigError", 'secret "hf" not found')),
        Reason.CONTAINER_CONFIG_ERROR,
        "secret",
    ),
    (pod("g", phase="Failed", reason="Evicted", message="low on memory"), Reason.POD_FAILED, "Evicted"),
]


@pytest.mark.parametrize(
    ("obj", "reason", "fragment"), CASES, ids=[c[1].value + "-" + c[0]["metadata"]["name"] for c in CASES]
)
def test_each_pod_failure_gets_its_reason_and_a_message_that_says_it(
    obj: dict[str, Any], reason: Reason, fragment: str
) -> None:
    problem = pod_problem(obj)
    assert problem is not None
    assert problem.reason == reason
    assert fragment in problem.message
    assert obj["metadata"]["name"] in problem.message


def test_a_running_pod_has_no_problem() -> None:
    ok = pod(
        "ok", phase="Running", containerStatuses=[{"name": "server", "state": {"running": {}}, "ready": True}]
    )
    assert pod_problem(ok) is None
    assert classify_pods([ok]) == []


def test_problems_are_grouped_by_reason_most_urgent_first_and_lws_groups_are_named() -> None:
    lws = {LWS_GROUP_LABEL: "1"}
    pods = [
        pod(
            "m-1",
            labels=lws,
            conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
        ),
        pod("m-1-1", labels=lws, **waiting("ImagePullBackOff")),
        pod("m-2", labels={LWS_GROUP_LABEL: "2"}, **waiting("ImagePullBackOff")),
    ]
    problems = classify_pods(pods, groups=True)
    assert [p.reason for p in problems] == [
        Reason.IMAGE_PULL_FAILED,
        Reason.UNSCHEDULABLE,
        Reason.GROUP_FAILED,
    ]
    assert "(and 1 more pod(s))" in problems[0].message
    assert "group(s) 1, 2" in problems[2].message
    assert Reason.GROUP_FAILED not in [p.reason for p in classify_pods(pods, groups=False)]


class Pods:
    """A reader holding pods only: what `observe_workload` lists beside the workload it is handed."""

    def __init__(self, *pods: dict[str, Any]) -> None:
        self.pods = list(pods)

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        return None

    def list(self, kind: Kind, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        assert kind.kind == "Pod"
        return self.pods


def _workload(kind: str, replicas: int, ready: int) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"name": "m", "generation": 1},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas,
            "availableReplicas": ready,
            "conditions": [{"type": "Available", "status": "True"}],
        },
    }


def test_a_pod_with_a_problem_is_not_ready_before_its_controller_recounts() -> None:
    """Seen in CI: the pod watch brought an OOM-killed pod while the Deployment still counted it ready, and
    the status said Ready=True beside Degraded=OOMKilled."""
    oom = pod(
        "m-a",
        phase="Running",
        **waiting("CrashLoopBackOff", lastState={"terminated": {"reason": "OOMKilled"}}),
    )
    healthy = pod("m-b", phase="Running", containerStatuses=[{"name": "server", "state": {"running": {}}}])
    state = observe_workload(Pods(oom), _workload("Deployment", 1, 1), namespace="n", selector="x=m")
    assert (state.ready_replicas, state.ready, state.available) == (0, False, False)
    assert [p.reason for p in state.problems] == [Reason.OOM_KILLED]
    state = observe_workload(Pods(oom, healthy), _workload("Deployment", 2, 2), namespace="n", selector="x=m")
    assert (state.ready_replicas, state.ready, state.available) == (1, False, True)
    # Pods that failed or are going are out of the Deployment's count already: nothing more comes off.
    evicted = pod("m-c", phase="Failed", reason="Evicted")
    going = {
        **oom,
        "metadata": {**oom["metadata"], "name": "m-d", "deletionTimestamp": "2026-12-03T00:00:00Z"},
    }
    state = observe_workload(
        Pods(healthy, evicted, going), _workload("Deployment", 1, 1), namespace="n", selector="x=m"
    )
    assert (state.ready_replicas, state.ready) == (1, True)
    assert state.problems  # ... and still reported


def test_a_lws_group_with_a_problem_pod_is_one_replica_not_ready() -> None:
    group1 = {LWS_GROUP_LABEL: "1"}
    crash = waiting("CrashLoopBackOff", lastState={"terminated": {"reason": "Error", "exitCode": 1}})
    pods = [pod("m-1", labels=group1, **crash), pod("m-1-1", labels=group1, **crash)]
    state = observe_workload(Pods(*pods), _workload("LeaderWorkerSet", 2, 2), namespace="n", selector="x=m")
    assert (state.ready_replicas, state.ready) == (1, False)


def test_settings_come_from_the_environment_and_flags_win() -> None:
    env = {ENV["resync_seconds"]: "7", ENV["lease_seconds"]: "6"}
    cfg = OperatorConfig.from_env(env)
    assert cfg.resync_seconds == 7.0
    assert (cfg.lease_seconds, cfg.renew_deadline_seconds, cfg.retry_seconds) == (6.0, 4.0, 1.2)
    assert OperatorConfig.from_env(env, resync_seconds=2.0, lease_seconds=None).resync_seconds == 2.0
    assert OperatorConfig.from_env({}).lease_seconds == 15.0
    with pytest.raises(ValueError, match="KUBEMOE_RESYNC_SECONDS='soon'"):
        OperatorConfig.from_env({ENV["resync_seconds"]: "soon"})
