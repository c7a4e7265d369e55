"""The recipe comparison is remembered per model, settings and catalog, and never changes a plan.

It depends only on the model (the recipe's own settings replace the spec's), so planning one model for every
instance type pays it once; a different catalog object, or different planner settings, must not reuse it."""

from __future__ import annotations

import dataclasses
import gc

import pytest

from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import load_catalog
from kubemoe.planner import PlannerSettings, explanation, plan_placement

MODEL = "Qwen/Qwen3-30B-A3B"


def _spec(instance: str | None = None, max_len: int | None = None) -> MoEModelSpec:
    body: dict[str, object] = {"model": {"name": MODEL}}
    if instance:
        body["placement"] = {"instanceTypes": [instance]}
    if max_len:
        body["serving"] = {"maxModelLen": max_len}
    return MoEModelSpec.model_validate(body)


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models whose comparison was actually computed, in order."""
    explanation.clear_recipe_memo()
    seen: list[str] = []
    real = explanation._recipe_comparison

    def counting(ctx, catalog, recipe):  # type: ignore[no-untyped-def]
        seen.append(ctx.spec.model.name)
        return real(ctx, catalog, recipe)

    monkeypatch.setattr(explanation, "_recipe_comparison", counting)
    yield seen
    explanation.clear_recipe_memo()


def test_one_model_planned_for_several_instances_and_lengths_computes_it_once(computed: list[str]) -> None:
    catalog = load_catalog()
    plans = [plan_placement(_spec(i), catalog) for i in ("p5.48xlarge", "p4d.24xlarge", "p5en.48xlarge")]
    plans.append(plan_placement(_spec(max_len=8192), catalog))
    assert computed == [MODEL]
    assert all(p.recipe is not None and p.recipe == plans[0].recipe for p in plans)


def test_a_remembered_comparison_is_the_one_computed_from_cold(computed: list[str]) -> None:
    catalog = load_catalog()
    warm = plan_placement(_spec("p5.48xlarge"), catalog)  # computes
    again = plan_placement(_spec("p5.48xlarge"), catalog)  # remembered
    explanation.clear_recipe_memo()
    cold = plan_placement(_spec("p5.48xlarge"), catalog)
    assert computed == [MODEL, MODEL]
    assert warm == again == cold


def test_another_catalog_or_other_settings_compute_their_own(computed: list[str]) -> None:
    catalog = load_catalog()
    plan_placement(_spec(), catalog)
    other = dataclasses.replace(catalog)  # equal tables, another object
    plan_placement(_spec(), other)
    plan_placement(_spec(), catalog, PlannerSettings(min_concurrency=2))
    assert computed == [MODEL, MODEL, MODEL]


def test_a_catalog_that_goes_takes_its_answers_with_it(computed: list[str]) -> None:
    other = dataclasses.replace(load_catalog())
    plan_placement(_spec(), other)
    assert id(other) in explanation._RECIPE_MEMO
    gone = id(other)
    del other
    gc.collect()
    assert gone not in explanation._RECIPE_MEMO
