"""What upstream calls return, as plain values: shared by `upstream` (which parses them) and `pipeline`
(which must not import aiohttp).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Usage:
    """Token counts as OpenAI reports them; `+` sums calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    @classmethod
    def parse(cls, raw: Any) -> Usage | None:
        """Usage from a response's `usage` object; None if absent or not a mapping of integers."""
        if not isinstance(raw, Mapping):
            return None
        try:
            prompt = int(raw.get("prompt_tokens") or 0)
            completion = int(raw.get("completion_tokens") or 0)
            total = int(raw.get("total_tokens") or prompt + completion)
        except (TypeError, ValueError):
            return None
        return cls(prompt, completion, total)


@dataclass(frozen=True)
class Completion:
    """A proposer's whole answer."""

    content: str
    usage: Usage | None
    finish_reason: str | None


@dataclass(frozen=True)
class StreamDelta:
    """One parsed chunk of the aggregator's stream: new text, a finish reason, or the final usage."""

    content: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
