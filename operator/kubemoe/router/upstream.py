"""Calls to OpenAI-compatible backends (vLLM, SGLang, hosted APIs): the router's only network client.

This is the boundary where foreign failures become router errors: aiohttp connection errors, timeouts,
HTTP error statuses, invalid JSON and malformed SSE all leave this module as `AgentError` subclasses that name
the agent and the cause. Anything a backend says is passed through `_redact` first, because a backend that
rejects a key may quote it back ("invalid api key sk-...") and that text would otherwise reach logs and
clients.

One `aiohttp.ClientSession` (owned by the server's cleanup context) serves every upstream; its connector caps
connections per upstream host (`limits.upstream.poolSize`), so one slow model cannot take all sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from kubemoe.router.config import RouterConfig, UpstreamConfig, UpstreamLimits
from kubemoe.router.errors import (
    AgentError,
    UpstreamConnectionError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
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


def _redact(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_QUOTE else text[:_MAX_QUOTE] + "..."


def build_session(limits: UpstreamLimits) -> aiohttp.ClientSession:
    """The shared upstream session: per-host connection cap, timeouts, no cookies, no env proxies."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=limits.pool_size),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=limits.connect_timeout_seconds, sock_read=limits.read_timeout_seconds
        ),
        # A backend's cookies must not travel from one client's request to another's.
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


class HttpBackend:
    """Calls the upstreams of one RouterConfig over a shared session (the `ChatBackend` of `pipeline`)."""

    def __init__(self, session: aiohttp.ClientSession, config: RouterConfig) -> None:
        self._session = session
        upstreams: list[UpstreamConfig] = [a for layer in config.layers for a in layer.agents] + [
            config.aggregator
        ]
        self._keys = {u.name: ApiKey(file=u.api_key_file, env=u.api_key_env) for u in upstreams}

    def _secrets(self) -> list[str | None]:
        return [k.peek() for k in self._keys.values()]

    def _headers(self, target: UpstreamConfig, *, stream: bool) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        try:
            key = self._keys[target.name].get()
        except (OSError, KeyError) as exc:
            # The exception names the file or variable, never the value.
            source = target.api_key_file or target.api_key_env
            raise AgentError(target.name, f"cannot read API key from {source}: {type(exc).__name__}") from exc
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _fail_on_status(self, target: UpstreamConfig, resp: aiohttp.ClientResponse) -> None:
        if resp.status == 200:
            return
        raw = (await resp.content.read(_MAX_ERROR_BODY)).decode("utf-8", "replace")
        detail = raw
        try:
            parsed = json.loads(raw)
            if isinstance(parsed, dict):
                err = parsed.get("error", parsed)
                detail = str(err.get("message", err) if isinstance(err, dict) else err)
        except ValueError:
            pass
        detail = _quote(_redact(detail, self._secrets()))
        raise UpstreamStatusError(
            target.name, f"upstream returned HTTP {resp.status}: {detail}", upstream_status=resp.status
        )

    def _map(self, target: UpstreamConfig, exc: BaseException) -> AgentError:
        """Foreign exception -> AgentError; most specific first (aiohttp timeouts are also ClientErrors)."""
        if isinstance(exc, AgentError):
            return exc
        cause = _quote(_redact(str(exc) or type(exc).__name__, self._secrets()))
        if isinstance(exc, asyncio.TimeoutError):
            return UpstreamTimeoutError(target.name, f"upstream timed out ({type(exc).__name__})")
        if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
            return UpstreamConnectionError(target.name, f"connection lost: {cause}")
        if isinstance(exc, aiohttp.ClientError | ConnectionError):
            return UpstreamConnectionError(target.name, f"connection failed: {cause}")
        return UpstreamProtocolError(target.name, f"invalid response: {cause}")

    async def complete(self, target: UpstreamConfig, body: dict[str, Any]) -> Completion:
        """A non-streaming chat completion."""
        url = f"{target.url.rstrip('/')}/chat/completions"
        try:
            async with self._session.post(
                url, json=body, headers=self._headers(target, stream=False)
            ) as resp:
                await self._fail_on_status(target, resp)
                data = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError) as exc:
            raise self._map(target, exc) from exc
        return _parse_completion(target, data)

    async def stream(self, target: UpstreamConfig, body: dict[str, Any]) -> AsyncGenerator[StreamDelta, None]:
        """A streaming chat completion, chunk by chunk; closing the generator closes the connection."""
        url = f"{target.url.rstrip('/')}/chat/completions"
        try:
            async with self._session.post(url, json=body, headers=self._headers(target, stream=True)) as resp:
                await self._fail_on_status(target, resp)
                saw_finish = False
                async for data in _iter_sse_data(resp.content):
                    if data == "[DONE]":
                        return
                    delta = _parse_chunk(target, data)
                    saw_finish = saw_finish or delta.finish_reason is not None
                    yield delta
                if not saw_finish:
                    raise UpstreamProtocolError(target.name, "stream ended before [DONE]")
        except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError) as exc:
            raise self._map(target, exc) from exc


async def _iter_sse_data(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The `data` of each server-sent event (multi-line data joined; comments and other fields ignored)."""
    lines: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            lines.append(value[1:] if value.startswith(" ") else value)
        elif field not in ("event", "id", "retry"):
            raise ValueError(f"malformed SSE line {_quote(line)!r}")
    if lines:
        yield "\n".join(lines)


def _upstream_error(target: UpstreamConfig, data: Mapping[str, Any]) -> AgentError:
    err = data.get("error")
    message = err.get("message") if isinstance(err, Mapping) else err
    return AgentError(target.name, f"upstream reported an error: {_quote(str(message))}")


def _parse_completion(target: UpstreamConfig, data: Any) -> Completion:
    if isinstance(data, Mapping) and data.get("error"):
        raise _upstream_error(target, data)
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        if not isinstance(content, str):
            raise TypeError("message content is not a string")
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise UpstreamProtocolError(
            target.name, f"not a chat completion: {type(exc).__name__}: {exc}"
        ) from exc
    return Completion(content=content, usage=Usage.parse(data.get("usage")), finish_reason=finish)


def _parse_chunk(target: UpstreamConfig, raw: str) -> StreamDelta:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise UpstreamProtocolError(target.name, f"malformed SSE data (not JSON): {_quote(raw)!r}") from exc
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
