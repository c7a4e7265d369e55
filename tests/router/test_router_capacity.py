"""Capacity math: both stability formulas reproduced on worked numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubemoe.router.capacity import (
    ModelRate,
    compute_centralised_capacity,
    compute_decentralised_capacity,
    count_slots,
)


def test_count_slots_counts_every_agent_slot_and_the_aggregator() -> None:
    # Layer 1: llama, qwen, llama; layer 2: qwen; aggregator: llama.
    # llama: 2 (layer 1) + 1 (aggregator) = 3 calls per request; qwen: 1 + 1 = 2.
    slots = count_slots([["moe:llama", "moe:qwen", "moe:llama"], ["moe:qwen"]], "moe:llama")
    assert slots == {"moe:llama": 3, "moe:qwen": 2}


def test_centralised_capacity_is_min_of_r_mu_over_n_with_the_bottleneck_named() -> None:
    # llama: n=3 slots, r=2 replicas, mu=1.5 calls/s -> r*mu = 3.0 calls/s -> 3.0 / 3 = 1.0 request/s.
    # qwen:  n=2 slots, r=1 replica,  mu=4.0 calls/s -> r*mu = 4.0 calls/s -> 4.0 / 2 = 2.0 requests/s.
    # max stable lambda = min(1.0, 2.0) = 1.0, limited by llama.
    report = compute_centralised_capacity({"moe:llama": (3, 2, 1.5), "moe:qwen": ModelRate(2, 1, 4.0)})
    assert report.max_stable_requests_per_second == pytest.approx(1.0)
    assert report.bottleneck == "moe:llama"
    by_model = {m.model: m for m in report.models}
    assert by_model["moe:llama"].capacity_calls_per_second == pytest.approx(3.0)
    assert by_model["moe:qwen"].max_stable_requests_per_second == pytest.approx(2.0)
    # At lambda = 0.9: llama sees 3 * 0.9 = 2.7 calls/s of its 3.0 -> rho = 0.9; qwen 2 * 0.9 / 4 = 0.45.
    assert by_model["moe:llama"].utilization(0.9) == pytest.approx(0.9)
    assert by_model["moe:qwen"].utilization(0.9) == pytest.approx(0.45)
    # The condition is strict: n*lambda < r*mu. At exactly 1.0 request/s llama's queue grows without bound.
    assert report.is_stable(0.99)
    assert not report.is_stable(1.0)


def test_a_model_scaled_to_zero_makes_the_pipeline_unable_to_serve() -> None:
    report = compute_centralised_capacity({"moe:a": (1, 0, 5.0), "moe:b": (1, 1, 5.0)})
    assert report.max_stable_requests_per_second == 0.0
    assert report.bottleneck == "moe:a"
    assert not report.is_stable(0.001)


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({}, "at least one model"),
        ({"m": (0, 1, 1.0)}, "slots"),
        ({"m": (1, -1, 1.0)}, "replicas"),
        ({"m": (1, 1, 0.0)}, "mu"),
        ({"m": (1, 1, math.inf)}, "mu"),
    ],
)
def test_centralised_capacity_rejects_meaningless_inputs(
    models: dict[str, tuple[int, int, float]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compute_centralised_capacity(models)


def test_decentralised_capacity_follows_alpha_k_plus_1_m_plus_1() -> None:
    # k = 2 neighbours, M = 3 layers, alpha = 0.5 s per call:
    # calls per query = (k+1)*M + 1 = 3*3 + 1 = 10; stable while 0.5 * 10 * lambda < 1 -> lambda < 0.2/s.
    cap = compute_decentralised_capacity(neighbours=2, layers=3, service_time_seconds=0.5)
    assert cap.calls_per_query == 10
    assert cap.max_stable_requests_per_second == pytest.approx(0.2)
    assert cap.is_stable(0.19)
    assert not cap.is_stable(0.2)
    # No neighbours, one layer, alpha = 0.1 s: (0+1)*1 + 1 = 2 calls -> lambda < 1 / 0.2 = 5/s.
    solo = compute_decentralised_capacity(neighbours=0, layers=1, service_time_seconds=0.1)
    assert solo.max_stable_requests_per_second == pytest.approx(5.0)


def test_decentralised_capacity_rejects_meaningless_inputs() -> None:
    with pytest.raises(ValueError, match="neighbours"):
        compute_decentralised_capacity(neighbours=-1, layers=1, service_time_seconds=1.0)
    with pytest.raises(ValueError, match="layers"):
        compute_decentralised_capacity(neighbours=1, layers=0, service_time_seconds=1.0)
    with pytest.raises(ValueError, match="alpha"):
        compute_decentralised_capacity(neighbours=1, layers=1, service_time_seconds=0.0)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.tuples(st.integers(1, 20), st.integers(0, 10), st.floats(0.01, 100)),
        min_size=1,
        max_size=6,
    )
)
def test_no_model_is_overloaded_just_below_the_max_stable_rate(
    models: dict[str, tuple[int, int, float]],
) -> None:
    report = compute_centralised_capacity(models)
    rate = report.max_stable_requests_per_second * 0.999
    for m in report.models:
        assert m.slots * rate <= m.capacity_calls_per_second
    assert (
        min(m.max_stable_requests_per_second for m in report.models) == report.max_stable_requests_per_second
    )
