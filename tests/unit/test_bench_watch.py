"""hack/bench/_watch.py against a scripted stand-in for the API server on loopback: the LIST, a WATCH whose
events arrive split across chunks, a stream that goes idle (resumed from the last version), a 410 Gone
(relisted) and a broken watch (surfaced, not hung). The benchmark itself runs it against the real API
server (`make bench-quick`, in CI); this pins down the stream handling that a healthy server rarely shows."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from hack.bench import _watch
from hack.bench._cluster import Api
from hack.bench._watch import ReadyWatch


def deployment(name: str, version: int, available: bool) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": str(version), "generation": 1},
        "spec": {"replicas": 1},
        "status": {"available": available},
    }


class Script:
    """What the stand-in answers: `lists` in turn for each LIST, `watches` in turn for each WATCH (a list
    of (delay_s, bytes) pieces, or an int status)."""

    def __init__(self, lists: list[dict[str, Any]], watches: list[Any]) -> None:
        self.lists, self.watches = lists, watches
        self.requests: list[tuple[str, dict[str, list[str]]]] = []


def serve(script: Script) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            script.requests.append((url.path, query))
            if "watch" not in query:
                body = json.dumps(script.lists.pop(0)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            plan = script.watches.pop(0) if script.watches else [(30.0, b"")]
            if isinstance(plan, int):
                self.send_response(plan)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for delay, piece in plan:
                    time.sleep(delay)
                    if piece:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api_for(tmp_path: Path) -> Any:
    servers: list[Iterator[str]] = []

    def make(script: Script) -> Api:
        gen = serve(script)
        servers.append(gen)
        url = next(gen)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": url}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        return Api(kubeconfig)

    yield make
    for gen in servers:
        gen.close()


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def ready(obj: Any) -> bool:
    return bool(obj["status"]["available"])


def wait_count(watch: ReadyWatch, n: int, timeout_s: float = 10) -> None:
    end = time.monotonic() + timeout_s
    while watch.count() != n:
        assert time.monotonic() < end, f"count stayed {watch.count()}, wanted {n}"
        time.sleep(0.02)


def test_events_split_across_chunks_an_idle_stream_and_a_410_are_all_followed(api_for: Any) -> None:
    added = event("ADDED", deployment("b", 11, False))
    modified = event("MODIFIED", deployment("b", 12, True))
    script = Script(
        lists=[
            {"metadata": {"resourceVersion": "10"}, "items": [deployment("a", 9, True)]},
            {"metadata": {"resourceVersion": "20"}, "items": [deployment("c", 19, True)]},
        ],
        watches=[
            # an event cut in two, then the stream goes idle past the read timeout
            [
                (0, added[:15]),
                (0.1, added[15:] + modified[:5]),
                (0.1, modified[5:]),
                (3 * _watch.IDLE_READ_S, b""),
            ],
            410,  # resumed from version 12: too old, so relist
        ],
    )
    api = api_for(script)
    with ReadyWatch(api, "ns", ["Deployment"], ready) as watch:
        wait_count(watch, 2)  # a (listed) and b (watched, ready after its MODIFIED)
        # After the idle read, the watch resumed from the last whole event's version, got 410, relisted:
        # the state is now the second LIST's (only c).
        deadline = time.monotonic() + 10
        while not any(q.get("resourceVersion") == ["20"] for _, q in script.requests if "watch" in q):
            assert time.monotonic() < deadline, script.requests
            time.sleep(0.05)
        assert watch.count() == 1
    watched = [q["resourceVersion"][0] for _, q in script.requests if "watch" in q]
    assert watched[:3] == ["10", "12", "20"], watched
    assert all(path == "/apis/apps/v1/namespaces/ns/deployments" for path, _ in script.requests)


def test_deleted_objects_stop_counting(api_for: Any) -> None:
    script = Script(
        lists=[
            {
                "metadata": {"resourceVersion": "1"},
                "items": [deployment("a", 1, True), deployment("b", 1, True)],
            }
        ],
        watches=[[(0.05, event("DELETED", deployment("a", 2, True)))]],
    )
    with ReadyWatch(api_for(script), "ns", ["Deployment"], ready) as watch:
        wait_count(watch, 1)


def test_a_watch_the_server_refuses_fails_the_count_instead_of_hanging(api_for: Any) -> None:
    script = Script(lists=[{"metadata": {"resourceVersion": "1"}, "items": []}], watches=[403])
    with ReadyWatch(api_for(script), "ns", ["Deployment"], ready) as watch:

        def count_until_it_fails() -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                watch.count()
                time.sleep(0.02)

        with pytest.raises(RuntimeError, match="403"):
            count_until_it_fails()
