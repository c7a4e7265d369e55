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
from typing import Any, Literal, Protocol

from kubemoe.router.config import AgentConfig, RouterConfig, UpstreamConfig
from kubemoe.router.errors import AgentError, NoResponsesError, UpstreamTimeoutError
from kubemoe.router.prompts import (
    AgentResponse,
    render_agent_prompt,
    render_aggregator_prompt,
    with_system_prompt,
)
from kubemoe.router.results import Completion, StreamDelta, Usage

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

AgentStatus = Literal["ok", "error", "timeout", "cancelled"]
LayerOutcome = Literal["all", "quorum", "deadline"]


@dataclass
class AgentTrace:
    """What one upstream call did: its answer or error, latency and tokens."""

    layer: int
    agent: str
    model: str
    status: AgentStatus
    latency_seconds: float
    content: str | None = None
    error: str | None = None
    usage: Usage | None = None
    time_to_first_token_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layer": self.layer,
            "agent": self.agent,
            "model": self.model,
            "status": self.status,
            "latency_ms": round(self.latency_seconds * 1000, 1),
            "usage": self.usage.to_dict() if self.usage else None,
        }
        if self.content is not None:
            out["content"] = self.content
        if self.error is not None:
            out["error"] = self.error
        if self.time_to_first_token_seconds is not None:
            out["time_to_first_token_ms"] = round(self.time_to_first_token_seconds * 1000, 1)
        return out


@dataclass
class LayerTrace:
    """One proposer layer: how it ended and what each agent did (in config order)."""

    layer: int
    outcome: LayerOutcome
    elapsed_seconds: float
    agents: list[AgentTrace]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "outcome": self.outcome,
            "elapsed_ms": round(self.elapsed_seconds * 1000, 1),
            "agents": [a.to_dict() for a in self.agents],
        }


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
    usage: Usage = field(default_factory=Usage)
    layers: list[LayerTrace] = field(default_factory=list)
    aggregator: AgentTrace | None = None

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

    async def _call(self, agent: AgentConfig, body: dict[str, Any]) -> _Outcome:
        start = time.monotonic()
        try:
            completion = await self.backend.complete(agent, body)
        except AgentError as exc:
            return _Outcome(agent, None, exc, time.monotonic() - start)
        return _Outcome(agent, completion, None, time.monotonic() - start)

    async def _run_layer(
        self, number: int, agents: Sequence[AgentConfig], previous: Sequence[AgentResponse]
    ) -> list[AgentResponse]:
        policy = self.config.policy
        # Render every prompt before calling anyone: a template error is a config bug and fails the request.
        bodies = [
            _agent_body(
                agent,
                self.messages,
                render_agent_prompt(
                    agent=agent.name,
                    system_prompt=agent.system_prompt,
                    reference_prompt=self.config.reference_prompt,
                    responses=previous,
                    layer=number,
                ),
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
        tasks = {
            asyncio.create_task(self._call(a, b), name=f"moa-{a.name}"): a
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
                    trace = _trace_of(number, outcome)
                    traces[outcome.agent.name] = trace
                    self._record(trace, outcome.error)
                    await self._emit({"type": "agent", **trace.to_dict()})
                    if outcome.error is not None:
                        if policy.on_agent_error == "fail":
                            raise outcome.error
                    else:
                        answers[outcome.agent.name] = AgentResponse(outcome.agent.name, trace.content or "")
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
                trace = AgentTrace(number, agent.name, agent.model, status, elapsed, error=why)
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
        start = time.monotonic()
        first: float | None = None
        usage: Usage | None = None
        status: AgentStatus = "cancelled"
        error: AgentError | None = None
        try:
            # aclosing: when our caller stops early, the upstream stream (and its connection) closes now.
            async with aclosing(self.backend.stream(agg, body)) as deltas:
                async for delta in deltas:
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
            self.aggregator = AgentTrace(
                AGGREGATOR_LAYER,
                agg.name,
                agg.model,
                status,
                time.monotonic() - start,
                error=error.cause if error else None,
                usage=usage,
                time_to_first_token_seconds=first,
            )
            self._record(self.aggregator, error)

    def trace(self) -> dict[str, Any]:
        """The `moa_trace` extension: every layer's and agent's output, latency and tokens."""
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "aggregator": self.aggregator.to_dict() if self.aggregator else None,
            "usage": self.usage.to_dict(),
        }


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


def _trace_of(layer: int, outcome: _Outcome) -> AgentTrace:
    agent = outcome.agent
    if outcome.error is not None:
        status: AgentStatus = "timeout" if isinstance(outcome.error, UpstreamTimeoutError) else "error"
        return AgentTrace(layer, agent.name, agent.model, status, outcome.seconds, error=outcome.error.cause)
    assert outcome.completion is not None
    c = outcome.completion
    return AgentTrace(layer, agent.name, agent.model, "ok", outcome.seconds, content=c.content, usage=c.usage)


async def _cancel_all(tasks: set[asyncio.Task[_Outcome]]) -> None:
    """Cancel `tasks` and wait until they have finished, so their upstream connections are closed."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
