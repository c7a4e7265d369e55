"""HTTPS upstreams (`router.http1` with `https://` URLs) over real TLS sockets on loopback, with certificates
made for each test session by the openssl CLI: a private CA, a server certificate it signs for 127.0.0.1,
one it signs for another name, and an unrelated CA.

The client verifies with the system trust store, which OpenSSL reads from `SSL_CERT_FILE` / `SSL_CERT_DIR`
when they are set (how a pod trusts a private CA too); the tests point them at the test CA or at the
unrelated one. Cases: a verified exchange (keep-alive reuse and a chunked stream over TLS), an untrusted
certificate, a name mismatch and a server that never completes the handshake, each a clean
`HttpConnectionError`/`HttpTimeout` before any request byte is sent; and the router itself over TLS, where
the untrusted upstream is a 502 in OpenAI's shape naming the certificate failure.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from moa_stub import StubBackend
from router_harness import RouterFactory, make_config
from test_router_http1 import Answer, RawServer, _json, _reply

from kubemoe.router.http1 import HttpClient, HttpConnectionError, HttpTimeout

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, ca: str, san: str) -> None:
    (d / f"{name}.ext").write_text(
        f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "test-ca")
    _ca(d, "other-ca")
    _leaf(d, "loopback", "test-ca", "IP:127.0.0.1,DNS:localhost")
    _leaf(d, "elsewhere", "test-ca", "DNS:upstream.example")
    return d


def _server_context(pki: Path, leaf: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / f"{leaf}.pem", pki / f"{leaf}.key")
    return ctx


def _trust(monkeypatch: pytest.MonkeyPatch, pki: Path, ca: str) -> None:
    """The system trust store, as OpenSSL finds it, is `ca` alone."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / f"{ca}.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(pki / "no-such-dir"))


class TlsServer(RawServer):
    def __init__(self, answer: Answer, context: ssl.SSLContext) -> None:
        super().__init__(answer)
        self.context = context

    async def __aenter__(self) -> TlsServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{port}/v1/chat/completions"
        return self


def _client() -> HttpClient:
    return HttpClient(pool_size=4, connect_timeout=2.0, read_timeout=2.0)


async def test_a_verified_upstream_is_reused_and_streams_over_tls(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _trust(monkeypatch, pki, "test-ca")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata: \r\n3\r\nabc\r\n0\r\n\r\n"
    answers = iter([_json(b'{"ok": true}'), chunked])

    async def answer(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(next(answers))
        await writer.drain()

    async with _client() as client, TlsServer(answer, _server_context(pki, "loopback")) as server:
        async with await client.post(server.url, b"{}", []) as resp:
            assert (resp.status, await resp.read()) == (200, b'{"ok": true}')
        async with await client.post(server.url, b"{}", []) as resp:
            assert b"".join([b async for b in resp.iter_any()]) == b"data: abc"
    assert server.connections == 1  # one TLS session, kept alive for the second request
    assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")


@pytest.mark.parametrize(
    ("trusted", "leaf", "why"),
    [
        ("other-ca", "loopback", "certificate verify failed: unable to get local issuer certificate"),
        ("test-ca", "elsewhere", "certificate verify failed: IP address mismatch"),
    ],
)
async def test_a_certificate_that_fails_verification_is_a_clean_connection_error(
    pki: Path, monkeypatch: pytest.MonkeyPatch, trusted: str, leaf: str, why: str
) -> None:
    _trust(monkeypatch, pki, trusted)
    async with _client() as client, TlsServer(_reply(_json(b"{}")), _server_context(pki, leaf)) as server:
        with pytest.raises(HttpConnectionError) as caught:
            await client.post(server.url, b'{"secret": 1}', [])
        port = server.url.split(":")[2].split("/")[0]
        assert str(caught.value).startswith(
            f"cannot connect to 127.0.0.1:{port}: [SSL: CERTIFICATE_VERIFY_FAILED]"
        )
        assert why in str(caught.value)
        assert caught.value.lost is False  # nothing was sent: safe to report as "could not connect"
        assert server.requests == []
        # The pool gave its slot back: a later call fails the same way instead of waiting for a connection.
        with pytest.raises(HttpConnectionError):
            await asyncio.wait_for(client.post(server.url, b"{}", []), 5)


async def test_a_server_that_never_completes_the_handshake_times_out(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _trust(monkeypatch, pki, "test-ca")
    held: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts TCP, never answers the ClientHello

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HttpClient(pool_size=1, connect_timeout=0.3, read_timeout=5.0) as client:
            with pytest.raises(HttpTimeout, match=r"no connection to 127.0.0.1:\d+ within 0.3s"):
                await asyncio.wait_for(client.post(f"https://127.0.0.1:{port}/v1", b"{}", []), 5)
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_the_router_serves_and_refuses_over_tls(
    pki: Path, monkeypatch: pytest.MonkeyPatch, start_router: RouterFactory
) -> None:
    stub = StubBackend()
    url = await stub.start(ssl_context=_server_context(pki, "loopback"))
    assert url.startswith("https://127.0.0.1:")
    try:
        chat = {"model": "moa-test", "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as http:
            # Each router's client reads the trust store at its first https:// connection.
            _trust(monkeypatch, pki, "test-ca")
            trusting = await start_router(make_config(url, [("a", "b")]))
            async with http.post(f"{trusting}/v1/chat/completions", json=chat) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["choices"][0]["message"]["content"]
            async with http.post(f"{trusting}/v1/chat/completions", json={**chat, "stream": True}) as resp:
                assert resp.status == 200
                assert (await resp.read()).rstrip().endswith(b"data: [DONE]")
            _trust(monkeypatch, pki, "other-ca")
            refusing = await start_router(make_config(url, [("a", "b")]))
            async with http.post(f"{refusing}/v1/chat/completions", json=chat) as resp:
                assert resp.status == 502
                error = (await resp.json())["error"]
        assert "CERTIFICATE_VERIFY_FAILED" in error["message"], error
        assert "Traceback" not in error["message"]
    finally:
        await stub.close()
