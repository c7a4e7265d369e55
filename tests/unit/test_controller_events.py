"""One Event per reconcile that changed something: Planned (why, then what was applied) when the plan
changed, else Synced; none when nothing changed."""

from __future__ import annotations

from typing import Any

import pytest

from kubemoe.controller import events
from kubemoe.controller.kube import Kind


class Recorder:
    """Stands in for the KubeClient: keeps the Events it is asked to create."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def create(self, kind: Kind, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        self.created.append(obj)
        return obj


OWNER = {
    "apiVersion": "kubemoe.io/v1alpha1",
    "kind": "MoEModel",
    "metadata": {"name": "m", "namespace": "ns"},
}


def announced(**kwargs: Any) -> list[tuple[str, str]]:
    kube = Recorder()
    events.announce_sync(kube, OWNER, **kwargs)  # type: ignore[arg-type]
    events._POSTER.submit(lambda: None).result(timeout=10)  # the poster is one thread: all before are done
    return [(e["reason"], e["message"]) for e in kube.created]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"applied": ["Deployment/m", "Service/m"], "pruned": [], "planned": "TP 8 on p4de.24xlarge"},
            [("Planned", "TP 8 on p4de.24xlarge; applied Deployment/m, applied Service/m")],
        ),
        (
            {"applied": [], "pruned": [], "planned": "TP 4 on p5.48xlarge"},
            [("Planned", "TP 4 on p5.48xlarge")],
        ),
        (
            {"applied": ["Deployment/m"], "pruned": ["HTTPRoute/m"]},
            [("Synced", "applied Deployment/m, deleted HTTPRoute/m")],
        ),
        ({"applied": [], "pruned": []}, []),
    ],
    ids=["first-reconcile", "plan-only", "sync-only", "nothing"],
)
def test_a_reconcile_says_what_it_changed_in_at_most_one_event(
    kwargs: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert announced(**kwargs) == expected
