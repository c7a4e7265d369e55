"""Prompt templates in a bounded jinja2 sandbox, and how a rendered system prompt joins the client's conversation.

Templates come from the MoAPipeline spec, i.e. from whoever may edit that object, and run inside the router
(at every request) and inside the operator (trial renders) next to API keys and other users' objects. So:

* `ImmutableSandboxedEnvironment` refuses attribute access that reaches Python internals
  (`''.__class__.__mro__`...) and mutation of lists and dicts; `StrictUndefined` turns a misspelt variable
  into an error instead of an empty string; only the globals a prompt needs exist (no `lipsum`, `cycler`,
  `joiner`), and macros, call blocks, includes and inheritance are refused at parse time.
* Every render has a budget (`Limits`): output characters (every `{{ }}` anywhere, plus each loop iteration's
  literal text), loop iterations and calls, and wall time, checked as it runs. Operations that build big
  values from small ones (`*`, `**`, `%`, `+`, `~`, `join`, `replace`, `indent`, width arguments) are
  checked *before* they allocate. A template over budget fails fast with a message saying which limit.
* `check_templates` trial-renders in a child process with an address-space and a wall-clock limit, so even
  a render the in-process checks missed cannot take memory or a worker from the operator.

Every failure becomes a `PromptTemplateError` (router) or a `TemplateProblem` (`check_templates`).

Variables a template sees: `responses` (previous layer's answers, each with `agent` and `content`), `layer`
(1-based layer number; the aggregator sees the number of proposer layers + 1), `agent` (its own name) and,
for the reference prompt, `system_prompt` (the agent's own rendered prompt, or None).
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.visitor import NodeTransformer

from kubemoe.api.moapipeline import DEFAULT_REFERENCE_PROMPT, MoAPipelineSpec
from kubemoe.router.errors import PromptTemplateError

#: Answers used to trial-render templates when a config loads, so obvious mistakes fail at startup.
_SAMPLE_RESPONSES = ({"agent": "sample", "content": "A sample answer."},)


@dataclass(frozen=True)
class Limits:
    """What one render may spend. Prompts are a few KiB; the output cap leaves room for 16 long answers."""

    max_output_chars: int = 4 << 20
    max_iterations: int = 200_000  # loop iterations plus calls
    max_seconds: float = 2.0
    #: Largest width, count or repetition an argument may ask for.
    max_int_argument: int = 10_000


DEFAULT_LIMITS = Limits()


class TemplateLimitError(SecurityError):
    """A render went over its budget (output, iterations, time) or asked for a value too big to build."""


@dataclass
class _Budget:
    limits: Limits
    deadline: float
    output: int = 0
    steps: int = 0

    def charge(self, *, output: int = 0, steps: int = 0) -> None:
        self.output += output
        self.steps += steps
        if self.output > self.limits.max_output_chars:
            raise TemplateLimitError(f"output exceeds {self.limits.max_output_chars} characters")
        if self.steps > self.limits.max_iterations:
            raise TemplateLimitError(f"more than {self.limits.max_iterations} loop iterations and calls")
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"rendering took longer than {self.limits.max_seconds:g} s")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "kubemoe_prompt_budget", default=None
)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # a render outside `render` (tests poking at the environment): default limits
        budget = _Budget(DEFAULT_LIMITS, time.monotonic() + DEFAULT_LIMITS.max_seconds)
        _BUDGET.set(budget)
    return budget


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 0


def _check_size(size: int) -> None:
    cap = _budget().limits.max_output_chars
    if size > cap:
        raise TemplateLimitError(f"a value of {size} characters or items exceeds the limit of {cap}")


def _check_ints(args: Iterable[Any]) -> None:
    cap = _budget().limits.max_int_argument
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > cap:
            raise TemplateLimitError(f"argument {arg} exceeds the limit of {cap}")


def _estimate(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """Size of what a known amplifier would build, computed before it runs (0: not an amplifier)."""
    name = getattr(func, "__name__", "")
    owner = getattr(func, "__self__", None)
    subject = owner if isinstance(owner, str) else (args[0] if args else None)
    rest = list(args if not isinstance(owner, str) else (None, *args))[1:]
    if name in ("join", "do_join"):
        items = subject if name == "join" else (args[0] if args else ())
        sep = subject if name == "join" else (rest[0] if rest else kwargs.get("d", ""))
        if isinstance(items, (list, tuple)):
            return sum(len(str(i)) for i in items) + len(str(sep)) * len(items)
    if name in ("replace", "do_replace") and isinstance(subject, str) and len(rest) >= 2:
        old, new = str(rest[0]), str(rest[1])
        return len(subject) + (len(subject) // max(len(old), 1) + 1) * len(new)
    if name == "do_indent" and isinstance(subject, str):
        width = rest[0] if rest else kwargs.get("width", 4)
        return len(subject) + (subject.count("\n") + 1) * (
            width if isinstance(width, int) else len(str(width))
        )
    return 0


def _guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter with the call checks of `BoundedEnvironment.call`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _guard_call(func, args, kwargs)
        result = func(*args, **kwargs)
        _check_size(_size(result))
        return result

    return wrapper


def _guard_call(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    _budget().charge(steps=1)
    if func is not safe_range:  # range builds nothing (lazy), is capped by the sandbox, and loops are counted
        _check_ints([*args, *kwargs.values()])
    _check_size(_estimate(func, args, kwargs))


def _bounded_iter(iterable: Iterable[Any], body_chars: int) -> Iterator[Any]:
    """Every `{% for %}` iterates through this: one step per item, plus the body's literal text as output."""
    budget = _budget()
    for item in iterable:
        budget.charge(steps=1, output=body_chars)
        yield item


def _bounded_concat(*parts: Any) -> str:
    """`a ~ b ~ ...`, sized before it is joined."""
    texts = [str(p) for p in parts]
    _check_size(sum(len(t) for t in texts))
    return "".join(texts)


def _finalize(value: Any) -> Any:
    """Every `{{ expression }}` (top level, loops, set blocks) passes here: count what it writes."""
    _budget().charge(output=len(str(value)) if value is not None else 0)
    return value


_WIDTH = re.compile(r"[0-9]{5,}|\*")  # format widths/precisions of 10000 and more, or taken from arguments

_REFUSED_NODES = (nodes.Macro, nodes.CallBlock, nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with a budget: see the module docstring."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self) -> None:
        super().__init__(
            undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize
        )
        self.globals = {"range": safe_range, "dict": dict}
        self.filters = {name: _guarded(f) for name, f in self.filters.items()}
        self.bounded_iter = _bounded_iter
        self.bounded_concat = _bounded_concat

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for node in tree.find_all(_REFUSED_NODES):
            raise SecurityError(
                f"line {node.lineno}: prompt templates may not use {type(node).__name__.lower()} "
                "(macros, call blocks, include, import and extends are refused)"
            )
        bounded: nodes.Template = _Bound().visit(tree)
        return bounded

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    _check_size(len(seq) * max(times, 0))
        elif op == "**" and isinstance(right, int) and isinstance(left, int | float):
            if abs(right) > 1024 or (isinstance(left, int) and left.bit_length() * abs(right) > 65536):
                raise TemplateLimitError(f"{left!r} ** {right!r} is too large to compute")
        elif op == "%" and isinstance(left, str):
            if _WIDTH.search(left):
                raise TemplateLimitError(
                    "format widths of 10000 or more (or taken from arguments) are refused"
                )
            _check_ints(right if isinstance(right, tuple) else [right])
        elif op == "+":
            _check_size(_size(left) + _size(right))
        return super().call_binop(context, op, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, str) and attribute in ("format", "format_map") and _WIDTH.search(obj):
            raise TemplateLimitError("format widths of 10000 or more (or taken from arguments) are refused")
        return super().getattr(obj, attribute)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if __obj is _bounded_iter or __obj is _bounded_concat:  # our own rewrites, which count themselves
            return __context.call(__obj, *args, **kwargs)
        _guard_call(__obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        _check_size(_size(result))
        return result


class _Bound(NodeTransformer):
    """Route every loop through `bounded_iter` and every `~` through `bounded_concat` (both count)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        body = sum(len(d.data) for n in node.body for d in n.find_all(nodes.TemplateData))
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("bounded_iter"), [node.iter, nodes.Const(body)], [], None, None
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.EnvironmentAttribute("bounded_concat"), node.nodes, [], None, None)


_ENV = BoundedEnvironment()


@dataclass(frozen=True)
class AgentResponse:
    """One proposer's answer as templates see it."""

    agent: str
    content: str


def check_template(source: str) -> None:
    """Raise `jinja2.TemplateError` if `source` does not parse or uses refused tags (config validation)."""
    _ENV.parse(source)
    _compile(source)


def uses_responses(source: str) -> bool:
    """Whether a template refers to `responses` itself (then it is not wrapped in the reference prompt)."""
    return "responses" in meta.find_undeclared_variables(_ENV.parse(source))


@lru_cache(maxsize=256)
def _compile(source: str) -> Any:
    return _ENV.from_string(source)


def render(source: str, *, agent: str, limits: Limits = DEFAULT_LIMITS, **variables: Any) -> str:
    """Render `source` in the bounded sandbox; any failure (syntax, undefined name, SecurityError, a limit)
    raises `PromptTemplateError` naming the agent."""
    token = _BUDGET.set(_Budget(limits, time.monotonic() + limits.max_seconds))
    try:
        out: list[str] = []
        size = 0
        for chunk in _compile(source).generate(agent=agent, **variables):
            size += len(chunk)
            if size > limits.max_output_chars:
                raise TemplateLimitError(f"output exceeds {limits.max_output_chars} characters")
            out.append(chunk)
        return "".join(out)
    except TemplateError as exc:  # SecurityError, TemplateLimitError and UndefinedError are TemplateErrors
        raise PromptTemplateError(agent, f"{type(exc).__name__}: {exc}") from exc
    except MemoryError as exc:
        raise PromptTemplateError(agent, "MemoryError: the render ran out of memory") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
        raise PromptTemplateError(agent, f"{type(exc).__name__}: {exc}") from exc
    finally:
        _BUDGET.reset(token)


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


# ------------------------------------------------------------------------ the operator's isolated check


#: The condition reason the operator reports for a template that fails `check_templates`.
INVALID_PROMPT_TEMPLATE = "InvalidPromptTemplate"


@dataclass(frozen=True)
class TemplateProblem:
    """Why a pipeline's templates cannot be used: `reason` for the condition, `message` for people."""

    agent: str
    message: str
    reason: str = INVALID_PROMPT_TEMPLATE


#: Limits of the child process that trial-renders: beyond the in-process budget, a hard stop.
CHILD_MEMORY_BYTES = 512 << 20
CHILD_TIMEOUT_SECONDS = 10.0


def pipeline_templates(spec: MoAPipelineSpec) -> list[tuple[str, str, bool]]:
    """Every template a MoAPipeline's router would render, as `(agent, source, is_reference)`."""
    out = [("referencePrompt", DEFAULT_REFERENCE_PROMPT, True)]
    out += [
        (a.name, a.system_prompt, False) for layer in spec.layers for a in layer.agents if a.system_prompt
    ]
    out.append(("aggregator", spec.aggregator.prompt_template, False))
    return out


def check_pipeline_templates(
    spec: MoAPipelineSpec, *, timeout_s: float = CHILD_TIMEOUT_SECONDS
) -> TemplateProblem | None:
    """The operator's check before it renders a pipeline: `check_templates` over `pipeline_templates`."""
    return check_templates(pipeline_templates(spec), timeout_s=timeout_s)


def check_templates(
    templates: Sequence[tuple[str, str, bool]], *, timeout_s: float = CHILD_TIMEOUT_SECONDS
) -> TemplateProblem | None:
    """Trial-render `(agent, source, is_reference)` templates in a child process; the first problem, or None.

    The child has an address-space limit and is killed at `timeout_s`, so a template that escapes the
    in-process budget costs the caller at most `timeout_s` of one thread and no memory. Results are cached
    per set of templates (a resync does not spawn a process for templates already checked).
    """
    return _check_cached(tuple(templates), timeout_s, CHILD_MEMORY_BYTES)


@lru_cache(maxsize=512)
def _check_cached(
    templates: tuple[tuple[str, str, bool], ...], timeout_s: float, memory_bytes: int
) -> TemplateProblem | None:
    payload = json.dumps([list(t) for t in templates])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "kubemoe.router.prompts", str(memory_bytes)],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return TemplateProblem("?", f"trial rendering did not finish within {timeout_s:g} s")
    if proc.returncode == 0 and proc.stdout.strip() == "ok":
        return None
    try:
        agent, message = json.loads(proc.stdout)
    except (ValueError, TypeError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return TemplateProblem("?", f"trial rendering failed: {tail[0]}")
    return TemplateProblem(str(agent), str(message))


def _child_main(memory_bytes: int) -> int:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    for agent, source, is_reference in json.loads(sys.stdin.read()):
        try:
            trial_render(source, agent=agent, reference=is_reference)
        except PromptTemplateError as exc:
            print(json.dumps([agent, exc.message]))
            return 1
        except MemoryError:  # outside render (compiling): the same words
            print(json.dumps([agent, f"prompt template of agent {agent!r} failed: MemoryError"]))
            return 1
    print("ok")
    return 0


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


if __name__ == "__main__":
    sys.exit(_child_main(int(sys.argv[1])))
