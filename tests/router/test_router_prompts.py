"""Prompt rendering: sandbox, reference wrapping, and merging into the client's conversation."""

from __future__ import annotations

import json
import subprocess
import sys

import aiohttp
import pytest
from moa_stub import StubBackend
from router_harness import RouterFactory, make_config

from kubemoe.api.moapipeline import DEFAULT_AGGREGATOR_PROMPT, DEFAULT_REFERENCE_PROMPT
from kubemoe.router import prompts
from kubemoe.router.errors import PromptTemplateError
from kubemoe.router.prompts import (
    INVALID_PROMPT_TEMPLATE,
    AgentResponse,
    Limits,
    TemplateProblem,
    check_templates,
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


# ----------------------------------------------------------------------------------------- the budget

#: Templates that tried to take the operator's memory or workers (issue 14), and others of their family.
BOMBS = {
    "string-repeat": "{{ 'x' * 600000000 }}",
    "nested-range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "concat-chain": "{% set a = 'x' * 4000000 %}{{ a ~ a ~ a ~ a ~ a ~ a ~ a ~ a }}",
    "plus-chain": "{% set a = 'x' * 4000000 %}{{ a + a }}",
    "join": "{% set a = 'x' * 1000000 %}{{ [a, a, a, a, a]|join }}",
    "replace": "{{ ('x' * 1000000)|replace('x', 'yyyyyyyyyy') }}",
    "indent": "{{ ('\n' * 1000000)|indent(10000) }}",
    "center": "{{ 'x'|center(999999999) }}",
    "ljust": "{{ 'x'.ljust(999999999) }}",
    "format-width": "{{ '{:>999999999}'.format('x') }}",
    "percent-width": "{{ '%999999999d' % 1 }}",
    "power": "{{ 10 ** 1000000000 }}",
    "loop-in-set-block": "{% set s %}{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}{% endset %}{{ s }}",
    "literal-in-loop": "{% for i in range(100000) %}" + "z" * 100 + "{% endfor %}",
    "macro": "{% macro f() %}{{ f() }}{{ f() }}{% endmacro %}{{ f() }}",
    "list-append": "{% set l = [] %}{% for i in range(10) %}{{ l.append(i) }}{% endfor %}",
    "lipsum": "{{ lipsum(1000000) }}",
}


@pytest.mark.parametrize("source", BOMBS.values(), ids=BOMBS.keys())
def test_runaway_templates_fail_with_a_message(source: str) -> None:
    with pytest.raises(PromptTemplateError, match=r"prompt template of agent 'bomb' failed: \w+Error"):
        render(source, agent="bomb", responses=[], layer=1, system_prompt=None)


def test_budget_limits_are_the_ones_reported() -> None:
    tight = Limits(max_output_chars=100, max_iterations=50, max_seconds=30)
    with pytest.raises(PromptTemplateError, match="output exceeds 100 characters"):
        render("{{ 'x' * 60 }}{{ 'y' * 60 }}", agent="a", limits=tight)
    with pytest.raises(PromptTemplateError, match="more than 50 loop iterations"):
        render("{% for i in range(51) %}{% endfor %}", agent="a", limits=tight)
    # The clock is checked as the loops run: a budget of no time fails at the first iteration.
    with pytest.raises(PromptTemplateError, match="rendering took longer than 0 s"):
        render("{% for i in range(3) %}{% endfor %}", agent="a", limits=Limits(max_seconds=0))
    # Inside every budget, the same constructs work.
    assert render("{% for i in range(3) %}{{ i }}{% endfor %}{{ 'ab' * 2 }}", agent="a") == "012abab"


_MEASURE = """
import json, resource, sys, time
from kubemoe.router.errors import PromptTemplateError
from kubemoe.router.prompts import render
sources = json.loads(sys.stdin.read())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.monotonic()
failed = 0
for source in sources:
    try:
        render(source, agent="bomb", responses=[], layer=1, system_prompt=None)
    except PromptTemplateError:
        failed += 1
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"failed": failed, "growth_kib": after - before, "seconds": time.monotonic() - start}))
"""


def test_bombs_leave_memory_flat() -> None:
    # A fresh process, so the peak RSS before the bombs is the interpreter's own; a bomb that built its
    # value (600 MB, 8 x 4 MB, 10 GB...) would raise the peak by at least that much.
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE],
        input=json.dumps(list(BOMBS.values())),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(proc.stdout)
    assert seen["failed"] == len(BOMBS)
    assert seen["growth_kib"] < 64 * 1024, seen


def test_check_templates_reports_the_first_problem_from_a_child_process() -> None:
    good = ("a", "{{ responses|length }}", False)
    assert check_templates([good]) is None
    problem = check_templates([good, ("b", BOMBS["string-repeat"], False)])
    assert problem == TemplateProblem(
        "b",
        "prompt template of agent 'b' failed: TemplateLimitError: a value of 600000000 characters or items "
        "exceeds the limit of 4194304",
    )
    assert problem.reason == INVALID_PROMPT_TEMPLATE


def test_check_templates_gives_up_at_its_timeout() -> None:
    # A child that cannot even start in the time allowed stands for one that never finishes.
    problem = check_templates([("slow", "{{ 1 }}", False)], timeout_s=0.001)
    assert problem is not None
    assert problem.message == "trial rendering did not finish within 0.001 s"


def test_check_templates_reports_a_child_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # Within the in-process budget (4M items) but not within 16 MiB of address space: the child's hard
    # limit stops it, and the problem says so rather than passing the template.
    monkeypatch.setattr(prompts, "CHILD_MEMORY_BYTES", 16 << 20)
    problem = check_templates([("hungry", "{{ ('x' * 4000000)|list|length }}", False)])
    assert problem is not None
    assert problem.agent == "hungry"
    assert (
        problem.message
        == "prompt template of agent 'hungry' failed: MemoryError: the render ran out of memory"
    )


async def test_a_bomb_at_request_time_is_a_clean_error_from_the_router(
    stub: StubBackend, start_router: RouterFactory
) -> None:
    # Trial renders at load see one sample answer; this template only explodes with two real answers.
    bomb = "{% if responses|length > 1 %}{{ 'x' * 600000000 }}{% endif %}"
    base = await start_router(make_config(stub.url, [("a", "b")], aggregator_extra={"promptTemplate": bomb}))
    payload = {"model": "moa-test", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/chat/completions", json=payload) as resp,
    ):
        status, body = resp.status, await resp.json()
    assert status == 500
    assert body["error"]["code"] == "prompt_template_error"
    assert "TemplateLimitError" in body["error"]["message"]
    assert stub.calls("agg") == []
