"""The router benchmark's stand-in backend: a bare asyncio protocol with canned OpenAI answers, so that it is
never the bottleneck.

`python -m hack.bench.router --backend PORT DELAY [GAP]` serves it on 127.0.0.1:PORT. Every answer is sent
DELAY seconds after its request. A streamed one (`"stream": true`) is SSE with a Content-Length: the role
chunk, 8 content chunks, the finish, the usage and `[DONE]`; with GAP > 0 it is sent in two writes, the head
(the HTTP head, the role chunk and the first content token) at DELAY and the rest GAP seconds later, so a
client's time to first token differs from the time to the last one, and a server that buffers the stream
instead of forwarding the first token shows it by GAP.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


def canned() -> tuple[bytes, bytes, bytes]:
    """(the JSON answer, the streamed answer's head up to its first content token, the rest of it)."""
    usage = {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}
    whole = {
        "id": "b",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "a short answer"},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return (
            "data: "
            + json.dumps({"id": "b", "object": "chat.completion.chunk", "choices": choices, **extra})
            + "\n\n"
        )

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": f" word{i}"}) for i in range(8)]
    events += [chunk({}, "stop"), chunk(None, usage=usage), "data: [DONE]\n\n"]
    head, tail = "".join(events[:2]).encode(), "".join(events[2:]).encode()
    body = json.dumps(whole).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
        % (len(head) + len(tail))
        + head,
        tail,
    )


class Backend(asyncio.Protocol):
    JSON, SSE_HEAD, SSE_TAIL = canned()
    SSE = SSE_HEAD + SSE_TAIL

    def __init__(self, delay: float, gap: float = 0.0) -> None:
        self.delay = delay
        self.gap = gap
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            body, self.buf = self.buf[end + 4 : end + 4 + length], self.buf[end + 4 + length :]
            stream = b'"stream": true' in body or b'"stream":true' in body
            if stream and self.gap:
                self._later(self.delay, self.SSE_HEAD)
                self._later(self.delay + self.gap, self.SSE_TAIL)
            else:
                self._later(self.delay, self.SSE if stream else self.JSON)

    def _later(self, delay: float, answer: bytes) -> None:
        if delay:
            asyncio.get_running_loop().call_later(delay, self._write, answer)
        else:
            self.transport.write(answer)

    def _write(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)


def serve(port: int, delay: float, gap: float = 0.0) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: Backend(delay, gap), "127.0.0.1", port, backlog=4096
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())
