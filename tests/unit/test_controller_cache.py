"""The watch-fed cache: newer wins by resourceVersion, a LIST replaces a kind but never rolls back what a
watch delivered meanwhile, and a read it cannot answer goes to the API server."""

from __future__ import annotations

from typing import Any

from kubemoe.controller.cache import CHILD_SELECTOR, WatchCache, json_copy, parse_selector
from kubemoe.controller.kube import KINDS, Kind

DEPLOY = KINDS["Deployment"]


def obj(name: str, rv: int, **labels: str) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": str(rv),
            "labels": {"app.kubernetes.io/managed-by": "kubemoe", **labels},
        },
    }


class Server:
    """The API server's side of the reads, as plain data; counts what reached it."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.reads = 0
        self.during_list: Any = None

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return next((o for o in self.items if o["metadata"]["name"] == name), None)

    def list(self, kind: Kind, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        self.reads += 1
        if self.during_list:
            self.during_list()
        return [dict(o) for o in self.items]


def test_reads_go_to_the_api_server_until_the_kind_is_listed_then_never() -> None:
    server = Server([obj("a", 5)])
    cache = WatchCache(server, [DEPLOY], label_selectors={"Deployment": CHILD_SELECTOR})
    assert cache.get(DEPLOY, "ns", "a") is not None
    assert server.reads == 1
    assert cache.relist(server, ["ns"]) == 1
    before = server.reads
    for _ in range(10):
        assert cache.get(DEPLOY, "ns", "a") is not None
        assert cache.get(DEPLOY, "ns", "gone") is None
        assert len(cache.list(DEPLOY, "ns", f"app.kubernetes.io/instance=x,{CHILD_SELECTOR}")) == 0
    assert server.reads == before
    # A selector that does not imply the cache's own (managed-by) cannot be answered from it.
    cache.list(DEPLOY, "ns", "app.kubernetes.io/instance=x")
    assert server.reads == before + 1


def test_newer_wins_and_a_list_never_rolls_back_what_the_watch_delivered_meanwhile() -> None:
    server = Server([obj("a", 5), obj("b", 5)])
    cache = WatchCache(server, [DEPLOY], label_selectors={})
    cache.relist(server, ["ns"])
    cache.upsert("Deployment", obj("a", 4))  # an old event arriving late
    assert cache.get(DEPLOY, "ns", "a")["metadata"]["resourceVersion"] == "5"  # type: ignore[index]
    cache.upsert("Deployment", obj("a", 7, version="new"))
    assert cache.get(DEPLOY, "ns", "a")["metadata"]["labels"]["version"] == "new"  # type: ignore[index]

    # While the next LIST is in flight (it still shows a@5), the watch says a@9 and b was deleted.
    def meanwhile() -> None:
        cache.upsert("Deployment", obj("a", 9))
        cache.remove("Deployment", obj("b", 10))

    server.during_list = meanwhile
    cache.relist(server, ["ns"])
    assert cache.get(DEPLOY, "ns", "a")["metadata"]["resourceVersion"] == "9"  # type: ignore[index]
    assert cache.get(DEPLOY, "ns", "b") is None
    # And an entry whose deletion the watch missed is gone after the next LIST.
    server.during_list = None
    server.items = []
    cache.relist(server, ["ns"])
    assert cache.get(DEPLOY, "ns", "a") is None


def test_selectors() -> None:
    assert parse_selector("a=b, c=d") == {"a": "b", "c": "d"}
    assert parse_selector("") == {}
    assert parse_selector("a!=b") is None
    assert parse_selector("a in (b)") is None


def test_an_owned_watch_body_is_kept_without_a_copy_and_others_are_copied() -> None:
    cache = WatchCache(Server([]), [DEPLOY], label_selectors={"Deployment": CHILD_SELECTOR})
    cache.relist(Server([]), ["ns"])
    mine, theirs = obj("a", 2), obj("b", 2)
    assert cache.upsert("Deployment", mine, owned=True)
    assert cache.upsert("Deployment", theirs)
    theirs["metadata"]["labels"]["changed"] = "later"
    held_b = cache.held("Deployment", "ns", "b")
    assert held_b is not None
    assert "changed" not in held_b["metadata"]["labels"]
    assert not cache.upsert("Deployment", obj("a", 2), owned=True), "the same resourceVersion: an echo"
    held_a = cache.held("Deployment", "ns", "a")
    assert held_a is not None
    assert held_a["metadata"]["resourceVersion"] == "2"


def test_lists_by_owner_follow_relabels_and_removals_through_the_index() -> None:
    inst = "app.kubernetes.io/instance"
    cache = WatchCache(Server([]), [DEPLOY], label_selectors={"Deployment": CHILD_SELECTOR})
    cache.relist(Server([obj("a", 1, **{inst: "m1"}), obj("b", 1, **{inst: "m2"})]), ["ns"])

    def names(owner: str) -> list[str]:
        return [o["metadata"]["name"] for o in cache.list(DEPLOY, "ns", f"{CHILD_SELECTOR},{inst}={owner}")]

    assert names("m1") == ["a"]
    assert names("m2") == ["b"]
    cache.upsert("Deployment", obj("b", 2, **{inst: "m1"}))  # relabelled to another owner
    assert names("m1") == ["a", "b"]
    assert names("m2") == []
    cache.remove("Deployment", obj("a", 3, **{inst: "m1"}))
    assert names("m1") == ["b"]
    assert cache.peek("Deployment", "ns", "b", lambda o: o and o["metadata"]["resourceVersion"]) == "2"
    assert cache.peek("Deployment", "ns", "a", lambda o: o) is None


def test_json_copy_is_deep_and_equal_and_hands_anything_else_to_deepcopy() -> None:
    class Marker:
        def __init__(self) -> None:
            self.seen: list[str] = []

    src: dict[str, Any] = {
        "metadata": {"labels": {"a": "1"}, "managedFields": [{"fieldsV1": {"f:spec": {}}}]},
        "spec": {
            "replicas": 2,
            "ratio": 0.5,
            "on": True,
            "none": None,
            "ports": [[80, 443], {"name": "http"}],
        },
        "odd": Marker(),
    }
    out = json_copy(src)
    assert {k: v for k, v in out.items() if k != "odd"} == {k: v for k, v in src.items() if k != "odd"}
    out["metadata"]["labels"]["a"] = "changed"
    out["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["x"] = 1
    out["spec"]["ports"][0].append(8080)
    out["spec"]["ports"][1]["name"] = "grpc"
    assert src["metadata"]["labels"] == {"a": "1"}
    assert src["metadata"]["managedFields"] == [{"fieldsV1": {"f:spec": {}}}]
    assert src["spec"]["ports"] == [[80, 443], {"name": "http"}]
    assert isinstance(out["odd"], Marker)
    assert out["odd"] is not src["odd"], "a non-JSON value is deep-copied too, not shared"


def test_what_a_read_returns_is_the_callers_to_change() -> None:
    cache = WatchCache(Server([]), [DEPLOY], label_selectors={"Deployment": CHILD_SELECTOR})
    cache.relist(Server([]), ["ns"])
    cache.upsert("Deployment", obj("a", 2, **{"app.kubernetes.io/instance": "m"}))
    got = cache.get(DEPLOY, "ns", "a")
    listed = cache.list(DEPLOY, "ns", f"app.kubernetes.io/instance=m,{CHILD_SELECTOR}")
    assert got is not None
    assert len(listed) == 1
    got["metadata"]["labels"]["x"] = "1"
    listed[0]["metadata"]["labels"]["y"] = "2"
    held = cache.held("Deployment", "ns", "a")
    assert held is not None
    assert "x" not in held["metadata"]["labels"]
    assert "y" not in held["metadata"]["labels"]
