"""A real Gateway API implementation routes the HTTPRoutes the operator renders: Traefik (built from the Go
module proxy by hack/tools-gateway, its kubernetesgateway provider), run as a local process with the dev
cluster's kubeconfig, against the Gateway API CRDs hack/cluster installs.

The dev cluster's pods are kwok fakes with addresses nothing listens on, so the model is scaled to zero and the
test gives its Service an EndpointSlice of its own that points into a network namespace it creates (`ip netns`,
a veth pair, 198.18.x.0/30 from the benchmarking range): the OpenAI stand-in (`kubemoe.testing.stub_backend`,
standing in for vLLM, which cannot run here) listens there. Traefik listens on loopback only. Everything the
test creates (the namespace, the veth, the GatewayClass, the processes) is removed at teardown, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .operator_harness import *  # noqa: F403
from .operator_harness import ROOT, Kube, OperatorProcess, cond, free_port, moe_doc, wait_for

CONTROLLER = "traefik.io/gateway-controller"
GATEWAY_PATHS = {
    "GatewayClass": "/apis/gateway.networking.k8s.io/v1/gatewayclasses",
    "EndpointSlice": "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
}
STANDIN_PORT = 8000
MODEL, PLACEMENT = "mistralai/Mixtral-8x7B-Instruct-v0.1", {"instanceTypes": ["p4de.24xlarge"]}
ANSWER = "answer from the stand-in in the test's network namespace"

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="ip netns needs root")]


def traefik_binary() -> Path:
    out = subprocess.run(
        [str(ROOT / "hack" / "tools-gateway"), "paths"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(dict(line.split("=", 1) for line in out.split())["TRAEFIK"])
    assert path.is_file(), f"{path} is missing: run hack/tools-gateway install"
    return path


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Netns:
    name: str
    host_ip: str
    backend_ip: str


@contextlib.contextmanager
def netns() -> Iterator[Netns]:
    """A network namespace with a veth pair: the host end gets .1, the namespace end .2 of a free /30."""
    tag = uuid.uuid4().hex[:6]
    name, host_if, ns_if = f"kmgw-{tag}", f"kmgw{tag}h", f"kmgw{tag}n"
    used = subprocess.run(["ip", "-4", "route"], check=True, capture_output=True, text=True).stdout
    third = random.choice([i for i in range(256) if f"198.18.{i}." not in used])
    host_ip, backend_ip = f"198.18.{third}.1", f"198.18.{third}.2"
    try:
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", name)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", name, "addr", "add", f"{backend_ip}/30", "dev", ns_if)
        sh("ip", "-n", name, "link", "set", ns_if, "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield Netns(name, host_ip, backend_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)  # takes its peer
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


STANDIN = """
import asyncio, sys
from kubemoe.testing.stub_backend import Behavior, StubBackend

async def main() -> None:
    stub = StubBackend(behaviors={sys.argv[3]: Behavior(reply=sys.argv[4])})
    print(await stub.start(sys.argv[1], int(sys.argv[2])), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@contextlib.contextmanager
def standin(ns: Netns, served: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-c", STANDIN, ns.backend_ip, str(STANDIN_PORT),
             served, ANSWER],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:

        def listening() -> bool | None:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(OSError), socket.create_connection((ns.backend_ip, STANDIN_PORT), 1):
                return True
            return None

        wait_for("the stand-in in the namespace", listening, timeout_s=30)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(10)


@contextlib.contextmanager
def traefik(namespace: str, port: int, log: Path, kubeconfig: str) -> Iterator[subprocess.Popen[bytes]]:
    binary = traefik_binary()
    args = [
        str(binary),
        f"--entryPoints.web.address=127.0.0.1:{port}",
        "--providers.kubernetesgateway=true",
        f"--providers.kubernetesgateway.namespaces={namespace}",
        "--providers.kubernetesgateway.statusaddress.ip=127.0.0.1",
        "--log.level=DEBUG",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    env["KUBECONFIG"] = kubeconfig
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


@pytest.fixture
def gateway_class(kube: Kube) -> Iterator[str]:
    name = f"kubemoe-e2e-{uuid.uuid4().hex[:8]}"
    created, body = kube.call(
        "POST",
        GATEWAY_PATHS["GatewayClass"],
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": name},
         "spec": {"controllerName": CONTROLLER}},
    )  # fmt: skip
    assert created == 201, body
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            kube.call("DELETE", f"{GATEWAY_PATHS['GatewayClass']}/{name}")


def gateway(name: str, klass: str, port: int, **listener: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {
            "gatewayClassName": klass,
            "listeners": [{"name": "web", "protocol": "HTTP", "port": port, **listener}],
        },
    }


def endpoint_slice(service: str, ip: str) -> dict[str, Any]:
    """The test's own slice for the operator's Service: not managed by the EndpointSlice controller, so it is
    left alone; Traefik reads every slice labelled with the Service's name."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-netns",
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "kubemoe-e2e"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": STANDIN_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True, "serving": True}}],
    }  # fmt: skip


def parent_status(route: dict[str, Any] | None, gateway_name: str) -> dict[str, str]:
    for p in ((route or {}).get("status") or {}).get("parents") or []:
        if p.get("controllerName") == CONTROLLER and p["parentRef"].get("name") == gateway_name:
            return {c["type"]: f"{c['status']}/{c.get('reason', '')}" for c in p.get("conditions") or []}
    return {}


def chat(port: int, path: str, model: str, host: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"Content-Type": "application/json", **({"Host": host} if host else {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode()


def route_condition(kube: Kube, namespace: str, name: str, status: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        c = cond(kube.get("MoEModel", namespace, name), "RouteAccepted")
        return c if c.get("status") == status else None

    return wait_for(f"{name} RouteAccepted={status}", probe, timeout_s=60)


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 missing")
def test_traefik_accepts_the_rendered_route_and_a_request_reaches_the_backend(
    running_operator: OperatorProcess, kube: Kube, namespace: str, gateway_class: str, tmp_path: Path
) -> None:
    port = free_port()
    kube.apply(gateway("inference-gateway", gateway_class, port), namespace)
    routing = {"parentRefs": [{"name": "inference-gateway"}], "hostnames": ["models.example.test"]}
    model = moe_doc("gw-model", MODEL, placement=PLACEMENT, replicas=0, routing=routing)
    refused = moe_doc(
        "gw-refused", MODEL, placement=PLACEMENT, replicas=0,
        routing={"parentRefs": [{"name": "inference-gateway", "sectionName": "no-such-listener"}]},
    )  # fmt: skip
    orphan = moe_doc(
        "gw-orphan", MODEL, placement=PLACEMENT, replicas=0, routing={"parentRefs": [{"name": "nowhere"}]}
    )
    unplanned = moe_doc(
        "gw-unplanned", MODEL, placement={"instanceTypes": ["x9.nowhere"]}, replicas=0, routing=routing
    )
    kube.apply([model, refused, orphan, unplanned], namespace)
    served = "gw-model"  # the served name defaults to the CR's

    # Before any gateway controller runs, nobody has written the route's status: Unknown, and it says so.
    pending = route_condition(kube, namespace, "gw-model", "Unknown")
    assert pending["reason"] == "RouteStatusPending"
    assert "no Gateway controller has written a status" in pending["message"]
    # A reconcile that stops early (here: no plan) still writes it, as not observed, with the reason why.
    stopped = route_condition(kube, namespace, "gw-unplanned", "Unknown")
    assert (stopped["reason"], stopped["message"]) == (
        "NotObserved",
        "route not observed: UnknownInstanceType",
    )

    with (
        netns() as ns,
        standin(ns, served, tmp_path / "standin.log"),
        traefik(namespace, port, tmp_path / "traefik.log", os.environ["KUBECONFIG"]),
    ):
        created, body = kube.call(
            "POST",
            GATEWAY_PATHS["EndpointSlice"].format(ns=namespace),
            endpoint_slice("gw-model", ns.backend_ip),
        )
        assert created == 201, body

        def accepted() -> dict[str, str] | None:
            st = parent_status(kube.get("HTTPRoute", namespace, "gw-model"), "inference-gateway")
            return st if st.get("Accepted", "").startswith("True") else None

        try:
            st = wait_for("Traefik accepts the HTTPRoute", accepted, timeout_s=90)
        except AssertionError:
            raise AssertionError((tmp_path / "traefik.log").read_text()[-6000:]) from None
        assert st["ResolvedRefs"].startswith("True"), st
        c = route_condition(kube, namespace, "gw-model", "True")
        assert c["reason"] == "RouteAccepted"
        assert CONTROLLER in c["message"]

        # /v1/<name>/chat/completions on the gateway reaches /v1/chat/completions (the stand-in serves no other
        # path) in the namespace, for the route's hostname only.
        def routed() -> tuple[int, str] | None:
            code, body = chat(port, "/v1/gw-model/chat/completions", served, host="models.example.test")
            return (code, body) if code == 200 else None

        _code, body = wait_for("a request through Traefik", routed, timeout_s=60)
        assert json.loads(body)["choices"][0]["message"]["content"] == ANSWER
        assert chat(port, "/v1/gw-model/chat/completions", served, host="other.example.test")[0] == 404
        assert chat(port, "/v1/other-model/chat/completions", served, host="models.example.test")[0] == 404

        # The status says where a client reaches it through the Gateway: the route's hostname, the listener's
        # port, the prefix. The name does not resolve here, so the URL is dialled at Traefik's address.
        url = f"http://models.example.test:{port}/v1/gw-model"
        wait_for(
            "status.gatewayEndpoint",
            lambda: (
                kube.get("MoEModel", namespace, "gw-model").get("status", {}).get("gatewayEndpoint") == url
            ),
            timeout_s=30,
        )
        assert (
            chat(port, "/v1/gw-model/chat/completions", served, host="models.example.test:" + str(port))[0]
            == 200
        )
        for other in ("gw-refused", "gw-orphan", "gw-unplanned"):  # no accepted route: no URL
            assert "gatewayEndpoint" not in kube.get("MoEModel", namespace, other).get("status", {}), other

        # A listener the Gateway does not have: Traefik refuses, and the operator passes its reason on.
        no = route_condition(kube, namespace, "gw-refused", "False")
        assert no["reason"] == "RouteNotAccepted", no
        refusal = parent_status(kube.get("HTTPRoute", namespace, "gw-refused"), "inference-gateway")
        assert refusal["Accepted"].split("/")[1] in no["message"], (refusal, no)
        # A Gateway nobody serves: no controller ever writes a status; Unknown stays, and says why.
        lone = cond(kube.get("MoEModel", namespace, "gw-orphan"), "RouteAccepted")
        assert (lone["status"], lone["reason"]) == ("Unknown", "RouteStatusPending")
        assert "Gateway " + namespace + "/nowhere" in lone["message"]
        # The route is optional exposure: Ready is what the workload says, not what the gateway does.
        assert (
            cond(kube.get("MoEModel", namespace, "gw-refused"), "Ready").get("reason") != "RouteNotAccepted"
        )

        # A reconcile that stops early no longer observes the route: the URL goes with it.
        kube.apply(
            {**model, "spec": {**model["spec"], "placement": {"instanceTypes": ["x9.nowhere"]}}}, namespace
        )
        wait_for(
            "gatewayEndpoint dropped when the model stops planning",
            lambda: "gatewayEndpoint" not in kube.get("MoEModel", namespace, "gw-model").get("status", {}),
            timeout_s=30,
        )
