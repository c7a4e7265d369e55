"""See the end of a rollout by watching, not by listing.

A LIST per poll costs the API server the whole collection every time (at N=1000 a MoEModel list with
its status is megabytes of JSON), and the slower side of a comparison polls more often, so polling taxes
the run being measured and taxes the slower one more. A watch costs one event per change, on both sides
alike: one LIST for the starting state and its resourceVersion, then a WATCH from it, relisting only when
the API server says the version is too old (410 Gone).

`ReadyWatch` keeps, per kind, whether each object satisfies a predicate, and `count()` answers from
memory, so the caller may ask as often as it likes for free.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import urllib3

from hack.bench._cluster import Api

#: How long one read may wait for bytes before the loop checks whether it was stopped (then it resumes
#: from the last version seen: nothing is lost).
IDLE_READ_S = 1.0


class Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


class ReadyWatch:
    """How many objects of `kinds` in `namespace` satisfy `ready`, kept current by a watch per kind."""

    def __init__(
        self,
        api: Api,
        namespace: str,
        kinds: Sequence[str],
        ready: Callable[[Mapping[str, Any]], bool],
    ) -> None:
        self.api, self.namespace, self.kinds, self.ready = api, namespace, list(kinds), ready
        self._state: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._synced = threading.Barrier(len(self.kinds) + 1)

    def __enter__(self) -> ReadyWatch:
        for kind in self.kinds:
            t = threading.Thread(target=self._run, args=(kind,), name=f"watch-{kind}", daemon=True)
            t.start()
            self._threads.append(t)
        self._synced.wait(timeout=60)  # every kind listed once: count() is meaningful from here on
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=IDLE_READ_S * 5)

    def count(self) -> int:
        if self._errors:
            raise self._errors[0]
        with self._lock:
            return sum(self._state.values())

    # ------------------------------------------------------------------------------------------ internals

    def _run(self, kind: str) -> None:
        synced = False
        try:
            while not self._stop.is_set():
                version = self._list(kind)
                if not synced:
                    synced = True
                    self._synced.wait(timeout=60)
                try:
                    while not self._stop.is_set():
                        version = self._watch(kind, version)
                except Gone:
                    continue
        except BaseException as exc:  # surfaced by count(): a broken watch must fail the run, not hang it
            self._errors.append(exc)
            if not synced:
                self._synced.abort()

    def _set(self, kind: str, obj: Mapping[str, Any], present: bool = True) -> None:
        key = (kind, obj["metadata"]["name"])
        with self._lock:
            if present:
                self._state[key] = bool(self.ready(obj))
            else:
                self._state.pop(key, None)

    def _list(self, kind: str) -> str:
        status, data = self.api.call("GET", Api.path(kind, self.namespace))
        if status != 200:
            raise RuntimeError(f"list {kind} in {self.namespace}: {status} {str(data)[:300]}")
        with self._lock:
            for key in [k for k in self._state if k[0] == kind]:
                del self._state[key]
        for obj in data.get("items") or []:
            self._set(kind, obj)
        return str(data["metadata"]["resourceVersion"])

    def _watch(self, kind: str, version: str) -> str:
        """One WATCH from `version` until the stream ends or stays idle; returns the last version seen."""
        query = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", "300"),
        ]
        for event in self._stream(Api.path(kind, self.namespace), query):
            kind_of_event, obj = event["type"], event["object"]
            if kind_of_event == "ERROR":
                if obj.get("code") == 410:
                    raise Gone(obj.get("message", ""))
                raise RuntimeError(f"watch {kind} in {self.namespace}: {obj}")
            version = str(obj["metadata"].get("resourceVersion") or version)
            if kind_of_event in ("ADDED", "MODIFIED"):
                self._set(kind, obj)
            elif kind_of_event == "DELETED":
                self._set(kind, obj, present=False)
            if self._stop.is_set():
                break
        return version

    def _stream(self, path: str, query: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        """The events of one watch request, a JSON document per line; ends quietly on an idle read."""
        api_client = self.api.client
        method, url, headers, _, _ = api_client.param_serialize(
            "GET",
            path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        pool = api_client.rest_client.pool_manager
        response = pool.request(
            method,
            url,
            headers=headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=IDLE_READ_S),
            retries=False,
        )
        try:
            if response.status == 410:
                raise Gone("resourceVersion too old")
            if response.status != 200:
                raise RuntimeError(f"watch {path}: {response.status} {response.read()[:300]!r}")
            buffer = b""
            try:
                for chunk in response.stream(64 * 1024):
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
                    if self._stop.is_set():
                        return
            except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ProtocolError):
                return  # idle (or the server ended the stream): resume from the last whole event
        finally:
            # A stream left halfway cannot carry the next request: close it rather than pool it.
            response.close()
            response.release_conn()
