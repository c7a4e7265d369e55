"""Prompt rendering: sandbox, reference wrapping, and merging into the client's conversation."""

from __future__ import annotations

import pytest

from kubemoe.api.moapipeline import DEFAULT_AGGREGATOR_PROMPT, DEFAULT_REFERENCE_PROMPT
from kubemoe.router.errors import PromptTemplateError
from kubemoe.router.prompts import (
    AgentResponse,
    render,
    render_agent_prompt,
    render_aggregator_prompt,
    with_system_prompt,
)

ANSWERS = [AgentResponse("a", "Paris."), AgentResponse("b", "It is Paris.")]


def test_sandbox_escape_raises_a_template_error_naming_the_agent() -> None:
    with pytest.raises(PromptTemplateError, match=r"agent 'evil'.*SecurityError") as info:
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", agent="evil")
    assert info.value.status == 500


def test_sandbox_caps_range_so_a_template_cannot_spin() -> None:
    with pytest.raises(PromptTemplateError, match=r"(?i)range too big"):
        render("{% for i in range(10**9) %}{% endfor %}", agent="spin")


def test_layer_one_agent_gets_its_own_prompt_only() -> None:
    prompt = render_agent_prompt(
        agent="a", system_prompt="Be brief.", reference_prompt=DEFAULT_REFERENCE_PROMPT, responses=[], layer=1
    )
    assert prompt == "Be brief.\n\n"


def test_later_agent_sees_previous_answers_through_the_reference_prompt() -> None:
    prompt = render_agent_prompt(
        agent="c",
        system_prompt="Be brief.",
        reference_prompt=DEFAULT_REFERENCE_PROMPT,
        responses=ANSWERS,
        layer=2,
    )
    assert prompt.startswith("Be brief.")
    assert "1. Paris.\n2. It is Paris." in prompt


def test_agent_template_that_uses_responses_is_not_wrapped() -> None:
    own = "Layer {{ layer }}: {% for r in responses %}[{{ r.agent }}] {{ r.content }} {% endfor %}"
    prompt = render_agent_prompt(
        agent="c", system_prompt=own, reference_prompt=DEFAULT_REFERENCE_PROMPT, responses=ANSWERS, layer=2
    )
    assert prompt == "Layer 2: [a] Paris. [b] It is Paris. "


def test_aggregator_prompt_lists_every_answer() -> None:
    prompt = render_aggregator_prompt(
        agent="agg", template=DEFAULT_AGGREGATOR_PROMPT, responses=ANSWERS, layer=3
    )
    assert "synthesize" in prompt
    assert prompt.endswith("1. Paris.\n2. It is Paris.\n")


def test_system_prompt_is_prepended_and_history_passes_through() -> None:
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Capital of France?"},
    ]
    out = with_system_prompt(history, "SYS")
    assert out == [{"role": "system", "content": "SYS"}, *history]


def test_client_system_message_is_merged_after_the_agent_prompt() -> None:
    out = with_system_prompt(
        [{"role": "system", "content": "Client rules."}, {"role": "user", "content": "Q"}], "SYS"
    )
    assert out == [{"role": "system", "content": "SYS\n\nClient rules."}, {"role": "user", "content": "Q"}]


def test_empty_system_prompt_leaves_the_conversation_alone() -> None:
    history = [{"role": "user", "content": "Q"}]
    assert with_system_prompt(history, "") == history
