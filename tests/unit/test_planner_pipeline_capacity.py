"""MoAPipeline capacity from the models' plans: each plan's per-replica requests/s is the service rate of
its `moeModelRef`, so `serviceRates` is needed only for external endpoints (and an explicit one wins)."""

from __future__ import annotations

from typing import Any

import pytest

from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import load_catalog
from kubemoe.planner import plan_placement
from kubemoe.planner.pipeline import plan_pipeline


def pipeline(capacity: dict[str, Any]) -> MoAPipeline:
    return MoAPipeline.model_validate(
        {
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {
                "layers": [
                    {
                        "agents": [
                            {"name": "a", "moeModelRef": {"name": "qwen"}},
                            {"name": "b", "moeModelRef": {"name": "qwen"}},
                        ]
                    }
                ],
                "aggregator": {"moeModelRef": {"name": "qwen"}},
                "capacity": capacity,
            },
        }
    )


@pytest.fixture(scope="module")
def rate() -> float:
    spec = MoEModelSpec.model_validate({"model": {"name": "Qwen/Qwen3-30B-A3B"}})
    return plan_placement(spec, load_catalog()).requests_per_second


def plan(p: MoAPipeline, rates: dict[str, float] | None) -> Any:
    return plan_pipeline(
        p,
        endpoints={"moe:qwen": ("http://qwen", "qwen")},
        ready={},
        replicas={"moe:qwen": 2},
        planned_rates=rates,
    )


def test_the_plans_capacity_is_the_service_rate_of_a_moe_model_ref(rate: float) -> None:
    # Three calls per pipeline request (two proposers, the aggregator) on 2 replicas of `rate` each.
    limit = 2 * rate / 3
    ok = plan(pipeline({"targetRequestsPerSecond": limit * 0.9}), {"moe:qwen": rate})
    assert ok.capacity_ok is True
    assert ok.capacity.max_stable_requests_per_second == pytest.approx(limit, rel=1e-3)
    too_much = plan(pipeline({"targetRequestsPerSecond": limit * 1.1}), {"moe:qwen": rate})
    assert too_much.capacity_ok is False


def test_without_a_plan_or_service_rate_the_check_cannot_tell(rate: float) -> None:
    assert plan(pipeline({"targetRequestsPerSecond": 1}), None).capacity_ok is None


def test_an_explicit_service_rate_wins_over_the_plan(rate: float) -> None:
    explicit = {
        "targetRequestsPerSecond": 1,
        "serviceRates": [{"moeModelRef": {"name": "qwen"}, "requestsPerSecond": 0.9}],
    }
    result = plan(pipeline(explicit), {"moe:qwen": rate})
    assert result.capacity.max_stable_requests_per_second == pytest.approx(2 * 0.9 / 3, rel=1e-3)
