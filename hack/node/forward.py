"""TCP forwarder: the real node's pods reach the API server through it.

kube-apiserver listens on 127.0.0.1 only, and a pod's 127.0.0.1 is its own. The API server advertises
the node bridge's gateway address instead (so the `kubernetes` Service's endpoint is reachable from pod
network namespaces), and this process forwards that address's port to 127.0.0.1. Bytes are copied as
they are: TLS is end to end between the pod and the API server.

Usage: python3 forward.py LISTEN_HOST PORT TARGET_HOST TARGET_PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def main(listen: str, port: int, target: str, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(target, target_port), 10)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, listen, port)
    print(f"forwarding {listen}:{port} -> {target}:{target_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    host, p, thost, tp = sys.argv[1:5]
    asyncio.run(main(host, int(p), thost, int(tp)))
