"""The chat completion request the router accepts: a strict schema, and the one place requests are refused.

Every problem is a 400 `RequestError` naming the field (`param`), decided before any upstream is called:

- JSON types are strict: `stream: "yes"` or `max_tokens: 5.5` is an error, not a coercion.
- A message has content, a string or a list of text/image parts; `null` only for an assistant message.
- Nesting is bounded by the schema itself: messages forbid unknown fields, so no client-built depth reaches
  an upstream; the JSON parser refuses depths beyond its own limit (a 400, not a RecursionError).
- Parameters the pipeline cannot honour (`tools`, `tool_choice`, `n > 1`, `logprobs`, `response_format`
  other than text, audio...) are refused by name, unless they hold their do-nothing value (`n: 1`,
  `tools: []`, `tool_choice: "none"`).
- Sampling parameters (`temperature`, `top_p`, `seed`, `stop`...) are accepted and not forwarded: each agent's
  sampling comes from the pipeline. Any other field is unknown, and refused like OpenAI refuses it.

`openapi_document()` describes the same schema, served at `/openapi.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from kubemoe.router.errors import RequestError

#: Accepted and not forwarded: each agent's sampling settings come from the pipeline, not the client.
IGNORED_PARAMS = (
    "temperature",
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "stop",
    "logit_bias",
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "reasoning_effort",
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
)

#: Parameters the router cannot honour -> whether a value is the do-nothing one (then it is accepted).
UNSUPPORTED_PARAMS: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v is None or v == 1,
    "logprobs": lambda v: v is None or v is False,
    "top_logprobs": lambda v: v is None or v == 0,
    "tools": lambda v: v is None or v == [],
    "tool_choice": lambda v: v is None or v == "none",
    "functions": lambda v: v is None or v == [],
    "function_call": lambda v: v is None or v == "none",
    "response_format": lambda v: v is None or v == {"type": "text"},
    "modalities": lambda v: v is None or v == ["text"],
    "audio": lambda v: v is None,
    "prediction": lambda v: v is None,
    "web_search_options": lambda v: v is None,
}

#: pydantic's names for the members of `content`'s union, which are not fields and are left out of `param`.
_UNION_TAGS = frozenset({"str", "list[ContentPart]"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageUrl(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(_Strict):
    """One part of a multi-part message: text, or an image URL (passed to backends that accept images)."""

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None


class ChatMessage(_Strict):
    """One message of the conversation, forwarded to every agent as the client sent it."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=256)
    #: What the `openai` client writes back when it replays an assistant message; null only.
    refusal: str | None = None
    tool_calls: None = None
    function_call: None = None
    audio: None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_type(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str | list):
            raise ValueError("content must be a string or a list of content parts")
        return value


class StreamOptions(_Strict):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None


class ChatRequest(BaseModel):
    """A chat completion request, as far as a Mixture-of-Agents pipeline can serve it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=256, description="The pipeline's name.")
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    moa_trace: StrictBool = Field(
        default=False, description="Include the per-agent trace (kubemoe extension)."
    )
    moa_pipeline: dict[str, Any] | None = Field(
        default=None,
        description="Run an edited copy of the pipeline: `layers` and `aggregator` as in the MoAPipeline spec, "
        "over the pipeline's own models only; 403 unless spec.playground.allowOverrides (kubemoe extension, "
        "validated in kubemoe.router.playground).",
    )
    moa_alone: dict[str, Any] | None = Field(
        default=None,
        description="Ask one of the pipeline's models on its own instead (an agent as in the MoAPipeline spec), "
        "the baseline a playground run is compared with; 403 unless spec.playground.allowOverrides (kubemoe "
        "extension, validated in kubemoe.router.playground).",
    )
    # Declared so that the schema lists them; each is refused unless it holds its do-nothing value.
    n: int | None = Field(default=None, ge=1, description="Only 1.")
    logprobs: StrictBool | None = Field(default=None, description="Not supported: only false.")
    top_logprobs: int | None = Field(default=None, ge=0, description="Not supported: only 0.")
    tools: list[Any] | None = Field(default=None, description="Not supported: only [].")
    tool_choice: Any = Field(default=None, description='Not supported: only "none".')
    functions: list[Any] | None = Field(default=None, description="Not supported: only [].")
    function_call: Any = Field(default=None, description='Not supported: only "none".')
    response_format: Any = Field(default=None, description='Only {"type": "text"}.')
    modalities: list[Any] | None = Field(default=None, description='Only ["text"].')
    audio: Any = Field(default=None, description="Not supported.")
    prediction: Any = Field(default=None, description="Not supported.")
    web_search_options: Any = Field(default=None, description="Not supported.")
    # Accepted, not forwarded (see IGNORED_PARAMS).
    temperature: Any = None
    top_p: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    seed: Any = None
    stop: Any = None
    logit_bias: Any = None
    user: Any = None
    metadata: Any = None
    store: Any = None
    service_tier: Any = None
    parallel_tool_calls: Any = None
    reasoning_effort: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None
    verbosity: Any = None

    @property
    def token_cap(self) -> int | None:
        """The client's limit on the final answer (max_completion_tokens wins, as in OpenAI's API)."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def conversation(self) -> list[dict[str, Any]]:
        """The messages as plain dicts, with only the fields the client set."""
        return [m.model_dump(mode="json", exclude_unset=True) for m in self.messages]


def _param(loc: tuple[int | str, ...]) -> str | None:
    return ".".join(str(p) for p in loc if p not in _UNION_TAGS) or None


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Validate a request body; every problem is a `RequestError` naming the offending field."""
    try:
        req = ChatRequest.model_validate_json(raw)
    except ValidationError as exc:
        # The deepest error is the most specific: for `content`'s union it is the member the value resembles.
        first = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))
        if first["type"] == "json_invalid":
            raise RequestError(f"request body is not valid JSON: {first['msg']}") from None
        if first["type"] == "model_type":
            raise RequestError("request body must be a JSON object") from None
        param = _param(first["loc"])
        if first["type"] == "extra_forbidden":
            raise RequestError(f"unrecognized request argument: {param}", param=param) from None
        why = str(first["msg"]).removeprefix("Value error, ")
        raise RequestError(f"invalid request: {param}: {why}", param=param) from None
    for name in UNSUPPORTED_PARAMS.keys() & req.model_fields_set:
        if not UNSUPPORTED_PARAMS[name](getattr(req, name)):
            raise RequestError(f"{name} is not supported by a Mixture-of-Agents pipeline", param=name)
    for i, message in enumerate(req.messages):
        if message.content is None and message.role != "assistant":
            param = f"messages.{i}.content"
            raise RequestError(
                f"invalid request: {param}: a {message.role} message needs content", param=param
            )
        if isinstance(message.content, list):
            if not message.content:
                raise RequestError(
                    f"invalid request: messages.{i}.content: a list of content parts must not be empty",
                    param=f"messages.{i}.content",
                )
            for j, part in enumerate(message.content):
                if getattr(part, part.type) is None:
                    param = f"messages.{i}.content.{j}.{part.type}"
                    raise RequestError(f"invalid request: {param}: a {part.type} part needs it", param=param)
    return req


def openapi_document(title: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document for the chat endpoint, from the same models that validate requests."""
    schema = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    }
    err_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    responses = {
        "200": {
            "description": "A chat.completion, or with stream an SSE stream of chat.completion.chunk objects.",
            "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
        },
        **{
            code: {"description": why, "content": err_ref}
            for code, why in {
                "400": "Invalid request (the error's param names the field).",
                "401": "Missing or unknown client key.",
                "404": "Unknown model.",
                "413": "Body too large.",
                "429": "Over the concurrency or rate limit (Retry-After).",
                "502": "An upstream failed.",
                "504": "A deadline passed.",
            }.items()
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"kubemoe MoA router: {title}", "version": "v1"},
        "paths": {
            "/v1/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}
                        },
                    },
                    "responses": responses,
                }
            }
        },
        "components": {"schemas": {**defs, "ChatRequest": schema, "Error": error}},
    }
