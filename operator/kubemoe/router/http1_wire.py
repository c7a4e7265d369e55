"""One keep-alive connection of `router.http1` as an `asyncio.Protocol`: the response parser (status line,
headers, then a Content-Length, chunked or read-until-close body), its buffer with back-pressure, and the
errors the client raises."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

MAX_HEAD_BYTES = 64 * 1024
#: Reading pauses while this much is buffered and unread (a slow consumer of a fast stream).
_HIGH_WATER = 256 * 1024


class HttpTimeout(TimeoutError):
    """No connection within the connect timeout, or silence longer than the read timeout."""


class HttpConnectionError(ConnectionError):
    """The connection could not be made (`lost=False`) or broke during the exchange (`lost=True`)."""

    def __init__(self, message: str, *, lost: bool) -> None:
        super().__init__(message)
        self.lost = lost


class HttpProtocolError(ValueError):
    """The server's bytes are not a valid HTTP/1.1 response (or exceed the size bounds)."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection and the parser of the response in progress on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int]) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused = False
        #: Counted in its pool's `open` until discarded.
        self.counted = True
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.body_done = False
        self.keep_alive = True
        self._mode = ""  # "length", "chunked" or "close"
        self._left = 0  # bytes left: of the body (length) or of the current chunk (chunked)
        self._chunk_state = "size"  # chunked: "size", "data", "crlf", "trailer"
        self._buf.clear()
        self._chunks.clear()
        self._buffered = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            if not self.head_done:
                self._buf += data
                if not self._parse_head():
                    return
                data, self._buf = bytes(self._buf), bytearray()
            if data:
                self._feed_body(data)
        except HttpProtocolError as exc:
            self._fail(exc)
            return
        self._wake()

    def eof_received(self) -> bool:
        if self.head_done and self._mode == "close":
            self.body_done = True
        self.keep_alive = False
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.body_done:
            self._fail(
                HttpConnectionError(f"connection lost: {exc or 'server closed the connection'}", lost=True)
            )
        self._wake()

    # parsing
    def _parse_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise HttpProtocolError(f"response head longer than {MAX_HEAD_BYTES} bytes")
            return False
        if end > MAX_HEAD_BYTES:
            raise HttpProtocolError(f"response head longer than {MAX_HEAD_BYTES} bytes")
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise HttpProtocolError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
        status = int(code)
        if 100 <= status < 200:  # an interim answer (100 Continue): the real head follows
            return self._parse_head()
        headers = self.headers
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpProtocolError(f"malformed header line: {line[:100]!r}")
            headers[name.strip().lower()] = value.strip()
        self.status = status
        connection = headers.get("connection", "").lower()
        self.keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode = "chunked"
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                raise HttpProtocolError("malformed Content-Length") from None
            self._mode = "length"
            self.body_done = self._left == 0
        elif status in (204, 304):
            self.body_done = True
        else:
            self._mode, self.keep_alive = "close", False
        self.head_done = True
        return True

    def _push(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()

    def _feed_body(self, data: bytes) -> None:
        if self.body_done:
            raise HttpProtocolError("bytes after the end of the response")
        if self._mode == "length":
            if len(data) > self._left:
                raise HttpProtocolError("more body bytes than Content-Length")
            self._left -= len(data)
            self._push(data)
            self.body_done = self._left == 0
        elif self._mode == "close":
            self._push(data)
        else:
            self._buf += data
            self._feed_chunked()

    def _feed_chunked(self) -> None:
        buf = self._buf
        while buf:
            if self._chunk_state == "data":
                take = min(self._left, len(buf))
                self._push(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if self._left:
                    return
                self._chunk_state = "crlf"
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise HttpProtocolError("chunk header too long")
                return
            line = bytes(buf[:end])
            del buf[: end + 2]
            if self._chunk_state == "crlf":
                if line:
                    raise HttpProtocolError("chunk not followed by CRLF")
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                try:
                    self._left = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise HttpProtocolError(f"malformed chunk size {line[:40]!r}") from None
                self._chunk_state = "data" if self._left else "trailer"
            elif not line:  # the empty line that ends the trailers
                self.body_done = True
                if buf:
                    raise HttpProtocolError("bytes after the end of the response")
                return

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # what the response reads
    def take(self) -> bytes | None:
        """Buffered body bytes (b"" once the body is complete); None if nothing has arrived yet."""
        if self._chunks:
            data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return data
        if self._error is not None:
            raise self._error
        return b"" if self.body_done else None

    async def wait(self, read_timeout: float) -> None:
        """Until bytes arrive, the body ends or the connection fails; HttpTimeout after `read_timeout` of
        silence."""
        if self._error is not None or self._chunks or self.body_done:
            return
        self._waiter = waiter = self.loop.create_future()
        timer = self.loop.call_later(read_timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(HttpTimeout("no data within the read timeout"))
