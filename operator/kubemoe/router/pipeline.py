"""The Mixture-of-Agents algorithm for one request: proposer layers in parallel, then the aggregator's stream.

Layer 1's agents answer the client's conversation in parallel. Every later layer's agents see the previous
layer's answers through their prompt templates. The aggregator gets the final layer's answers in its
aggregate-and-synthesize prompt, and its stream is yielded as it arrives.

Each layer has a deadline and a quorum (`policy`). It moves on as soon as `minResponses` agents have answered,
cancelling the others. If the deadline comes first, it moves on with whatever has arrived. A failed agent
(including one still running at the deadline) is either skipped or fails the request, as
`policy.onAgentError` says. A layer that ends with no answer always fails the request. Cancelling the task
that runs this code cancels every upstream call in flight: each call is a child task, and the `finally`
blocks cancel the children and wait for them, so their connections close before the request ends.

Backends and metrics come in through the `ChatBackend` and `PipelineObserver` protocols declared here. Tests
can then run this module against fakes, and this module never imports aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from kubemoe.api.moapipeline import DEFAULT_AGGREGATOR_PROMPT
from kubemoe.router.config import AgentConfig, Policy, RouterConfig, UpstreamConfig
from kubemoe.router.errors import AgentError, NoResponsesError, PromptTemplateError, UpstreamTimeoutError
from kubemoe.router.prompts import (
    DEFAULT_LIMITS,
    AgentResponse,
    render_agent_prompt,
    render_aggregator_prompt,
    with_system_prompt,
)
from kubemoe.router.results import Completion, StreamDelta, Usage
from kubemoe.router.trace import AgentStatus, AgentTrace, LayerOutcome, LayerTrace, Progress
from kubemoe.router.watchdog import StreamWatchdog

log = logging.getLogger("kubemoe.router")

#: The layer number the aggregator is reported under (as in the MoAPipeline status).
AGGREGATOR_LAYER = 0


class ChatBackend(Protocol):
    """What the pipeline needs from the network: one completion, or one stream."""

    async def complete(self, target: UpstreamConfig, body: dict[str, Any]) -> Completion: ...

    def stream(self, target: UpstreamConfig, body: dict[str, Any]) -> AsyncGenerator[StreamDelta, None]: ...


class PipelineObserver(Protocol):
    """Where the pipeline reports what metrics count."""

    def agent_finished(
        self,
        *,
        agent: str,
        layer: int,
        seconds: float,
        error_reason: str | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None: ...

    def quorum_short_circuit(self, *, layer: int) -> None: ...

    def layer_deadline(self, *, layer: int) -> None: ...


#: Receives trace events as they happen (the streaming trace extension and the playground).
EventSink = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class _Outcome:
    agent: AgentConfig
    completion: Completion | None
    error: AgentError | None
    seconds: float


@dataclass
class PipelineRun:
    """The state of one request through the pipeline: answers, traces and summed usage."""

    config: RouterConfig
    backend: ChatBackend
    observer: PipelineObserver
    messages: Sequence[Mapping[str, Any]]
    #: The client's max_tokens, if any: caps the aggregator's.
    max_tokens: int | None = None
    on_event: EventSink | None = None
    #: Stream proposers' answers (set with the trace: it gets their TTFT and `agent_delta` events).
    stream_proposers: bool = False
    usage: Usage = field(default_factory=Usage)
    layers: list[LayerTrace] = field(default_factory=list)
    aggregator: AgentTrace | None = None
    #: The run's clock: each call's trace says when it started on it (the playground's timeline).
    started: float = field(default_factory=time.monotonic)

    async def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            await self.on_event(event)

    def _record(self, trace: AgentTrace, error: AgentError | None) -> None:
        if trace.usage is not None:
            self.usage = self.usage + trace.usage
        if trace.status == "cancelled":
            return  # not a failure, and its latency says nothing about the backend
        self.observer.agent_finished(
            agent=trace.agent,
            layer=trace.layer,
            seconds=trace.latency_seconds,
            error_reason=error.reason if error else (None if trace.status == "ok" else trace.status),
            prompt_tokens=trace.usage.prompt_tokens if trace.usage else 0,
            completion_tokens=trace.usage.completion_tokens if trace.usage else 0,
        )
        if error is not None or trace.status == "timeout":
            log.warning("agent %s (layer %d) %s: %s", trace.agent, trace.layer, trace.status, trace.error)

    async def run_layers(self) -> list[AgentResponse]:
        """Run every proposer layer; the final layer's answers, in config order."""
        responses: list[AgentResponse] = []
        for number, layer in enumerate(self.config.layers, start=1):
            responses = await self._run_layer(number, layer.agents, responses)
        return responses

    async def _call(
        self, agent: AgentConfig, body: dict[str, Any], layer: int, progress: Progress
    ) -> _Outcome:
        start = time.monotonic()
        try:
            if not self.stream_proposers:
                completion = await self.backend.complete(agent, body)
            else:
                completion = await self._stream_proposer(agent, body, layer, progress, start)
        except AgentError as exc:
            return _Outcome(agent, None, exc, time.monotonic() - start)
        return _Outcome(agent, completion, None, time.monotonic() - start)

    async def _stream_proposer(
        self, agent: AgentConfig, body: dict[str, Any], layer: int, progress: Progress, start: float
    ) -> Completion:
        """With a streamed trace, proposers stream too: each token goes out as an `agent_delta` event, and
        `progress` keeps what arrived, for the trace of a call that is cut off."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        finish: str | None = None
        async with aclosing(self.backend.stream(agent, body)) as deltas:
            async for delta in deltas:
                if delta.usage is not None:
                    progress.usage = delta.usage  # cumulative, as OpenAI and vLLM report it
                finish = delta.finish_reason or finish
                if delta.content:
                    if progress.first_token_seconds is None:
                        progress.first_token_seconds = time.monotonic() - start
                    progress.parts.append(delta.content)
                    await self._emit(
                        {"type": "agent_delta", "layer": layer, "agent": agent.name, "content": delta.content}
                    )
        return Completion(content=progress.content or "", usage=progress.usage, finish_reason=finish)

    async def _run_layer(
        self, number: int, agents: Sequence[AgentConfig], previous: Sequence[AgentResponse]
    ) -> list[AgentResponse]:
        policy = self.config.policy
        # Render every prompt before calling anyone: a template error is a config bug and fails the request.
        bodies = [
            _agent_body(
                agent,
                self.messages,
                _agent_prompt(agent, self.config.reference_prompt, previous, number),
            )
            for agent in agents
        ]
        await self._emit(
            {
                "type": "layer_start",
                "layer": number,
                "agents": [{"agent": a.name, "model": a.model} for a in agents],
            }
        )
        start = time.monotonic()
        deadline = start + policy.layer_timeout_seconds
        progress = {a.name: Progress() for a in agents}
        tasks = {
            asyncio.create_task(self._call(a, b, number, progress[a.name]), name=f"moa-{a.name}"): a
            for a, b in zip(agents, bodies, strict=True)
        }
        pending = set(tasks)
        quorum = policy.quorum(len(agents))
        traces: dict[str, AgentTrace] = {}
        answers: dict[str, AgentResponse] = {}
        try:
            while pending and len(answers) < quorum:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                for task in sorted(done, key=lambda t: agents.index(tasks[t])):
                    outcome = task.result()
                    trace = _trace_of(number, outcome, progress[outcome.agent.name])
                    trace.start_seconds = start - self.started
                    traces[outcome.agent.name] = trace
                    self._record(trace, outcome.error)
                    await self._emit({"type": "agent", **trace.to_dict()})
                    if outcome.error is not None:
                        if policy.on_agent_error == "fail":
                            raise outcome.error
                    else:
                        answers[outcome.agent.name] = AgentResponse(outcome.agent.name, trace.content or "")
        except asyncio.CancelledError:
            # The request deadline or a client disconnect: the trace (sent with a mid-stream error) still
            # shows which agents were cut off.
            elapsed = time.monotonic() - start
            for agent in agents:
                if agent.name not in traces:
                    trace = _cut_off(
                        number,
                        agent,
                        status="cancelled",
                        seconds=elapsed,
                        why="request ended first",
                        progress=progress[agent.name],
                    )
                    trace.start_seconds = start - self.started
                    traces[agent.name] = trace
                    self._record(trace, None)
            self.layers.append(LayerTrace(number, "cancelled", elapsed, [traces[a.name] for a in agents]))
            raise
        finally:
            await _cancel_all(pending)

        outcome_kind: LayerOutcome = "all"
        if pending:
            elapsed = time.monotonic() - start
            if len(answers) >= quorum:
                outcome_kind = "quorum"
                self.observer.quorum_short_circuit(layer=number)
                status: AgentStatus = "cancelled"
                why = f"cancelled: quorum of {quorum} reached"
            else:
                outcome_kind = "deadline"
                self.observer.layer_deadline(layer=number)
                status = "timeout"
                why = f"no answer within the layer deadline of {policy.layer_timeout_seconds:g}s"
            for task in sorted(pending, key=lambda t: agents.index(tasks[t])):
                agent = tasks[task]
                late = progress[agent.name]
                if not task.cancelled() and (result := task.result()).completion is not None:
                    # It finished while being cancelled: its usage was spent, so it is counted (once).
                    late.usage = result.completion.usage
                trace = _cut_off(number, agent, status=status, seconds=elapsed, why=why, progress=late)
                trace.start_seconds = start - self.started
                traces[agent.name] = trace
                self._record(trace, None)
                await self._emit({"type": "agent", **trace.to_dict()})
            if status == "timeout" and policy.on_agent_error == "fail":
                first = tasks[min(pending, key=lambda t: agents.index(tasks[t]))]
                raise UpstreamTimeoutError(first.name, why)

        self.layers.append(
            LayerTrace(number, outcome_kind, time.monotonic() - start, [traces[a.name] for a in agents])
        )
        await self._emit(
            {"type": "layer_end", "layer": number, "outcome": outcome_kind, "responses": len(answers)}
        )
        if not answers:
            causes = "; ".join(f"{t.agent}: {t.error}" for t in (traces[a.name] for a in agents))
            raise NoResponsesError(f"layer {number}: no agent answered ({causes})")
        return [answers[a.name] for a in agents if a.name in answers]

    async def stream_answer(self, responses: Sequence[AgentResponse]) -> AsyncGenerator[StreamDelta, None]:
        """The aggregator's answer over `responses`, chunk by chunk as the upstream streams it."""
        agg = self.config.aggregator
        if agg.prompt_template == DEFAULT_AGGREGATOR_PROMPT:
            system = default_aggregator_prompt(agg.name, responses)
        else:
            system = render_aggregator_prompt(
                agent=agg.name,
                template=agg.prompt_template,
                responses=responses,
                layer=len(self.config.layers) + 1,
            )
        body = _agent_body(agg, self.messages, system)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        if self.max_tokens is not None:
            body["max_tokens"] = min(agg.max_tokens, self.max_tokens)
        await self._emit({"type": "aggregator_start", "agent": agg.name, "model": agg.model})
        policy = self.config.policy
        start = time.monotonic()
        first: float | None = None
        usage: Usage | None = None
        status: AgentStatus = "cancelled"
        error: AgentError | None = None
        watchdog = StreamWatchdog(
            deadline_seconds=policy.aggregator_timeout_seconds,
            idle_seconds=policy.stream_idle_timeout_seconds,
        )
        try:
            # aclosing: when our caller stops early, the upstream stream (and its connection) closes now.
            async with aclosing(self.backend.stream(agg, body)) as deltas:
                chunks = aiter(deltas)
                while True:
                    # Only time spent waiting on the upstream is idle time, never time spent writing to the
                    # client; the aggregator deadline is absolute, so a stream that drips tokens ends too.
                    try:
                        watchdog.start_wait()
                        delta = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    except asyncio.CancelledError:
                        if watchdog.cancelled_by_me():
                            raise UpstreamTimeoutError(agg.name, _why_late(policy, watchdog)) from None
                        raise
                    except TimeoutError:
                        raise UpstreamTimeoutError(agg.name, _why_late(policy, watchdog)) from None
                    finally:
                        watchdog.stop_wait()
                    if delta.content and first is None:
                        first = time.monotonic() - start
                    if delta.usage is not None:
                        usage = delta.usage
                    yield delta
            status = "ok"
        except AgentError as exc:
            status, error = ("timeout" if isinstance(exc, UpstreamTimeoutError) else "error"), exc
            raise
        finally:
            watchdog.close()
            self.aggregator = AgentTrace(
                AGGREGATOR_LAYER,
                agg.name,
                agg.model,
                status,
                time.monotonic() - start,
                error=error.cause if error else None,
                usage=usage,
                time_to_first_token_seconds=first,
                start_seconds=start - self.started,
            )
            self._record(self.aggregator, error)

    def trace(self) -> dict[str, Any]:
        """The `moa_trace` extension: every layer's and agent's output, latency and tokens."""
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "aggregator": self.aggregator.to_dict() if self.aggregator else None,
            "usage": self.usage.to_dict(),
        }


def _agent_prompt(
    agent: AgentConfig, reference_prompt: str, previous: Sequence[AgentResponse], layer: int
) -> str:
    # Without answers to show, a prompt depends on the config alone: render it once (unless it draws from
    # jinja2's `random` filter, the one impure thing a sandboxed template can do).
    if not previous and "random" not in f"{agent.system_prompt}{reference_prompt}":
        return _prompt_without_answers(agent.name, agent.system_prompt, reference_prompt, layer)
    return render_agent_prompt(
        agent=agent.name,
        system_prompt=agent.system_prompt,
        reference_prompt=reference_prompt,
        responses=previous,
        layer=layer,
    )


@lru_cache(maxsize=1024)
def _prompt_without_answers(agent: str, system_prompt: str | None, reference_prompt: str, layer: int) -> str:
    """Layer 1's prompts (templates are pure functions of their variables; errors are not cached)."""
    return render_agent_prompt(
        agent=agent, system_prompt=system_prompt, reference_prompt=reference_prompt, responses=(), layer=layer
    )


#: The default aggregator template is text, then one line per answer: `_AGGREGATOR_HEAD` + "1. answer\n"...
_AGGREGATOR_HEAD, _AGGREGATOR_LOOP = DEFAULT_AGGREGATOR_PROMPT.split("{% for", 1)
assert _AGGREGATOR_LOOP == " r in responses %}{{ loop.index }}. {{ r.content }}\n{% endfor %}", (
    "template changed"
)


def default_aggregator_prompt(agent: str, responses: Sequence[AgentResponse]) -> str:
    """`DEFAULT_AGGREGATOR_PROMPT` rendered without jinja2: the same text (a test compares both on generated
    answers), at a fraction of a sandboxed render's cost, which was the largest share of the pipeline's own
    CPU per request. The sandbox's output cap still applies."""
    text = _AGGREGATOR_HEAD + "".join(f"{i}. {r.content}\n" for i, r in enumerate(responses, start=1))
    if len(text) > DEFAULT_LIMITS.max_output_chars:
        raise PromptTemplateError(
            agent, f"TemplateLimitError: output exceeds {DEFAULT_LIMITS.max_output_chars} characters"
        )
    return text


def _why_late(policy: Policy, watchdog: StreamWatchdog) -> str:
    if watchdog.expired == "idle":
        return f"stream idle for more than streamIdleTimeoutSeconds ({policy.stream_idle_timeout_seconds:g}s)"
    return f"no complete answer within aggregatorTimeoutSeconds ({policy.aggregator_timeout_seconds:g}s)"


def _agent_body(agent: UpstreamConfig, messages: Sequence[Mapping[str, Any]], system: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": agent.model,
        "messages": with_system_prompt(messages, system),
        "temperature": agent.temperature,
        "max_tokens": agent.max_tokens,
        "stream": False,
    }
    if agent.top_p is not None:
        body["top_p"] = agent.top_p
    return body


def _trace_of(layer: int, outcome: _Outcome, progress: Progress) -> AgentTrace:
    agent = outcome.agent
    if outcome.error is not None:
        status: AgentStatus = "timeout" if isinstance(outcome.error, UpstreamTimeoutError) else "error"
        return _cut_off(
            layer, agent, status=status, seconds=outcome.seconds, why=outcome.error.cause, progress=progress
        )
    assert outcome.completion is not None
    c = outcome.completion
    return AgentTrace(
        layer,
        agent.name,
        agent.model,
        "ok",
        outcome.seconds,
        content=c.content,
        usage=c.usage,
        time_to_first_token_seconds=progress.first_token_seconds,
    )


def _cut_off(
    layer: int, agent: AgentConfig, *, status: AgentStatus, seconds: float, why: str, progress: Progress
) -> AgentTrace:
    """The trace of a call that did not finish: what it had streamed, and the usage reported so far."""
    return AgentTrace(
        layer,
        agent.name,
        agent.model,
        status,
        seconds,
        content=progress.content,
        error=why,
        usage=progress.usage,
        time_to_first_token_seconds=progress.first_token_seconds,
    )


async def _cancel_all(tasks: set[asyncio.Task[_Outcome]]) -> None:
    """Cancel `tasks` and wait until they have finished, so their upstream connections are closed."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
