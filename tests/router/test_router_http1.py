"""The lean upstream client (`router.http1`) against raw sockets that answer exactly what each case needs:
bodies by length, chunked and until close, keep-alive reuse and its limits, the pool bound, and every failure
(refused, timeouts, a connection lost mid-answer, malformed or oversized answers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from kubemoe.router import http1, http1_wire
from kubemoe.router.http1 import HttpClient, HttpConnectionError, HttpProtocolError, HttpTimeout

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Reads each request (head + Content-Length body) and lets `answer` write whatever bytes it likes."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.open = 0
        self.peak_open = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                await self.answer(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.open -= 1
            writer.close()

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


def _reply(raw: bytes, *, close: bool = False) -> Answer:
    async def answer(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        if close:
            writer.close()

    return answer


def _json(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    async with HttpClient(pool_size=8, connect_timeout=1.0, read_timeout=1.0) as c:
        yield c


async def _post(client: HttpClient, url: str) -> tuple[int, bytes]:
    async with await client.post(url, b'{"a": 1}', [("Content-Type", "application/json")]) as resp:
        return resp.status, await resp.read()


async def test_content_length_answers_reuse_one_connection(client: HttpClient) -> None:
    async with RawServer(_reply(_json(b'{"ok": true}'))) as server:
        for _ in range(3):
            assert await _post(client, server.url) == (200, b'{"ok": true}')
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Type: application/json\r\n" in first
    assert first.endswith(b'{"a": 1}')


async def test_a_chunked_answer_is_read_as_it_arrives(client: HttpClient) -> None:
    gate = asyncio.Event()

    async def answer(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
        )
        writer.write(b"6\r\ndata: \r\n")
        await writer.drain()
        await gate.wait()  # the client must see the first chunk before the rest exists
        writer.write(b"3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n")
        await writer.drain()

    async with RawServer(answer) as server:
        resp = await client.post(server.url, b"{}", [])
        assert resp.content_type == "text/event-stream"
        blocks = resp.iter_any()
        assert await anext(blocks) == b"data: "
        gate.set()
        assert b"".join([b async for b in blocks]) == b"abc"
        resp.release()
        gate.clear()
        gate.set()
        assert await _post(client, server.url) == (200, b"data: abc")
    assert server.connections == 1  # the chunked answer ended cleanly: the connection was reused


async def test_read_until_close_and_connection_close_are_not_reused(client: HttpClient) -> None:
    async with RawServer(_reply(b"HTTP/1.1 200 OK\r\n\r\nuntil close", close=True)) as server:
        assert await _post(client, server.url) == (200, b"until close")
        assert await _post(client, server.url) == (200, b"until close")
    assert server.connections == 2
    async with RawServer(_reply(_json(b"{}", b"Connection: close\r\n"))) as server:
        await _post(client, server.url)
        await _post(client, server.url)
    assert server.connections == 2


async def test_idle_connections_expire(client: HttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "IDLE_SECONDS", 0.0)
    async with RawServer(_reply(_json(b"{}"))) as server:
        await _post(client, server.url)
        await _post(client, server.url)
    assert server.connections == 2


async def test_stale_connections_are_closed_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a burst and a pause, the next call must not close every stale connection in one step (a
    thousand took the event loop 0.2 s): it opens a fresh one, and each call trims a few of the oldest."""
    async with (
        HttpClient(pool_size=64, connect_timeout=1.0, read_timeout=1.0) as client,
        RawServer(_reply(_json(b"{}"))) as server,
    ):
        await asyncio.gather(*(_post(client, server.url) for _ in range(40)))
        assert (server.connections, server.open) == (40, 40)
        monkeypatch.setattr(http1, "IDLE_SECONDS", 0.2)
        await asyncio.sleep(0.3)
        assert await _post(client, server.url) == (200, b"{}")
        await asyncio.sleep(0.1)  # the server sees the closes
        # 4 trimmed from the old end, the newest stale one dropped, one fresh opened: 40 - 5 + 1.
        assert (server.connections, server.open) == (41, 36)
        for _ in range(9):  # the fresh one is reused; each call trims 4 more
            assert await _post(client, server.url) == (200, b"{}")
        await asyncio.sleep(0.1)
        assert (server.connections, server.open) == (41, 1)


async def test_the_pool_bounds_connections_per_host() -> None:
    async def slow(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(_json(b"{}"))
        await writer.drain()

    async with HttpClient(pool_size=2, connect_timeout=1.0, read_timeout=5.0) as c, RawServer(slow) as server:
        results = await asyncio.gather(*(_post(c, server.url) for _ in range(6)))
    assert results == [(200, b"{}")] * 6
    assert server.peak_open == 2
    assert server.connections == 2


async def test_a_caller_cancelled_while_waiting_for_the_pool_leaves_it_usable() -> None:
    release = asyncio.Event()

    async def held(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(_json(b"{}"))
        await writer.drain()

    async with HttpClient(pool_size=1, connect_timeout=1.0, read_timeout=5.0) as c, RawServer(held) as server:
        first = asyncio.create_task(_post(c, server.url))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(_post(c, server.url))
        await asyncio.sleep(0.05)
        waiting.cancel()
        release.set()
        assert await first == (200, b"{}")
        assert await asyncio.wait_for(_post(c, server.url), 2) == (200, b"{}")


async def test_refused_connection(client: HttpClient) -> None:
    async with RawServer(_reply(b"")) as server:
        url = server.url
    with pytest.raises(HttpConnectionError, match="cannot connect") as info:
        await _post(client, url)
    assert not info.value.lost


async def test_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(*_a: object, **_k: object) -> None:
        await asyncio.sleep(10)

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "create_connection", never)
    async with HttpClient(pool_size=1, connect_timeout=0.05, read_timeout=1.0) as c:
        with pytest.raises(HttpTimeout, match="no connection"):
            await _post(c, "http://127.0.0.1:9/v1")
        # The failed attempt gave its slot back: the next caller does not wait for the pool.
        with pytest.raises(HttpTimeout, match="no connection"):
            await asyncio.wait_for(_post(c, "http://127.0.0.1:9/v1"), 1)


async def test_read_timeout_on_the_head_and_on_the_body() -> None:
    async def stall(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async def half(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(10)

    async with HttpClient(pool_size=2, connect_timeout=1.0, read_timeout=0.1) as c:
        for answer in (stall, half):
            async with RawServer(answer) as server:
                with pytest.raises(HttpTimeout, match="read timeout"):
                    await _post(c, server.url)


async def test_connection_lost_mid_body(client: HttpClient) -> None:
    async with RawServer(_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True)) as server:
        with pytest.raises(HttpConnectionError, match="connection lost") as info:
            await _post(client, server.url)
    assert info.value.lost


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc", "more body bytes than Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "chunk not followed by CRLF"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * (70 * 1024), "response head longer than"),
    ],
)
async def test_malformed_answers(client: HttpClient, raw: bytes, match: str) -> None:
    async with RawServer(_reply(raw)) as server:
        with pytest.raises(HttpProtocolError, match=match):
            await _post(client, server.url)


async def test_a_body_over_the_limit(client: HttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "MAX_BODY_BYTES", 100)
    async with RawServer(_reply(_json(b"x" * 200))) as server:
        with pytest.raises(HttpProtocolError, match="larger than 100 bytes"):
            await _post(client, server.url)
        # An error body is read only as far as asked; the client stays usable.
        async with await client.post(server.url, b"{}", []) as resp:
            assert await resp.read(10) == b"x" * 10
        monkeypatch.setattr(http1, "MAX_BODY_BYTES", 1000)
        assert await _post(client, server.url) == (200, b"x" * 200)


async def test_a_slow_reader_pauses_a_fast_stream(
    client: HttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1_wire, "_HIGH_WATER", 16)
    body = b"".join(b"%x\r\n%s\r\n" % (64, bytes([65 + i % 26]) * 64) for i in range(200)) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    got = b""
    async with RawServer(_reply(head + body)) as server:
        resp = await client.post(server.url, b"{}", [])
        async for block in resp.iter_any():
            got += block
            await asyncio.sleep(0)
        resp.release()
    assert got == b"".join(bytes([65 + i % 26]) * 64 for i in range(200))


async def test_unsupported_url(client: HttpClient) -> None:
    with pytest.raises(HttpConnectionError, match="unsupported URL"):
        await _post(client, "ftp://example/v1")


async def test_a_closed_client_refuses_requests() -> None:
    c = HttpClient(pool_size=1, connect_timeout=1.0, read_timeout=1.0)
    await c.close()
    with pytest.raises(HttpConnectionError, match="client is closed"):
        await _post(c, "http://127.0.0.1:9/v1")
