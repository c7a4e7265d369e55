"""What the `moa_trace` extension reports: per layer how it ended, per agent its outcome, answer, latency,
time to first token and tokens. Plain values (no I/O), built by `pipeline` as calls finish or are cut off.

Agent outcomes: `ok`; `error` (the cause, redacted, in `error`); `timeout` (a layer or aggregator deadline);
`cancelled` (the layer's quorum was reached first, or the request ended: `error` says which). A cancelled
streaming call keeps what it had streamed: its partial `content`, its time to first token and the usage
the upstream had reported by then, which is counted once in the request's usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kubemoe.router.results import Usage

AgentStatus = Literal["ok", "error", "timeout", "cancelled"]
LayerOutcome = Literal["all", "quorum", "deadline", "cancelled"]


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
    #: When the call started, on the request's clock (a layer's calls start together).
    start_seconds: float | None = None

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
        if self.start_seconds is not None:
            out["start_ms"] = round(self.start_seconds * 1000, 1)
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
class Progress:
    """What one streaming call has produced so far (read when the call is cut off)."""

    parts: list[str] = field(default_factory=list)
    usage: Usage | None = None
    first_token_seconds: float | None = None

    @property
    def content(self) -> str | None:
        return "".join(self.parts) if self.parts else None
