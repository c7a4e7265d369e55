"""The planner's footprint against the published vLLM recipes' minimum memory (tech-facts §7.3).

For every catalog model with a `recipe`, the smallest footprint the planner finds at the recipe's own
settings (checkpoint dtype, the recipe's or the model's full context, gpu_memory_utilization 0.92) must
be within 20 % of the recipe's `vram_minimum_gb`.
"""

from __future__ import annotations

import pytest

from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import load_catalog
from kubemoe.planner import plan_placement

CATALOG = load_catalog()
RECIPE_MODELS = sorted(m.id for m in CATALOG.models.values() if m.recipe is not None)

#: The recipes of tech-facts §7.3 that the catalog must carry, so the test cannot pass on an empty list.
REQUIRED = {
    "deepseek-ai/DeepSeek-V3",
    "deepseek-ai/DeepSeek-R1",
    "Qwen/Qwen3-235B-A22B",
    "Qwen/Qwen3-235B-A22B-FP8",
    "Qwen/Qwen3-235B-A22B-Instruct-2507",
    "Qwen/Qwen3-30B-A3B",
    "moonshotai/Kimi-K2-Instruct",
    "meta-llama/Llama-4-Scout-17B-16E-Instruct",
    "openai/gpt-oss-120b",
    "openai/gpt-oss-20b",
}


def test_every_required_recipe_model_is_in_the_catalog_with_a_recipe() -> None:
    assert set(RECIPE_MODELS) >= REQUIRED, sorted(REQUIRED - set(RECIPE_MODELS))


@pytest.mark.parametrize("model_id", RECIPE_MODELS)
def test_planned_footprint_is_within_20_percent_of_the_published_recipe(model_id: str) -> None:
    plan = plan_placement(MoEModelSpec.model_validate({"model": {"name": model_id}}), CATALOG)
    assert plan.recipe is not None
    entry = CATALOG.find_model(model_id)
    assert entry is not None
    assert entry.recipe is not None
    assert plan.recipe.recipe_gb == entry.recipe.vram_minimum_gb
    assert plan.recipe.ratio == pytest.approx(plan.recipe.planned_gb / plan.recipe.recipe_gb, abs=0.002)
    assert 0.8 <= plan.recipe.ratio <= 1.2, (
        f"{model_id}: planned {plan.recipe.planned_gb} GB vs recipe {plan.recipe.recipe_gb} GB"
    )


def test_the_recipe_comparison_does_not_depend_on_the_users_serving_settings() -> None:
    """It is computed at the recipe's settings, so a user's short context or fp8 KV does not move it."""
    model = "Qwen/Qwen3-235B-A22B"
    default = plan_placement(MoEModelSpec.model_validate({"model": {"name": model}}), CATALOG)
    tuned = plan_placement(
        MoEModelSpec.model_validate(
            {"model": {"name": model}, "serving": {"maxModelLen": 4096, "kvCacheDtype": "fp8"}}
        ),
        CATALOG,
    )
    assert default.recipe == tuned.recipe


def test_models_without_a_recipe_have_no_comparison() -> None:
    plan = plan_placement(
        MoEModelSpec.model_validate({"model": {"name": "mistralai/Mixtral-8x7B-Instruct-v0.1"}}), CATALOG
    )
    assert plan.recipe is None
