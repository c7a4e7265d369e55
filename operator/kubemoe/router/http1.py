"""A lean HTTP/1.1 client for the router's upstream calls: POST a JSON body, read the answer whole or as it
arrives, over pooled keep-alive connections.

Why not `aiohttp.ClientSession`: profiled under the benchmark's load, its per-request machinery (request and
response objects, URL handling, tracing hooks, cookie and proxy logic, per-read timers) was the largest share
of the router's CPU, more than the pipeline itself. A request here is one `transport.write` of a prebuilt
head plus body, and the answer is parsed by one `asyncio.Protocol` per connection (`http1_wire`: status
line, headers, then a Content-Length, chunked or read-until-close body).

What it keeps of a real client: TLS (`https://` upstreams, verified with the system CAs), a connect timeout,
a read timeout that is the longest silence while waiting for bytes (a fast stream never trips it), at most
`pool_size` connections per host (a caller beyond that waits for a free one) and bounded header and body
sizes. A POST is never retried (a retried completion is paid twice, as with aiohttp, which retries only
idempotent methods); the race of every keep-alive client, a server closing an idle connection just as it is
reused, is kept rare by dropping idle connections after `IDLE_SECONDS`, below the usual server keep-alive
(uvicorn's, and so vLLM's, is 5 s); stale ones are closed a few per call, never all in one event-loop step.

Failures leave as `HttpTimeout` (a `TimeoutError`), `HttpConnectionError` (a `ConnectionError`) or
`HttpProtocolError` (a `ValueError`); `upstream` turns them into agent errors.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from kubemoe.router.http1_wire import (
    MAX_HEAD_BYTES,
    HttpConnectionError,
    HttpProtocolError,
    HttpTimeout,
    _Conn,
)

__all__ = [
    "MAX_HEAD_BYTES",
    "HttpClient",
    "HttpConnectionError",
    "HttpProtocolError",
    "HttpTimeout",
    "Response",
]

#: Idle keep-alive connections older than this are closed instead of reused.
IDLE_SECONDS = 4.0
#: The largest non-streamed answer `read()` accepts (a chat completion is a few KiB).
MAX_BODY_BYTES = 16 * 1024 * 1024
#: Stale idle connections closed per acquire (see `HttpClient._acquire`).
_TRIM_PER_CALL = 4


class Response:
    """An answer in progress: status and headers, then the body whole (`read`) or as it arrives (`iter_any`).
    `release()` (or `async with`) returns the connection to the pool if the body was read to its end."""

    def __init__(self, client: HttpClient, conn: _Conn) -> None:
        self._client = client
        self._conn: _Conn | None = conn
        self.status = conn.status
        self.headers = conn.headers

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive, one block per network read (or several reads' worth if they queued)."""
        conn = self._conn
        assert conn is not None, "response already released"
        read_timeout = self._client.read_timeout
        while True:
            data = conn.take()
            if data is None:
                await conn.wait(read_timeout)
                continue
            if not data:
                return
            yield data

    async def read(self, limit: int | None = None) -> bytes:
        """The body (at most `MAX_BODY_BYTES`), or only its first `limit` bytes (the connection is then not
        reused)."""
        cap = MAX_BODY_BYTES if limit is None else limit
        parts: list[bytes] = []
        size = 0
        async for block in self.iter_any():
            parts.append(block)
            size += len(block)
            if size > cap or (limit is not None and size >= cap):
                if limit is None:
                    raise HttpProtocolError(f"response body larger than {MAX_BODY_BYTES} bytes")
                return b"".join(parts)[:limit]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._release(conn)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class _HostPool:
    def __init__(self) -> None:
        #: Oldest first (released connections are appended): the stale ones are a prefix.
        self.idle: deque[_Conn] = deque()
        self.open = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class HttpClient:
    """Pooled keep-alive connections to any number of hosts; `async with` closes them all."""

    def __init__(self, *, pool_size: int, connect_timeout: float, read_timeout: float) -> None:
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._pools: dict[tuple[str, str, int], _HostPool] = {}
        self._targets: dict[str, tuple[tuple[str, str, int], bytes]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def _target(self, url: str) -> tuple[tuple[str, str, int], bytes]:
        """(scheme, host, port) and the request line + Host header for `url`, parsed once per URL."""
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise HttpConnectionError(f"unsupported URL {url!r}", lost=False)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host = parts.netloc.rsplit("@", 1)[-1]
            head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1")
            found = self._targets[url] = ((parts.scheme, parts.hostname, port), head)
        return found

    async def post(self, url: str, body: bytes, headers: Sequence[tuple[str, str]]) -> Response:
        """Send `body` and return once the answer's status and headers are in."""
        key, head = self._target(url)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
        request = b"%s%sContent-Length: %d\r\n\r\n%s" % (head, extra.encode("latin-1"), len(body), body)
        conn = await self._acquire(key)
        conn.reset()
        try:
            conn.send(request)
            while not conn.head_done:
                conn.take()  # raises what broke the connection
                await conn.wait(self.read_timeout)
        except BaseException:
            self._discard(conn)
            raise
        return Response(self, conn)

    async def _acquire(self, key: tuple[str, str, int]) -> _Conn:
        if self._closed:
            raise HttpConnectionError("client is closed", lost=False)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _HostPool()
        now = time.monotonic()
        # Close a few of the oldest stale connections per call, never all at once: after a burst and a pause,
        # closing a thousand in one go held the event loop for 0.2 s (every request in flight with it).
        for _ in range(_TRIM_PER_CALL):
            if not pool.idle or now - pool.idle[0].idle_since < IDLE_SECONDS:
                break
            self._discard(pool.idle.popleft())
        while pool.idle:
            conn = pool.idle.pop()
            fresh = now - conn.idle_since < IDLE_SECONDS
            if fresh and not conn.closed:
                return conn
            self._discard(conn)
            if not fresh:
                break  # the rest are older still: trimmed by later calls; open a new connection now
        while pool.open >= self.pool_size:
            waiter = asyncio.get_running_loop().create_future()
            pool.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in pool.waiters:
                    pool.waiters.remove(waiter)
                elif not waiter.cancelled():
                    self._wake(pool)  # it was woken: pass the turn on
                raise
            if pool.idle:
                conn = pool.idle.pop()
                if not conn.closed:
                    return conn
                self._discard(conn)
        pool.open += 1
        try:
            return await self._connect(key)
        except BaseException:
            pool.open -= 1
            self._wake(pool)
            raise

    async def _connect(self, key: tuple[str, str, int]) -> _Conn:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context: Any = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Conn(loop, key), host, port, ssl=context)
        except TimeoutError:
            raise HttpTimeout(f"no connection to {host}:{port} within {self.connect_timeout:g}s") from None
        except OSError as exc:
            raise HttpConnectionError(f"cannot connect to {host}:{port}: {exc}", lost=False) from exc
        return conn

    def _release(self, conn: _Conn) -> None:
        pool = self._pools[conn.key]
        if conn.body_done and conn.keep_alive and not conn.closed and not self._closed:
            conn.idle_since = time.monotonic()
            pool.idle.append(conn)
            self._wake(pool)
        else:
            self._discard(conn)

    def _discard(self, conn: _Conn) -> None:
        """Close a connection that is not in the idle list (popped from it, or never put there)."""
        conn.close()
        pool = self._pools[conn.key]
        if conn.counted:
            conn.counted = False
            pool.open -= 1
        self._wake(pool)

    @staticmethod
    def _wake(pool: _HostPool) -> None:
        while pool.waiters:
            waiter = pool.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            for conn in pool.idle:
                conn.close()
            pool.idle.clear()
            while pool.waiters:
                waiter = pool.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(HttpConnectionError("client is closed", lost=False))

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
