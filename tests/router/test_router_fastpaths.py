"""The hot path's shortcuts give exactly what the general path gives: the default aggregator prompt built
without jinja2 equals the sandboxed render, and the bytes-level SSE parser reads what the spec says."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubemoe.api.moapipeline import DEFAULT_AGGREGATOR_PROMPT
from kubemoe.router import pipeline
from kubemoe.router.errors import PromptTemplateError
from kubemoe.router.prompts import AgentResponse, render_aggregator_prompt
from kubemoe.router.upstream import _iter_sse_data

answers = st.lists(
    st.builds(AgentResponse, agent=st.sampled_from(["a", "b"]), content=st.text(max_size=200)), max_size=6
)


@given(answers)
def test_default_aggregator_prompt_equals_the_jinja_render(responses: list[AgentResponse]) -> None:
    rendered = render_aggregator_prompt(
        agent="agg", template=DEFAULT_AGGREGATOR_PROMPT, responses=responses, layer=2
    )
    assert pipeline.default_aggregator_prompt("agg", responses) == rendered


def test_default_aggregator_prompt_keeps_the_output_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubemoe.router import prompts

    monkeypatch.setattr(pipeline, "DEFAULT_LIMITS", prompts.Limits(max_output_chars=1000))
    with pytest.raises(PromptTemplateError, match=r"agent 'agg'.*output exceeds 1000"):
        pipeline.default_aggregator_prompt("agg", [AgentResponse("a", "x" * 1000)])


async def _blocks(*blocks: bytes):  # type: ignore[no-untyped-def]
    for block in blocks:
        yield block


async def test_sse_parsing_across_blocks() -> None:
    raw = [b'data: {"a"', b":1}\r\n\r\n: comment\n", b"event: x\ndata:no-space\ndata: two\n\n", b"data: last"]
    got = [d async for d in _iter_sse_data(_blocks(*raw))]
    assert got == [b'{"a":1}', b"no-space\ntwo", b"last"]


async def test_sse_parsing_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="malformed SSE line 'bogus: 1'"):
        _ = [d async for d in _iter_sse_data(_blocks(b"bogus: 1\n\n"))]
