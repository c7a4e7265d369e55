"""The OpenAI wire format the router answers in: response and chunk bodies (requests: `request`).

Streaming trace extension: with `moa_trace`, agent answers arrive before the aggregator's tokens as extra
`chat.completion.chunk` objects with an empty `choices` list and a `moa` field (the event). The official
`openai` client parses every SSE event as a chunk, whatever its `event:` name, so a custom event name would
break it. An empty-`choices` chunk is what OpenAI itself sends for `include_usage`, so clients already expect it.
The full trace comes in a last such chunk, under `moa_trace`, just before `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any


class CompletionIds:
    """The id, timestamp and model every body of one response shares."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-moa-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def chunk(
        self,
        *,
        delta: dict[str, Any] | None = None,
        finish_reason: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A `chat.completion.chunk`; without `delta`, one with no choices (usage, trace events)."""
        choices: list[dict[str, Any]] = []
        if delta is not None:
            choices.append({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason})
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }

    def completion(self, *, content: str, finish_reason: str | None, usage: dict[str, int]) -> dict[str, Any]:
        """A whole `chat.completion`."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": finish_reason or "stop",
                }
            ],
            "usage": usage,
        }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying `data` (JSON unless already a string, e.g. `[DONE]`)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
