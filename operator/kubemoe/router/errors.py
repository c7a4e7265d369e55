"""The router's errors, and the one place they become OpenAI-style error bodies.

Every failure a client can see is a `RouterError`; foreign exceptions (aiohttp, asyncio timeouts, JSON,
jinja2) are mapped into this tree where they happen (`upstream`, `prompts`) and raised `from` the original,
so the handler only has to know this module. The tree::

    RouterError                      500 server_error
    ├── RequestError                 400 invalid_request_error
    │   ├── ModelNotFoundError       404 model_not_found
    │   └── PayloadTooLargeError     413 payload_too_large
    ├── AuthenticationError          401 missing_api_key / invalid_api_key (+ WWW-Authenticate)
    ├── PermissionDeniedError        403 permission_denied (a revoked key)
    ├── OverloadedError              429 rate_limit_exceeded (+ Retry-After)
    ├── RequestTimeoutError          504 request_timeout (policy.requestTimeoutSeconds)
    ├── PromptTemplateError          500 prompt_template_error  (names the agent)
    └── PipelineError                502 upstream_error
        ├── AgentError               502 one upstream call failed (names the agent and the cause)
        │   ├── UpstreamStatusError  502 the backend answered with an HTTP error
        │   ├── UpstreamTimeoutError 504 no answer in time (upstream read timeout or layer deadline)
        │   ├── UpstreamConnectionError 502 connect failure, reset, disconnect
        │   └── UpstreamProtocolError 502 the backend's answer is not valid OpenAI JSON/SSE
        └── NoResponsesError         502 a layer ended with no answer at all

Messages never contain API keys: every `AgentError` leaves `upstream` through one boundary that redacts every
configured key from its cause, before the cause is shortened (so no prefix of a key survives a cut).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar


class RouterError(Exception):
    """Base of every error the router reports to a client."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error object: `{"error": {"message", "type", "param", "code"}}`."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        """Extra response headers (Retry-After for 429)."""
        return {}


class RequestError(RouterError):
    """The client's request is malformed or asks for something the router does not do."""

    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class ModelNotFoundError(RequestError):
    """The request names a model other than the pipeline (proposer models are not served directly)."""

    status = 404
    code = "model_not_found"


class PayloadTooLargeError(RequestError):
    """The body exceeds `limits.maxRequestBodyBytes`."""

    status = 413
    code = "payload_too_large"


class AuthenticationError(RouterError):
    """No client key, or one the router does not know (the message never repeats what was sent)."""

    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]  # per instance: missing_api_key or invalid_api_key

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="kubemoe"'}


class PermissionDeniedError(RouterError):
    """A known key the pipeline refuses (`auth.revokedKeys`)."""

    status = 403
    error_type = "permission_error"
    code = "permission_denied"


class OverloadedError(RouterError):
    """More requests in flight than the pipeline sustains; the client should retry later."""

    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class RequestTimeoutError(RouterError):
    """The whole request outlived `policy.requestTimeoutSeconds`; every upstream call was cancelled."""

    status = 504
    code = "request_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the request did not complete within requestTimeoutSeconds ({seconds:g}s); upstream calls were "
            "cancelled"
        )


class PromptTemplateError(RouterError):
    """An agent's prompt template failed to render (including sandbox violations)."""

    code = "prompt_template_error"

    def __init__(self, agent: str, cause: str) -> None:
        super().__init__(f"prompt template of agent {agent!r} failed: {cause}")
        self.agent = agent
        self.cause = cause


class PipelineError(RouterError):
    """The pipeline could not produce an answer because of its backends."""

    status = 502
    code = "upstream_error"


class AgentError(PipelineError):
    """One upstream call (a proposer or the aggregator) failed; the message names the agent and the cause."""

    #: Short label for metrics and traces.
    reason: ClassVar[str] = "error"

    def __init__(self, agent: str, cause: str) -> None:
        super().__init__(f"agent {agent!r} failed: {cause}")
        self.agent = agent
        self.cause = cause

    def rewrite_cause(self, scrub: Callable[[str], str]) -> AgentError:
        """Replace the cause (and message) with `scrub(cause)` in place, dropping the exception chain.

        `upstream` calls this once, at its boundary, on every error it raises: the chain is dropped because
        a foreign exception may carry the raw upstream body (`JSONDecodeError.doc`) that was just redacted.
        """
        self.cause = scrub(self.cause)
        self.message = f"agent {self.agent!r} failed: {self.cause}"
        self.args = (self.message,)
        self.__cause__ = None
        self.__context__ = None
        self.__suppress_context__ = True
        return self


class UpstreamStatusError(AgentError):
    """The backend answered with an HTTP error status."""

    reason = "http_status"

    def __init__(self, agent: str, cause: str, *, upstream_status: int) -> None:
        super().__init__(agent, cause)
        self.upstream_status = upstream_status


class UpstreamTimeoutError(AgentError):
    """The backend did not answer in time."""

    status = 504
    code = "upstream_timeout"
    reason = "timeout"


class UpstreamConnectionError(AgentError):
    """The connection failed or was reset."""

    reason = "connection"


class UpstreamProtocolError(AgentError):
    """The backend's body is not a valid OpenAI chat completion (JSON or SSE)."""

    reason = "protocol"


class NoResponsesError(PipelineError):
    """A layer ended without a single answer; the message lists why each agent gave none."""

    code = "no_responses"
