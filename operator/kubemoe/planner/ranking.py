"""How feasible candidates are ordered, per `spec.placement.strategy`.

* cheapest: the lowest $ per million output tokens under the SLO; with `serving.target`, the lowest $/hour
  of the replicas the target needs (then $/M tokens). Instances without an on-demand price sort last.
* fewest-accelerators: the fewest devices per replica, then $/M tokens.
* lowest-latency: the fewest nodes, then the least active bytes per unit of memory bandwidth.

Ties go to fewer accelerators, then fewer pipeline stages, then more concurrent sequences; under
`cheapest` without a target, plans within NEAR_TIE of the best $/M tokens count as tied, and among them the
fewest accelerators win, then the most concurrent sequences (the batch within the SLO, which the KV
cache bounds).
"""

from __future__ import annotations

import math

from kubemoe.api.moemodel import Target
from kubemoe.planner.context import Context
from kubemoe.planner.feasibility import Candidate
from kubemoe.planner.layouts import Layout


def latency_score(ctx: Context, layout: Layout) -> float:
    """Relative decode time per token: active weight bytes each rank streams / its memory bandwidth.

    Pipeline stages run one after another, so PP does not shorten a token; each extra node adds a network
    hop, counted as a 15 % penalty. Only comparisons between candidates mean anything.
    """
    arch, split = ctx.arch, ctx.split
    expert_share = arch.experts_per_token / arch.num_experts if arch.is_moe else 1.0
    active = split.other_bytes / layout.tp + split.expert_bytes * expert_share / layout.expert_split
    bandwidth = layout.instance.memory_bandwidth_gbps / layout.instance.cores_per_device
    return round(active / (bandwidth * 1e9) * 1000 * (1 + 0.15 * (layout.nodes - 1)), 4)


def replicas_for(target: Target | None, c: Candidate) -> int | None:
    """Replicas of this candidate the target needs, or None without a target."""
    est = c.estimate
    if target is None or est is None:
        return None
    if target.requests_per_second is not None:
        return max(1, math.ceil(target.requests_per_second / est.requests_per_second - 1e-9))
    assert target.concurrent_users is not None
    return max(1, math.ceil(target.concurrent_users / max(1, est.batch)))


def sort_key(strategy: str, ctx: Context, c: Candidate) -> tuple[float, ...]:
    layout, sizing, est = c.layout, c.sizing, c.estimate
    assert sizing is not None
    assert est is not None
    cost = layout.cost_per_hour()
    cost_key = cost if cost is not None else math.inf
    per_token = est.cost_per_million_tokens if est.cost_per_million_tokens is not None else math.inf
    devices = layout.devices
    batch = -est.batch
    if strategy == "fewest-accelerators":
        return (devices, per_token, cost_key, layout.pp, batch)
    if strategy == "lowest-latency":
        return (layout.nodes, latency_score(ctx, layout), cost_key, devices)
    replicas = replicas_for(ctx.spec.serving.target, c)
    if replicas is not None:
        return (replicas * cost_key, per_token, devices, layout.pp, batch)
    return (per_token, cost_key, devices, layout.pp, batch)


#: Under `cheapest` without a target, plans within this share of the best $/M tokens count as equally
#: cheap, and the one with the fewest accelerators wins: a smaller replica scales in finer steps (a model
#: that fits one GPU runs as one-GPU replicas), has no collectives or expert all-to-all the roofline may
#: under-count, and two layouts' per-token estimates are no finer than this (the same-layout comparison with
#: aiconfigurator, tests/unit/test_recipe_calibration.py, spreads by more). Between equally cheap replicas
#: of as many accelerators, the one holding more concurrent sequences within the SLO wins: it serves more
#: users at once at the same $/token. (Ranking by the KV cache's own capacity instead, Estimate.kv_limit,
#: moved Llama-4-Scout and Mixtral on 8 GPUs to TP 2-4 x DP, whose dense weights are copied fewer times,
#: and out of aiconfigurator's top three: 8 of 13 against 11.)
NEAR_TIE = 0.05


def rank(ctx: Context, candidates: list[Candidate]) -> list[Candidate]:
    strategy = ctx.spec.placement.strategy
    ranked = sorted((c for c in candidates if c.feasible), key=lambda c: sort_key(strategy, ctx, c))
    if strategy != "cheapest" or ctx.spec.serving.target is not None or not ranked:
        return ranked
    best = ranked[0].estimate
    if best is None or best.cost_per_million_tokens is None:
        return ranked
    limit = best.cost_per_million_tokens * (1 + NEAR_TIE)
    close = [
        c
        for c in ranked
        if c.estimate
        and c.estimate.cost_per_million_tokens is not None
        and c.estimate.cost_per_million_tokens <= limit
    ]
    winner = min(
        close, key=lambda c: (c.layout.devices, -(c.estimate.batch if c.estimate else 0), ranked.index(c))
    )
    return [winner, *[c for c in ranked if c is not winner]]
