"""Prompt templates in a jinja2 sandbox, and how a rendered system prompt joins the client's conversation.

Templates come from the MoAPipeline spec, i.e. from whoever may edit that object, and run inside the router
next to upstream API keys. `SandboxedEnvironment` refuses attribute access that reaches Python internals
(`''.__class__.__mro__`...) with `SecurityError` and caps `range()`; `StrictUndefined` turns a misspelt
variable into an error instead of an empty string. Every jinja2 failure becomes a `PromptTemplateError` here.

Variables a template sees: `responses` (previous layer's answers, each with `agent` and `content`), `layer`
(1-based layer number; the aggregator sees the number of proposer layers + 1), `agent` (its own name) and,
for the reference prompt, `system_prompt` (the agent's own rendered prompt, or None).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

from kubemoe.router.errors import PromptTemplateError

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)

#: Answers used to trial-render templates when a config loads, so obvious mistakes fail at startup.
_SAMPLE_RESPONSES = ({"agent": "sample", "content": "A sample answer."},)


@dataclass(frozen=True)
class AgentResponse:
    """One proposer's answer as templates see it."""

    agent: str
    content: str


def check_template(source: str) -> None:
    """Raise `jinja2.TemplateError` if `source` does not parse (used by config validation)."""
    _ENV.parse(source)


def uses_responses(source: str) -> bool:
    """Whether a template refers to `responses` itself (then it is not wrapped in the reference prompt)."""
    return "responses" in meta.find_undeclared_variables(_ENV.parse(source))


@lru_cache(maxsize=256)
def _compile(source: str) -> Any:
    return _ENV.from_string(source)


def render(source: str, *, agent: str, **variables: Any) -> str:
    """Render `source` in the sandbox; any failure (syntax, undefined name, SecurityError) names the agent."""
    try:
        return str(_compile(source).render(agent=agent, **variables))
    except TemplateError as exc:  # SecurityError and UndefinedError are TemplateErrors
        raise PromptTemplateError(agent, f"{type(exc).__name__}: {exc}") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise PromptTemplateError(agent, f"{type(exc).__name__}: {exc}") from exc


def _as_dicts(responses: Sequence[AgentResponse]) -> list[dict[str, str]]:
    # Plain dicts: `r.content` works through jinja2's item fallback, and the sandbox has nothing to guard.
    return [{"agent": r.agent, "content": r.content} for r in responses]


def render_agent_prompt(
    *,
    agent: str,
    system_prompt: str | None,
    reference_prompt: str,
    responses: Sequence[AgentResponse],
    layer: int,
) -> str:
    """The system prompt of a proposer.

    An agent whose own template mentions `responses` presents the previous answers itself; any other agent's
    prompt is rendered first and then wrapped in the pipeline's reference prompt, which lists the answers
    (layer 1 has none, so the default reference prompt reduces to the agent's own prompt).
    """
    answers = _as_dicts(responses)
    own = None
    if system_prompt:
        own = render(system_prompt, agent=agent, responses=answers, layer=layer, system_prompt=None)
    if system_prompt and uses_responses(system_prompt):
        return own or ""
    return render(reference_prompt, agent=agent, system_prompt=own, responses=answers, layer=layer)


def render_aggregator_prompt(
    *, agent: str, template: str, responses: Sequence[AgentResponse], layer: int
) -> str:
    """The aggregator's system prompt: the aggregate-and-synthesize template over the last answers."""
    return render(template, agent=agent, responses=_as_dicts(responses), layer=layer, system_prompt=None)


def trial_render(source: str, *, agent: str, reference: bool = False) -> None:
    """Render with no answers and with a sample answer; raises `PromptTemplateError` on any failure."""
    for responses in ((), _SAMPLE_RESPONSES):
        variables: dict[str, Any] = {"responses": list(responses), "layer": 1 if not responses else 2}
        if reference:
            variables["system_prompt"] = "sample system prompt"
        else:
            variables.setdefault("system_prompt", None)
        render(source, agent=agent, **variables)


def with_system_prompt(messages: Sequence[Mapping[str, Any]], system_prompt: str) -> list[dict[str, Any]]:
    """The client's conversation with the agent's system prompt in front.

    The rest of the conversation (multi-turn history) passes through unchanged. If the client sent its own
    leading system message with text content, both are merged into one system message (agent prompt first)
    so backends whose chat templates accept a single system message still work; otherwise the prompt is
    prepended.
    """
    out = [dict(m) for m in messages]
    if not system_prompt:
        return out
    if out and out[0].get("role") in ("system", "developer") and isinstance(out[0].get("content"), str):
        out[0] = {**out[0], "role": "system", "content": f"{system_prompt}\n\n{out[0]['content']}"}
        return out
    return [{"role": "system", "content": system_prompt}, *out]
