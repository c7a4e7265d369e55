"""The OpenAI wire format the router speaks: request validation and response/chunk bodies.

Only what the router needs is modelled; other request fields (`temperature`, `user`, `seed`...) are accepted
and ignored, because each agent's sampling settings come from the pipeline. Fields the router cannot honour
(`n > 1`, tools) are rejected with 400 rather than silently dropped.

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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubemoe.router.errors import RequestError


class ChatMessage(BaseModel):
    """One message; anything beyond `role` passes through to the backends untouched."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The subset of an OpenAI chat completion request the router reads."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    moa_trace: bool = False

    @property
    def token_cap(self) -> int | None:
        """The client's limit on the final answer (max_completion_tokens wins, as in OpenAI's API)."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def conversation(self) -> list[dict[str, Any]]:
        """The messages as plain dicts, exactly as the client sent them."""
        return [m.model_dump(mode="json", exclude_unset=True) for m in self.messages]


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Validate a request body; every problem is a `RequestError` naming the offending field."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise RequestError(f"invalid request: {param}: {first['msg']}", param=param) from exc
    if req.n is not None and req.n > 1:
        raise RequestError("n > 1 is not supported by a Mixture-of-Agents pipeline", param="n")
    for unsupported in ("tools", "functions", "tool_choice", "function_call"):
        if data.get(unsupported):
            raise RequestError(f"{unsupported} is not supported by the router", param=unsupported)
    return req


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
