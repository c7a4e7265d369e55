"""RouteAccepted from an HTTPRoute's status.parents (controller.route), and the plan-cost gauges
(controller.metrics) as the MoEModel render step sets and clears them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemoe.api.common import Condition, ParentRef, Routing
from kubemoe.api.conditions import Reason
from kubemoe.api.moemodel import MoEModel, MoEModelStatus
from kubemoe.catalog.loader import load_catalog
from kubemoe.controller import metrics
from kubemoe.controller.frame import Stop
from kubemoe.controller.kube import Kind
from kubemoe.controller.moemodel import MoEModelHooks, ReconcileContext
from kubemoe.controller.route import route_state, set_route_condition
from kubemoe.planner.settings import PlannerSettings

REPO = Path(__file__).resolve().parents[2]
TRAEFIK = "traefik.io/gateway-controller"
GW = ParentRef(name="inference-gateway")


def cond(type_: str, status: str, reason: str = "", message: str = "", gen: int = 2) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "observedGeneration": gen}


def route(*parents: dict[str, Any], generation: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"name": "m", "namespace": "ns", "generation": generation},
        "status": {"parents": list(parents)},
    }


def parent(*conditions: dict[str, Any], name: str = "inference-gateway", **ref: str) -> dict[str, Any]:
    return {
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name, **ref},
        "controllerName": TRAEFIK,
        "conditions": list(conditions),
    }


ACCEPTED = cond("Accepted", "True", "Accepted")
RESOLVED = cond("ResolvedRefs", "True", "ResolvedRefs")


def test_accepted_with_resolved_refs_is_true() -> None:
    state = route_state(route(parent(ACCEPTED, RESOLVED)), [GW], namespace="ns")
    assert (state.accepted, state.reason) == (True, Reason.ROUTE_ACCEPTED)
    assert "Gateway ns/inference-gateway" in state.message
    assert TRAEFIK in state.message


def test_a_refusal_carries_the_gateways_reason_and_message() -> None:
    refused = cond("Accepted", "False", "NotAllowedByListeners", "no listener allows routes from ns")
    state = route_state(route(parent(refused, RESOLVED)), [GW], namespace="ns")
    assert (state.accepted, state.reason) == (False, Reason.ROUTE_NOT_ACCEPTED)
    assert "Accepted=False NotAllowedByListeners: no listener allows routes from ns" in state.message


def test_unresolved_backends_are_false_with_the_gateways_reason() -> None:
    missing = cond("ResolvedRefs", "False", "BackendNotFound", "service ns/m not found")
    state = route_state(route(parent(ACCEPTED, missing)), [GW], namespace="ns")
    assert (state.accepted, state.reason) == (False, Reason.ROUTE_REFS_UNRESOLVED)
    assert "BackendNotFound: service ns/m not found" in state.message


@pytest.mark.parametrize(
    ("live", "says"),
    [
        (route(), "no Gateway controller has written a status for it yet"),
        (route(parent(ACCEPTED, RESOLVED, name="other-gateway")), "no Gateway controller has written"),
        (route(parent(ACCEPTED, RESOLVED, sectionName="https")), "no Gateway controller has written"),
        (route(parent(ACCEPTED, RESOLVED), generation=3), "has not yet reported generation 3"),
        (route(parent(RESOLVED)), "has not yet reported generation 2"),
        (None, "has not been created yet"),
    ],
    ids=["no-status", "other-parent", "other-listener", "stale-generation", "no-accepted", "no-route"],
)
def test_no_status_for_our_parent_is_unknown_and_says_so(live: dict[str, Any] | None, says: str) -> None:
    state = route_state(live, [GW], namespace="ns")
    assert (state.accepted, state.reason) == (None, Reason.ROUTE_STATUS_PENDING)
    assert says in state.message


def test_every_parent_must_accept_and_a_refusal_beats_a_pending_one() -> None:
    other = ParentRef(name="edge", namespace="infra")
    both = [GW, other]
    ok = parent(ACCEPTED, RESOLVED)
    assert route_state(route(ok), both, namespace="ns").accepted is None
    edge_ok = parent(ACCEPTED, RESOLVED, name="edge", namespace="infra")
    assert route_state(route(ok, edge_ok), both, namespace="ns").accepted is True
    edge_no = parent(cond("Accepted", "False", "NoMatchingParent"), name="edge", namespace="infra")
    assert route_state(route(edge_no), both, namespace="ns").reason == Reason.ROUTE_NOT_ACCEPTED


def test_the_condition_follows_the_spec_and_the_crds() -> None:
    routing = Routing(parent_refs=[GW])
    conditions: list[Condition] = []
    live = {("HTTPRoute", "m"): route(parent(ACCEPTED, RESOLVED))}
    kwargs: dict[str, Any] = {"route_name": "m", "namespace": "ns", "generation": 4}
    set_route_condition(conditions, routing, live, gateway_api=True, **kwargs)
    (c,) = conditions
    assert (c.type, c.status, c.reason, c.observed_generation) == (
        "RouteAccepted",
        "True",
        "RouteAccepted",
        4,
    )
    set_route_condition(conditions, routing, {}, gateway_api=False, **kwargs)
    assert (conditions[0].status, conditions[0].reason) == ("False", Reason.OPTIONAL_API_MISSING.value)
    set_route_condition(conditions, None, live, gateway_api=True, **kwargs)
    assert conditions == []  # no route asked for: no RouteAccepted


# ------------------------------------------------------------------------------------------ plan cost


def sample(name: str) -> dict[str, Any]:
    doc = next(d for d in yaml.safe_load_all((REPO / "manifests" / "samples" / name).read_text()) if d)
    doc["metadata"].setdefault("namespace", "default")
    doc["metadata"]["uid"] = "u-1"
    return dict(doc)


class _Kube:
    """Only what the render step asks of the API client: whether an API exists, and posting an Event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def has_api(self, kind: Kind) -> bool:
        return True

    def create(self, kind: Kind, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.events.append(obj)
        return obj


def series(name: str, model: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(
        name, {"model_namespace": "default", "moemodel": model, "model_name": model}
    )


def hooks() -> MoEModelHooks:
    ctx = ReconcileContext(kube=_Kube(), catalog=load_catalog(environ={}), planner=PlannerSettings())  # type: ignore[arg-type]
    return MoEModelHooks(ctx)


def test_render_exports_the_plans_cost_and_a_failed_plan_removes_it() -> None:
    obj = sample("mixtral-8x7b-p4de.yaml")
    name = obj["metadata"]["name"]
    served = (obj["spec"]["model"].get("servedModelName")) or name
    h, status = hooks(), MoEModelStatus()
    h.render(obj, MoEModel.model_validate(obj), status, 1)
    assert status.plan is not None
    assert status.plan.cost_per_hour is not None
    labels = {"model_namespace": "default", "moemodel": name, "model_name": served}
    per_hour = metrics.REGISTRY.get_sample_value("kubemoe_model_plan_replica_cost_dollars_per_hour", labels)
    per_m = metrics.REGISTRY.get_sample_value(
        "kubemoe_model_plan_cost_dollars_per_million_output_tokens", labels
    )
    assert per_hour == status.plan.cost_per_hour
    assert per_m == status.plan.cost_per_million_tokens
    impossible = sample("mixtral-8x7b-p4de.yaml")
    impossible["spec"].setdefault("placement", {})["instanceTypes"] = ["no-such.instance"]
    with pytest.raises(Stop):
        h.render(impossible, MoEModel.model_validate(impossible), MoEModelStatus(), 2)
    assert (
        metrics.REGISTRY.get_sample_value("kubemoe_model_plan_replica_cost_dollars_per_hour", labels) is None
    )


def test_a_deleted_model_leaves_no_cost_series() -> None:
    metrics.set_plan_cost("default", "gone", served_name="g", per_hour=3.5, per_million_tokens=None)
    labels = {"model_namespace": "default", "moemodel": "gone", "model_name": "g"}
    assert (
        metrics.REGISTRY.get_sample_value("kubemoe_model_plan_replica_cost_dollars_per_hour", labels) == 3.5
    )
    assert (
        metrics.REGISTRY.get_sample_value("kubemoe_model_plan_cost_dollars_per_million_output_tokens", labels)
        is None
    )
    metrics.set_managed(("MoEModel", "default", "gone"), None)
    assert (
        metrics.REGISTRY.get_sample_value("kubemoe_model_plan_replica_cost_dollars_per_hour", labels) is None
    )


def test_a_renamed_served_model_moves_the_series() -> None:
    metrics.set_plan_cost("default", "r", served_name="old", per_hour=1.0)
    metrics.set_plan_cost("default", "r", served_name="new", per_hour=2.0)
    get = metrics.REGISTRY.get_sample_value
    name = "kubemoe_model_plan_replica_cost_dollars_per_hour"
    assert get(name, {"model_namespace": "default", "moemodel": "r", "model_name": "old"}) is None
    assert get(name, {"model_namespace": "default", "moemodel": "r", "model_name": "new"}) == 2.0
