"""One user query at its entry peer: choose k neighbours, run M layers, aggregate locally.

A layer is this peer's own model plus the k chosen peers, each asked once on the same OpenAI API (under
`PEER_PREFIX`, where a peer just runs its model). That is the router's layer, so the router's
`PipelineRun` runs it unchanged: the layer deadline, the quorum, skipping a failed or silent peer, traces and
per-agent metrics all come with it. The query is built as a `RouterConfig` whose layers are
`[self, *neighbours]` M times and whose aggregator is this peer's own model; it makes exactly
(k+1)M+1 model calls (synthesize) or (k+1)M (vote), the count the stability condition is about.

If this peer's own model fails to aggregate before sending anything, a live neighbour aggregates instead:
the query was accepted here, and losing one model must not lose it.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from typing import Any

from kubemoe.peer.config import PeerConfig, PeerRef
from kubemoe.router.config import (
    AgentConfig,
    AggregatorConfig,
    ClientAuthConfig,
    LayerConfig,
    RouterConfig,
    UpstreamConfig,
)
from kubemoe.router.errors import AgentError
from kubemoe.router.pipeline import ChatBackend, PipelineRun
from kubemoe.router.prompts import AgentResponse
from kubemoe.router.results import Completion, StreamDelta

Clock = Callable[[], float]


class Selector:
    """Which peers a query is shared with: random k (live ones first), the ring, or the fixed graph."""

    def __init__(self, config: PeerConfig, *, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        self._by_name = {p.name: p for p in config.peers}
        self._failed_at: dict[str, float] = {}

    def mark_failed(self, name: str) -> None:
        if name in self._by_name:
            self._failed_at[name] = self.clock()

    def mark_ok(self, name: str) -> None:
        self._failed_at.pop(name, None)

    def suspect(self, name: str) -> bool:
        at = self._failed_at.get(name)
        return at is not None and self.clock() - at < self.config.suspect_seconds

    def choose(self, k: int) -> list[PeerRef]:
        topo, peers = self.config.topology, self.config.peers
        if k <= 0:
            return []
        if topo.selection == "ring":
            # The renderer lists peers in ring order starting after this peer (see render.peers).
            return list(peers[:k])
        if topo.selection == "graph":
            mine = next((g.neighbours for g in topo.graph if g.member == self.config.name), [])
            return [self._by_name[n] for n in mine[:k] if n in self._by_name]
        live = [p for p in peers if not self.suspect(p.name)]
        chosen = self.rng.sample(live, min(k, len(live)))
        if len(chosen) < k:  # too few live peers: try suspects too rather than share with fewer
            rest = [p for p in peers if p not in chosen]
            chosen += self.rng.sample(rest, min(k - len(chosen), len(rest)))
        return chosen


class Gossip:
    """Builds and runs the per-query pipeline of one peer."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        own = config.model
        self.own = own
        agg_name = "aggregator" if own.name != "aggregator" else "aggregator-self"
        self.own_aggregator = AggregatorConfig(
            name=agg_name,
            url=own.url,
            model=own.model,
            api_key_file=own.api_key_file,
            api_key_env=own.api_key_env,
            temperature=own.temperature,
            top_p=own.top_p,
            max_tokens=config.aggregator_max_tokens,
            prompt_template=config.aggregator_prompt,
        )
        # A peer is called like any upstream; it applies its own model's sampling settings itself.
        self.neighbour_agents = {
            p.name: AgentConfig(name=p.name, url=p.peer_api, model=config.pipeline, max_tokens=own.max_tokens)
            for p in config.peers
        }
        self.base = RouterConfig(
            name=config.pipeline,
            layers=[LayerConfig(agents=[own])],
            aggregator=self.own_aggregator,
            reference_prompt=config.reference_prompt,
            policy=config.policy,
            limits=config.limits,
            # This config only drives the peer's own calls (PipelineRun, HttpBackend); the peer's endpoints
            # check client keys themselves (peer.server's auth middleware, config.auth).
            auth=ClientAuthConfig(enabled=False),
        )

    def backend_config(self) -> RouterConfig:
        """Every upstream this peer may call, for `HttpBackend` (which keys API keys by agent name)."""
        agents = [self.own, *self.neighbour_agents.values()]
        chunks = [agents[i : i + 16] for i in range(0, len(agents), 16)]
        return self.base.model_copy(update={"layers": [LayerConfig(agents=c) for c in chunks]})

    def query_config(self, neighbours: Sequence[PeerRef]) -> RouterConfig:
        layer = LayerConfig.model_construct(
            agents=[self.own, *(self.neighbour_agents[p.name] for p in neighbours)]
        )
        policy = self.config.policy
        if policy.min_responses is not None and policy.min_responses > len(layer.agents):
            policy = policy.model_copy(update={"min_responses": len(layer.agents)})
        return self.base.model_copy(
            update={"layers": [layer] * self.config.topology.layers, "policy": policy}
        )

    async def answer(
        self, run: PipelineRun, responses: Sequence[AgentResponse], neighbours: Sequence[PeerRef]
    ) -> AsyncGenerator[StreamDelta, None]:
        """The final answer: a vote, or a synthesis by this peer's model (else by a neighbour's)."""
        if self.config.topology.aggregation == "vote":
            yield StreamDelta(content=vote(responses, prefer=self.own.name))
            yield StreamDelta(finish_reason="stop")
            return
        fallbacks: list[AggregatorConfig] = [
            self.own_aggregator.model_copy(
                update={"name": p.name, "url": p.peer_api, "model": self.config.pipeline}
            )
            for p in neighbours
        ]
        while True:
            sent = False
            try:
                async with aclosing(run.stream_answer(responses)) as deltas:
                    async for delta in deltas:
                        sent = sent or bool(delta.content)
                        yield delta
                return
            except AgentError:
                if sent or not fallbacks:
                    raise
                run.config = run.config.model_copy(update={"aggregator": fallbacks.pop(0)})


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def vote(responses: Sequence[AgentResponse], *, prefer: str) -> str:
    """The most frequent answer (whitespace and case ignored); ties go to `prefer`'s, then to config order."""
    counts = Counter(_normal(r.content) for r in responses)
    best = max(counts.values())
    winners = [r for r in responses if counts[_normal(r.content)] == best]
    own = [r for r in winners if r.agent == prefer]
    return (own or winners)[0].content


class MeteredBackend:
    """Wraps the HTTP backend: times calls to this peer's own model, and tells the selector who failed."""

    def __init__(
        self,
        inner: ChatBackend,
        *,
        own_url: str,
        started: Callable[[], None],
        finished: Callable[[], None],
        selector: Selector,
    ) -> None:
        self.inner = inner
        self.own_url = own_url
        self._started = started
        self._finished = finished
        self.selector = selector

    def _own(self, target: UpstreamConfig) -> bool:
        return target.url == self.own_url

    def _outcome(self, target: UpstreamConfig, ok: bool) -> None:
        if self._own(target):
            return
        if ok:
            self.selector.mark_ok(target.name)
        else:
            self.selector.mark_failed(target.name)

    async def complete(self, target: UpstreamConfig, body: dict[str, Any]) -> Completion:
        own = self._own(target)
        if own:
            self._started()
        try:
            result = await self.inner.complete(target, body)
        except AgentError:
            self._outcome(target, ok=False)
            raise
        finally:
            if own:
                self._finished()
        self._outcome(target, ok=True)
        return result

    async def stream(self, target: UpstreamConfig, body: dict[str, Any]) -> AsyncGenerator[StreamDelta, None]:
        own = self._own(target)
        if own:
            self._started()
        try:
            async with aclosing(self.inner.stream(target, body)) as deltas:
                async for delta in deltas:
                    yield delta
        except AgentError:
            self._outcome(target, ok=False)
            raise
        finally:
            if own:
                self._finished()
        self._outcome(target, ok=True)
