"""The operator benchmark's recovery part (hack.bench.operator_scale): an operator restart, and 10 % of the
Deployments deleted and restored, by the operator and then by the floor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hack.bench import _opbench as ob
from hack.bench._cluster import WRITE_VERBS, Api, count, delta
from hack.bench._figures import figure, ratio
from hack.bench._operator_proc import Operator
from hack.bench.common import Context, Figure

if TYPE_CHECKING:
    from hack.bench.operator_scale import Plan

#: Not `operator`: a module of that name in hack/bench would shadow the standard library's for every
#: script run from this folder (naive_fanout.py is one).
SUBJECT = "operator_scale"
RATIO_GOAL = ("<=", 1.15)


def recovery(
    api: Api, op: Operator, plan: Plan, raw: dict[str, Any], *, ns: str, ctx: Context
) -> list[Figure]:
    """Restart (re-observe everything, write nothing) and the restore of 10 % of the Deployments deleted,
    by the operator against the floor re-applying them, at the largest N."""
    n = plan.sizes[-1]
    crs = n + max(1, n // 10)
    rollout_per_model = raw["sizes"][n]["operator"]["seconds"] / n
    figures: list[Figure] = []

    # Restart: a new process must re-observe everything and find nothing to write.
    op.stop()
    before = api.request_counts()
    # A long resync from here on: the restart's own pass is the one measured (the queue then drains), and
    # the deleted Deployments below are restored through the child watch, not a periodic pass.
    op.resync_s = 600.0
    op.restart(ctx.results_dir / "operator-restart.log")
    reobserved = op.wait_idle(crs, timeout_s=max(120, 2 * crs))
    restart_writes = count(delta(api.request_counts(), before), WRITE_VERBS, ob.OPERATOR_WRITTEN)
    figures += [
        figure(SUBJECT, f"restart N={n}: all re-observed", reobserved, "s"),
        figure(
            SUBJECT, f"restart N={n}: re-observe/rollout, per model", ratio(reobserved / n, rollout_per_model)
        ),
        figure(SUBJECT, f"restart N={n}: API writes", restart_writes, goal=("==", 0), bound=("==", 0)),
    ]

    # 10 % of the Deployments deleted: the operator restores them, then the floor re-applies the same.
    victims = {ob.model_name(i) for i in range(0, n, 10)}
    old = {
        d["metadata"]["name"]: d["metadata"]["uid"]
        for d in api.list("Deployment", ns)
        if d["metadata"]["name"] in victims
    }

    def delete_victims() -> None:
        for name in victims:
            api.delete("Deployment", ns, name)

    ready_models = ob.crs_ready(api, ns)
    restored = ob.deployments_ready(api, ns, victims, old)

    def op_restored() -> int:
        return len(victims) if restored() >= len(victims) and ready_models() >= crs else 0

    delete_victims()
    op_s, _ = ob.timed_until(
        lambda: None, op_restored, len(victims), timeout_s=120 + 3 * len(victims), poll_s=0.25
    )
    op.stop()
    objects = {o["metadata"]["name"]: o for o in ob.render(ob.model_docs(ns, n)) if o["kind"] == "Deployment"}
    old = {
        d["metadata"]["name"]: d["metadata"]["uid"]
        for d in api.list("Deployment", ns)
        if d["metadata"]["name"] in victims
    }
    delete_victims()
    floor_s, _ = ob.timed_until(
        lambda: api.apply_all([objects[v] for v in sorted(victims)], ob.FLOOR_MANAGER, plan.workers),
        ob.deployments_ready(api, ns, victims, old),
        len(victims),
        timeout_s=120 + 3 * len(victims),
        poll_s=0.25,
    )
    raw["recovery"] = {
        "reobserve_s": reobserved,
        "restart_writes": restart_writes,
        "restore_operator_s": op_s,
        "restore_floor_s": floor_s,
    }
    figures += [
        figure(
            SUBJECT,
            f"delete 10 % (N={n}): restore operator/floor",
            ratio(op_s, floor_s),
            goal=RATIO_GOAL,
            bound=("<=", 6.0),  # CI: 3 Deployments, measured 4.1
        ),
        figure(SUBJECT, f"delete 10 % (N={n}): restored by the operator", op_s, "s"),
    ]
    return figures
