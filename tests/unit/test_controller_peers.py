"""The MoAPipeline controller with `topology.mode: decentralised`, against an in-memory API server: what it
applies and prunes, and what `status.peers` and the conditions say (controller.moapipeline, .peers)."""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytest
import yaml

from kubemoe.controller.frame import ReconcileFailed
from kubemoe.controller.kube import Kind, KubeApiError, KubeClient
from kubemoe.controller.moapipeline import PipelineContext, reconcile_moapipeline
from kubemoe.controller.peers import PeerStatusReader, http_fetch

NS, NAME = "ml", "moa"
MEMBERS = ["a", "b", "c"]
OPTIONAL = {"LeaderWorkerSet", "HTTPRoute", "PrometheusRule", "ServiceMonitor"}


def _matches(obj: Mapping[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    terms = [t.split("=", 1) for t in selector.split(",") if t]
    return all(labels.get(k) == v for k, v in terms)


class FakeKube:
    """The few API calls the frame makes, kept in a dict; Services get a ClusterIP, objects a generation."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.reject: set[str] = set()  # "Kind/name" whose apply fails with 422
        self._ips = iter(f"10.96.0.{i}" for i in range(10, 250))

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind.kind, namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: Kind, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind.kind and (namespace is None or ns == namespace) and _matches(o, label_selector)
        ]

    def has_api(self, kind: Kind) -> bool:
        return kind.kind not in OPTIONAL

    def apply(self, obj: Mapping[str, Any], *, force: bool = True, dry_run: bool = False) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if f"{key[0]}/{key[2]}" in self.reject:
            raise KubeApiError(422, f"{key[0]} {key[2]} is invalid: spec.template: rejected by a webhook")
        new = copy.deepcopy(dict(obj))
        old = self.objects.get(key)
        if old is not None:
            new["status"] = old.get("status", {})
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            if obj["kind"] == "Service":
                new["spec"]["clusterIP"] = old["spec"]["clusterIP"]
        else:
            new["metadata"]["generation"] = 1
            if obj["kind"] == "Service" and new["spec"].get("clusterIP") != "None":
                new["spec"]["clusterIP"] = next(self._ips)
        if dry_run:
            return new
        self.objects[key] = new
        self.writes.append(f"apply {key[0]}/{key[2]}")
        return copy.deepcopy(new)

    def merge_patch(self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("not expected")

    def delete(self, kind: Kind, namespace: str | None, name: str) -> None:
        del self.objects[(kind.kind, namespace or "", name)]
        self.writes.append(f"delete {kind.kind}/{name}")

    def patch_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        obj = self.objects[(kind.kind, namespace, name)]
        merged = {**obj.get("status", {}), **status}
        obj["status"] = {k: v for k, v in merged.items() if v is not None}
        self.writes.append(f"status {kind.kind}/{name}")

    def create(self, kind: Kind, namespace: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        return dict(obj)  # Events: not kept


def pipeline_doc(mode: str = "decentralised", **spec: Any) -> dict[str, Any]:
    agents = [
        {"name": m, "endpoint": {"url": f"http://10.0.0.{i}:8000/v1", "model": m}}
        for i, m in enumerate(MEMBERS)
    ]
    return {
        "apiVersion": "kubemoe.io/v1alpha1",
        "kind": "MoAPipeline",
        "metadata": {"name": NAME, "namespace": NS, "uid": "uid-1", "generation": 1},
        "spec": {
            "layers": [{"agents": agents}],
            "aggregator": {"endpoint": {"url": "http://10.0.0.9:8000/v1", "model": "agg"}},
            "topology": {"mode": mode, "neighbours": 1, "layers": 2},
            # This fake cluster has no prometheus-operator (OPTIONAL); the peers' alerts and ServiceMonitor
            # are the subject of test_monitoring_without_prometheus_operator_says_so only.
            "monitoring": {"alerts": {"enabled": False}, "serviceMonitor": False},
            **spec,
        },
    }


class Fetches:
    """A stand-in for the HTTP reads of /status: answers per pod IP, or raises what it is told to."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.answers: dict[str, dict[str, Any] | Exception] = {}

    def __call__(self, url: str, timeout: float) -> dict[str, Any]:
        self.urls.append(url)
        answer = self.answers.get(url, TimeoutError("timed out"))
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    k.objects[("MoAPipeline", NS, NAME)] = pipeline_doc()
    return k


@pytest.fixture
def fetches() -> Fetches:
    return Fetches()


def reconcile(kube: FakeKube, fetches: Fetches) -> str:
    ctx = PipelineContext(
        kube=cast(KubeClient, kube), router_image="img", peer_status=PeerStatusReader(1.0, fetches)
    )
    return reconcile_moapipeline(ctx, NS, NAME)


def status(kube: FakeKube) -> dict[str, Any]:
    return dict(kube.objects[("MoAPipeline", NS, NAME)]["status"])


def condition(kube: FakeKube, type_: str) -> dict[str, Any]:
    return next(c for c in status(kube)["conditions"] if c["type"] == type_)


def names(kube: FakeKube, kind: str) -> list[str]:
    return sorted(n for (k, _, n) in kube.objects if k == kind)


def run_peer(kube: FakeKube, member: str, *, ready: bool, ip: str) -> None:
    """What the Deployment controller and kubelet would do: the peer's Deployment status and its pod."""
    dep = kube.objects[("Deployment", NS, f"{NAME}-peer-{member}")]
    n = 1 if ready else 0
    dep["status"] = {
        "observedGeneration": dep["metadata"]["generation"],
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": n,
        "availableReplicas": n,
        "conditions": [{"type": "Available", "status": "True" if ready else "False"}],
    }
    labels = dep["spec"]["template"]["metadata"]["labels"]
    kube.objects[("Pod", NS, f"{NAME}-peer-{member}-x")] = {
        "kind": "Pod",
        "metadata": {"name": f"{NAME}-peer-{member}-x", "namespace": NS, "labels": labels},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def peer_figures(rho: float) -> dict[str, Any]:
    return {
        "utilization": rho,
        "arrivalRate": 0.123456,
        "serviceTimeSeconds": 0.5,
        "maxStableRate": 0.5,
        "effectiveNeighbours": 1,
    }


def peer_config(kube: FakeKube, member: str) -> dict[str, Any]:
    data = kube.objects[("ConfigMap", NS, f"{NAME}-peer-{member}")]["data"]["peer.yaml"]
    return dict(yaml.safe_load(data))


def test_renders_peers_not_the_router_and_converges_on_service_addresses(
    kube: FakeKube, fetches: Fetches
) -> None:
    reconcile(kube, fetches)
    assert names(kube, "Deployment") == [f"{NAME}-peer-{m}" for m in MEMBERS]
    assert names(kube, "ConfigMap") == [f"{NAME}-peer-{m}" for m in MEMBERS]
    assert names(kube, "Service") == sorted(
        [f"{NAME}-peer-{m}" for m in MEMBERS] + [f"{NAME}-peers", f"{NAME}-router"]
    )
    router_svc = kube.objects[("Service", NS, f"{NAME}-router")]
    assert router_svc["spec"]["selector"]["app.kubernetes.io/component"] == "peer"
    # First pass: the member Services did not exist yet, so the peers know each other by DNS name.
    assert all(".svc.cluster.local" in p["url"] for p in peer_config(kube, "a")["peers"])
    reconcile(kube, fetches)
    ips = {n: kube.objects[("Service", NS, f"{NAME}-peer-{n}")]["spec"]["clusterIP"] for n in MEMBERS}
    assert peer_config(kube, "a")["peers"] == [
        {"name": "b", "url": f"http://{ips['b']}:8080"},
        {"name": "c", "url": f"http://{ips['c']}:8080"},
    ]
    assert peer_config(kube, "a")["auth"] == {
        "enabled": True,
        "keysDir": "/var/run/kubemoe/client-keys",
        "revokedKeys": [],
        "reloadSeconds": 1.0,
    }
    assert [p["address"] for p in status(kube)["peers"]] == [f"http://{ips[m]}:8080" for m in MEMBERS]
    # Converged: a third pass writes nothing at all.
    kube.writes.clear()
    reconcile(kube, fetches)
    assert kube.writes == []


def test_not_ready_until_peers_are_and_every_member_listed(kube: FakeKube, fetches: Fetches) -> None:
    assert reconcile(kube, fetches) == "progressing"
    st = status(kube)
    assert [(p["member"], p["ready"]) for p in st["peers"]] == [(m, False) for m in MEMBERS]
    assert condition(kube, "Ready")["status"] == "False"
    assert condition(kube, "Ready")["reason"] == "PeersNotReady"
    assert condition(kube, "Available")["status"] == "False"
    assert condition(kube, "Degraded")["reason"] == "PeersNotReady"
    assert condition(kube, "Planned")["message"].startswith("3 peer(s) (k=1, M=2, random selection)")
    assert st["endpoint"] == f"http://{NAME}-router.{NS}.svc.cluster.local:8080/v1"
    assert fetches.urls == []  # no pod is ready: none is called


def test_ready_with_every_peer_and_figures_from_each_peers_status(kube: FakeKube, fetches: Fetches) -> None:
    reconcile(kube, fetches)
    for i, m in enumerate(MEMBERS):
        run_peer(kube, m, ready=True, ip=f"10.244.0.{i + 1}")
        fetches.answers[f"http://10.244.0.{i + 1}:8080/status"] = peer_figures(0.1 * (i + 1))
    assert reconcile(kube, fetches) == "ready"
    st = status(kube)
    assert st["readyReplicas"] == 3
    assert [p["utilization"] for p in st["peers"]] == [0.1, 0.2, 0.3]
    assert st["peers"][0]["arrivalRate"] == 0.123  # three significant digits
    assert st["peers"][0]["neighbours"] == 1
    assert condition(kube, "Ready")["status"] == "True"
    assert condition(kube, "Degraded")["status"] == "False"
    assert condition(kube, "CapacityOK")["status"] == "True"
    assert "highest rho 0.30" in condition(kube, "CapacityOK")["message"]


def test_a_peer_down_degrades_but_stays_available(kube: FakeKube, fetches: Fetches) -> None:
    reconcile(kube, fetches)
    run_peer(kube, "a", ready=True, ip="10.244.0.1")
    run_peer(kube, "b", ready=False, ip="10.244.0.2")
    run_peer(kube, "c", ready=True, ip="10.244.0.3")
    for ip in ("10.244.0.1", "10.244.0.3"):
        fetches.answers[f"http://{ip}:8080/status"] = peer_figures(0.2)
    reconcile(kube, fetches)
    assert [p["ready"] for p in status(kube)["peers"]] == [True, False, True]
    assert condition(kube, "Available")["status"] == "True"
    assert condition(kube, "Ready")["status"] == "False"
    assert "not ready: b" in condition(kube, "Ready")["message"]
    assert condition(kube, "Degraded")["message"] == "peer(s) not ready: b"
    assert "http://10.244.0.2:8080/status" not in fetches.urls  # an unready peer is never called


def test_an_unanswered_status_leaves_readiness_and_makes_capacity_unknown(
    kube: FakeKube, fetches: Fetches
) -> None:
    reconcile(kube, fetches)
    for i, m in enumerate(MEMBERS):
        run_peer(kube, m, ready=True, ip=f"10.244.0.{i + 1}")
    fetches.answers["http://10.244.0.1:8080/status"] = peer_figures(0.2)
    fetches.answers["http://10.244.0.2:8080/status"] = peer_figures(0.2)
    # 10.244.0.3 times out (the Fetches default)
    assert reconcile(kube, fetches) == "ready"
    peers = status(kube)["peers"]
    assert peers[2]["ready"] is True
    assert "utilization" not in peers[2]
    cap = condition(kube, "CapacityOK")
    assert cap["status"] == "Unknown"
    assert "c: TimeoutError: timed out" in cap["message"]


def test_a_peer_at_its_limit_makes_capacity_false(kube: FakeKube, fetches: Fetches) -> None:
    reconcile(kube, fetches)
    for i, m in enumerate(MEMBERS):
        run_peer(kube, m, ready=True, ip=f"10.244.0.{i + 1}")
        fetches.answers[f"http://10.244.0.{i + 1}:8080/status"] = peer_figures(0.95 if m == "b" else 0.1)
    reconcile(kube, fetches)
    cap = condition(kube, "CapacityOK")
    assert cap["status"] == "False"
    assert cap["reason"] == "OverCapacity"
    assert "b rho=0.95" in cap["message"]


def switch(kube: FakeKube, mode: str) -> None:
    doc = kube.objects[("MoAPipeline", NS, NAME)]
    doc["spec"]["topology"]["mode"] = mode
    doc["metadata"]["generation"] += 1


def test_switching_topology_prunes_the_other_sides_children(kube: FakeKube, fetches: Fetches) -> None:
    switch(kube, "central")
    reconcile(kube, fetches)
    assert names(kube, "Deployment") == [f"{NAME}-router"]
    assert status(kube).get("peers", []) == []
    switch(kube, "decentralised")
    reconcile(kube, fetches)
    assert names(kube, "Deployment") == [f"{NAME}-peer-{m}" for m in MEMBERS]
    assert names(kube, "ConfigMap") == [f"{NAME}-peer-{m}" for m in MEMBERS]
    assert f"delete Deployment/{NAME}-router" in kube.writes
    assert f"delete ConfigMap/{NAME}-router" in kube.writes
    assert len(status(kube)["peers"]) == 3
    switch(kube, "central")
    reconcile(kube, fetches)
    assert names(kube, "Deployment") == [f"{NAME}-router"]
    assert names(kube, "Service") == [f"{NAME}-router"]  # headless and member Services pruned
    svc = kube.objects[("Service", NS, f"{NAME}-router")]
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "router"
    assert status(kube)["peers"] == []


def test_prune_leaves_objects_of_another_owner_alone(kube: FakeKube, fetches: Fetches) -> None:
    reconcile(kube, fetches)
    stray = copy.deepcopy(kube.objects[("Deployment", NS, f"{NAME}-peer-a")])
    stray["metadata"]["name"] = "someone-elses"
    stray["metadata"]["ownerReferences"] = [{"uid": "other", "controller": True}]
    kube.objects[("Deployment", NS, "someone-elses")] = stray
    switch(kube, "central")
    reconcile(kube, fetches)
    assert "someone-elses" in names(kube, "Deployment")


def test_a_rejected_peer_child_is_reported_and_retried(kube: FakeKube, fetches: Fetches) -> None:
    kube.reject.add(f"Deployment/{NAME}-peer-b")
    with pytest.raises(ReconcileFailed):
        reconcile(kube, fetches)
    assert condition(kube, "Ready")["reason"] == "ApplyRejected"
    assert "rejected by a webhook" in condition(kube, "Degraded")["message"]
    assert names(kube, "Deployment") == []  # all or none: the dry run failed first
    kube.reject.clear()
    reconcile(kube, fetches)
    assert len(names(kube, "Deployment")) == 3


def test_an_invalid_topology_is_a_condition(kube: FakeKube, fetches: Fetches) -> None:
    kube.objects[("MoAPipeline", NS, NAME)]["spec"]["topology"]["neighbours"] = 3
    assert reconcile(kube, fetches) == "not-planned"
    assert condition(kube, "Planned")["reason"] == "InvalidSpec"
    assert "must be below the number of members" in condition(kube, "Planned")["message"]
    assert names(kube, "Deployment") == []


# ------------------------------------------------------------------ the HTTP read, over real sockets


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers (a hung peer)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/status"
    stop.set()
    t.join()
    for c in conns:
        c.close()
    sock.close()


def test_hung_peers_cost_one_timeout_not_one_each(silent_server: str) -> None:
    reader = PeerStatusReader(timeout_seconds=0.3)
    start = time.monotonic()
    got = reader.read_all(dict.fromkeys(("a", "b", "c", "d", "e", "f"), silent_server))
    elapsed = time.monotonic() - start
    assert all(isinstance(v, str) and "timed out" in v for v in got.values()), got
    assert elapsed < 1.2  # six hung peers at 0.3 s each would be 1.8 s one after another


def test_http_fetch_reads_a_real_peer_status() -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"utilization": 0.5}' if self.path == "/status" else b"[1]"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert http_fetch(f"{base}/status", 2.0) == {"utilization": 0.5}
        with pytest.raises(ValueError, match="not a JSON object"):
            http_fetch(f"{base}/other", 2.0)
    finally:
        server.shutdown()
        server.server_close()


def test_reading_off_means_readiness_only(kube: FakeKube, fetches: Fetches) -> None:
    ctx = PipelineContext(kube=cast(KubeClient, kube), router_image="img", peer_status=PeerStatusReader(0))
    reconcile_moapipeline(ctx, NS, NAME)
    for i, m in enumerate(MEMBERS):
        run_peer(kube, m, ready=True, ip=f"10.244.0.{i + 1}")
    assert reconcile_moapipeline(ctx, NS, NAME) == "ready"
    assert condition(kube, "CapacityOK")["status"] == "Unknown"
    assert "c: not read (off)" in condition(kube, "CapacityOK")["message"]


def test_monitoring_without_prometheus_operator_says_so(kube: FakeKube, fetches: Fetches) -> None:
    """Peers' alerts and ServiceMonitor on a cluster without their CRDs: skipped, and Degraded says why,
    as for a central pipeline; the peers themselves still come up."""
    doc = kube.objects[("MoAPipeline", NS, NAME)]
    doc["spec"].pop("monitoring")
    reconcile(kube, fetches)
    for i, m in enumerate(MEMBERS):
        run_peer(kube, m, ready=True, ip=f"10.244.0.{i + 1}")
        fetches.answers[f"http://10.244.0.{i + 1}:8080/status"] = peer_figures(0.1)
    reconcile(kube, fetches)
    degraded = condition(kube, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "OptionalAPIMissing"), degraded
    assert "PrometheusRule" in degraded["message"]
    assert "ServiceMonitor" in degraded["message"]
    assert condition(kube, "Ready")["status"] == "True"
