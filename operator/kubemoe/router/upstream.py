"""Calls to OpenAI-compatible backends (vLLM, SGLang, hosted APIs): the router's only network client.

This is the boundary where foreign failures become router errors: connection errors, timeouts,
HTTP error statuses, invalid JSON and malformed SSE all leave this module as `AgentError` subclasses that name
the agent and the cause. Every such error leaves through one boundary, `HttpBackend._scrub`, which removes
every configured key from the cause and only then shortens it: a backend that rejects a key may quote it back
("invalid api key sk-..."), in an error status, a 200 with an `error` object, a body that is not JSON, a
malformed SSE line or a mid-stream error event, and none of that may reach logs, traces or clients.

One `http1.HttpClient` (owned by the server's cleanup context) serves every upstream; it caps
connections per upstream host (`RouterConfig.pool_size`: derived from the concurrency limit unless set), so
one slow model cannot take all sockets, yet an admitted request never waits for one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from kubemoe.router.config import RouterConfig, UpstreamConfig, UpstreamLimits
from kubemoe.router.errors import (
    AgentError,
    UpstreamConnectionError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from kubemoe.router.http1 import HttpClient, HttpConnectionError, Response
from kubemoe.router.redact import StreamRedactor, redact
from kubemoe.router.results import Completion, StreamDelta, Usage

#: How much of an upstream error body is read and quoted; the rest is noise for a client.
_MAX_ERROR_BODY = 4096
_MAX_QUOTE = 300


class ApiKey:
    """An upstream's bearer token, read from a mounted Secret file or an env var; never printed.

    The file is re-read when its mtime changes, so a rotated Secret takes effect without a restart (the
    kubelet updates mounted Secrets in place).
    """

    def __init__(self, *, file: str | None = None, env: str | None = None) -> None:
        self._file = file
        self._env = env
        self._cached: tuple[float, str] | None = None

    def __repr__(self) -> str:
        source = f"file={self._file!r}" if self._file else f"env={self._env!r}" if self._env else "none"
        return f"ApiKey({source}, value=***)"

    def get(self) -> str | None:
        """The token, or None when the upstream needs none; raises OSError/KeyError if it cannot be read."""
        if self._env:
            return os.environ[self._env].strip()
        if not self._file:
            return None
        path = Path(self._file)
        mtime = path.stat().st_mtime
        if self._cached is None or self._cached[0] != mtime:
            self._cached = (mtime, path.read_text(encoding="utf-8").strip())
        return self._cached[1]

    def peek(self) -> str | None:
        """The token if it can be read, else None (used only to redact it)."""
        try:
            return self.get()
        except (OSError, KeyError):
            return None


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_QUOTE else text[:_MAX_QUOTE] + "..."


def build_session(limits: UpstreamLimits, pool_size: int) -> HttpClient:
    """The shared upstream client: `pool_size` connections per host (`RouterConfig.pool_size`, or the
    peer's), the connect and read timeouts; no cookies, no env proxies (`http1` has neither)."""
    return HttpClient(
        pool_size=pool_size,
        connect_timeout=limits.connect_timeout_seconds,
        read_timeout=limits.read_timeout_seconds,
    )


class HttpBackend:
    """Calls the upstreams of one RouterConfig over a shared client (the `ChatBackend` of `pipeline`)."""

    def __init__(self, session: HttpClient, config: RouterConfig) -> None:
        self._session = session
        upstreams: list[UpstreamConfig] = [a for layer in config.layers for a in layer.agents] + [
            config.aggregator
        ]
        self._keys = {u.name: ApiKey(file=u.api_key_file, env=u.api_key_env) for u in upstreams}
        self._any_key = any(u.api_key_file or u.api_key_env for u in upstreams)
        self._urls: dict[str, str] = {}

    def _secrets(self) -> list[str | None]:
        return [k.peek() for k in self._keys.values()]

    def _answer_secrets(self) -> list[str]:
        """Every upstream's key, to be kept out of answers (`redact`); empty when no upstream has one."""
        return [k for k in self._secrets() if k] if self._any_key else []

    def _url(self, target: UpstreamConfig) -> str:
        url = self._urls.get(target.url)
        if url is None:
            url = self._urls[target.url] = f"{target.url.rstrip('/')}/chat/completions"
        return url

    def _headers(self, target: UpstreamConfig, *, stream: bool) -> list[tuple[str, str]]:
        headers = [
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream" if stream else "application/json"),
        ]
        try:
            key = self._keys[target.name].get()
        except (OSError, KeyError) as exc:
            # The exception names the file or variable, never the value.
            source = target.api_key_file or target.api_key_env
            raise AgentError(target.name, f"cannot read API key from {source}: {type(exc).__name__}") from exc
        if key:
            headers.append(("Authorization", f"Bearer {key}"))
        return headers

    async def _fail_on_status(self, target: UpstreamConfig, resp: Response) -> None:
        if resp.status == 200:
            return
        raw = (await resp.read(_MAX_ERROR_BODY)).decode("utf-8", "replace")
        detail = raw
        try:
            parsed = orjson.loads(raw)
            if isinstance(parsed, dict):
                err = parsed.get("error", parsed)
                detail = str(err.get("message", err) if isinstance(err, dict) else err)
        except ValueError:
            pass
        raise UpstreamStatusError(
            target.name, f"upstream returned HTTP {resp.status}: {detail}", upstream_status=resp.status
        )

    def _scrub(self, exc: AgentError) -> AgentError:
        """The one exit of every error: redact every key, then shorten (a cut must not keep a key's prefix)."""
        secrets = self._secrets()
        return exc.rewrite_cause(lambda cause: _quote(redact(cause, secrets)))

    def _map(self, target: UpstreamConfig, exc: BaseException) -> AgentError:
        """Foreign exception -> AgentError; most specific first."""
        if isinstance(exc, AgentError):
            return exc
        cause = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            return UpstreamTimeoutError(target.name, f"upstream timed out ({cause})")
        if isinstance(exc, HttpConnectionError) and exc.lost:
            return UpstreamConnectionError(target.name, cause)
        if isinstance(exc, ConnectionError):
            return UpstreamConnectionError(target.name, f"connection failed: {cause}")
        return UpstreamProtocolError(target.name, f"invalid response: {cause}")

    async def complete(self, target: UpstreamConfig, body: dict[str, Any]) -> Completion:
        """A non-streaming chat completion."""
        try:
            payload = orjson.dumps(body)
            async with await self._session.post(
                self._url(target), payload, self._headers(target, stream=False)
            ) as resp:
                await self._fail_on_status(target, resp)
                raw = await resp.read()
            whole = _parse_completion(target, raw)
            secrets = self._answer_secrets()
            return replace(whole, content=redact(whole.content, secrets)) if secrets else whole
        except AgentError as exc:
            raise self._scrub(exc) from None
        except (TimeoutError, ConnectionError, ValueError, TypeError) as exc:
            raise self._scrub(self._map(target, exc)) from None

    async def stream(self, target: UpstreamConfig, body: dict[str, Any]) -> AsyncGenerator[StreamDelta, None]:
        """A streaming chat completion, chunk by chunk; closing the generator closes the connection."""
        try:
            payload = orjson.dumps(body)
            async with await self._session.post(
                self._url(target), payload, self._headers(target, stream=True)
            ) as resp:
                await self._fail_on_status(target, resp)
                secrets = self._answer_secrets()
                if resp.content_type == "application/json":
                    # A backend that ignores `stream` (or answers an error as JSON with 200): one whole answer.
                    whole = _parse_completion(target, await resp.read())
                    content = redact(whole.content, secrets)
                    yield StreamDelta(content, whole.finish_reason or "stop", whole.usage)
                    return
                redactor = StreamRedactor(secrets) if secrets else None
                saw_finish = False
                async for data in _iter_sse_data(resp.iter_any()):
                    if data == b"[DONE]":
                        if redactor is not None and (held := redactor.flush()):
                            yield StreamDelta(content=held)
                        return
                    delta = _parse_chunk(target, data)
                    saw_finish = saw_finish or delta.finish_reason is not None
                    if redactor is not None:
                        text = redactor.feed(delta.content)
                        delta = replace(
                            delta, content=text + redactor.flush() if delta.finish_reason else text
                        )
                    yield delta
                if not saw_finish:
                    raise UpstreamProtocolError(target.name, "stream ended before [DONE]")
        except AgentError as exc:
            raise self._scrub(exc) from None
        except (TimeoutError, ConnectionError, ValueError, TypeError) as exc:
            raise self._scrub(self._map(target, exc)) from None


async def _iter_sse_data(blocks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The `data` of each server-sent event (multi-line data joined; comments and other fields ignored).

    Works on whatever has arrived (one block per network read) and splits it here: one await per read rather
    than one per line, which is most of the cost of a fast stream. Stays in bytes: the JSON parser takes them.
    """
    lines: list[bytes] = []
    rest = b""
    async for block in blocks:
        *complete, rest = (rest + block).split(b"\n") if rest else block.split(b"\n")
        for raw in complete:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if lines:
                    yield lines[0] if len(lines) == 1 else b"\n".join(lines)
                    lines = []
            elif line.startswith(b"data:"):
                lines.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif line[0] != 58:  # ":" starts a comment
                _sse_field(line, lines)
    if rest.strip() and not rest.startswith(b":"):
        _sse_field(rest.rstrip(b"\r"), lines)
    if lines:
        yield b"\n".join(lines)


def _sse_field(line: bytes, lines: list[bytes]) -> None:
    field, _, value = line.partition(b":")
    if field == b"data":
        lines.append(value[1:] if value.startswith(b" ") else value)
    elif field not in (b"event", b"id", b"retry"):
        raise ValueError(f"malformed SSE line {line[:_MAX_ERROR_BODY].decode('utf-8', 'replace')!r}")


def _upstream_error(target: UpstreamConfig, data: Mapping[str, Any]) -> AgentError:
    err = data.get("error")
    message = err.get("message") if isinstance(err, Mapping) else err
    return AgentError(target.name, f"upstream reported an error: {message}")


def _loads(target: UpstreamConfig, raw: bytes | str, what: str) -> Any:
    """JSON from an upstream; the error quotes the text (the boundary redacts and shortens it)."""
    try:
        return orjson.loads(raw)
    except ValueError as exc:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        raise UpstreamProtocolError(target.name, f"{what} (not JSON): {text[:_MAX_ERROR_BODY]!r}") from exc


def _parse_completion(target: UpstreamConfig, raw: bytes) -> Completion:
    data = _loads(target, raw, "response body")
    if isinstance(data, Mapping) and data.get("error"):
        raise _upstream_error(target, data)
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        if not isinstance(content, str):
            raise TypeError("message content is not a string")
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        snippet = raw[:_MAX_QUOTE].decode("utf-8", "replace")
        raise UpstreamProtocolError(
            target.name, f"not a chat completion: {type(exc).__name__}: {exc}: {snippet}"
        ) from exc
    return Completion(content=content, usage=Usage.parse(data.get("usage")), finish_reason=finish)


def _parse_chunk(target: UpstreamConfig, raw: bytes) -> StreamDelta:
    data = _loads(target, raw, "malformed SSE data")
    if not isinstance(data, Mapping):
        raise UpstreamProtocolError(target.name, "malformed SSE data (not an object)")
    if data.get("error"):
        raise _upstream_error(target, data)
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise UpstreamProtocolError(target.name, "malformed chunk: no choices list")
    usage = Usage.parse(data.get("usage"))
    if not choices:
        return StreamDelta(usage=usage)
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, Mapping) else None
    content = delta.get("content") if isinstance(delta, Mapping) else None
    if content is not None and not isinstance(content, str):
        raise UpstreamProtocolError(target.name, "malformed chunk: delta content is not a string")
    finish = choice.get("finish_reason") if isinstance(choice, Mapping) else None
    return StreamDelta(content=content or "", finish_reason=finish, usage=usage)
