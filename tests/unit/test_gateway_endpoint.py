"""status.gatewayEndpoint (controller.route): the OpenAI base URL through the parent Gateway, from its
listeners and addresses, said only while the route is accepted; Gateways read at most once per TTL."""

from __future__ import annotations

from typing import Any

import pytest

from kubemoe.api.common import ParentRef, Routing
from kubemoe.controller.kube import Kind, KubeError
from kubemoe.controller.route import GatewayMemo, gateway_endpoint, gateway_url

GW = ParentRef(name="gw")


def gateway(*listeners: dict[str, Any], addresses: list[str] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": "gw", "namespace": "ns"},
        "spec": {"listeners": list(listeners)},
    }
    if addresses is not None:
        obj["status"] = {"addresses": [{"type": "IPAddress", "value": a} for a in addresses]}
    return obj


def http(port: int = 80, **extra: Any) -> dict[str, Any]:
    return {"name": "web", "protocol": "HTTP", "port": port, **extra}


@pytest.mark.parametrize(
    ("gw", "routing", "ref", "url"),
    [
        # The route's exact hostname wins; port 80 is left out.
        (gateway(http(), addresses=["10.0.0.5"]), Routing(parent_refs=[GW], hostnames=["models.example.com"]), GW,
         "http://models.example.com/v1/m"),
        # A wildcard cannot be dialled: the next exact name is used, here the listener's.
        (gateway(http(hostname="gw.example.com")), Routing(parent_refs=[GW], hostnames=["*.example.com"]), GW,
         "http://gw.example.com/v1/m"),
        # No names at all: the Gateway's address, with the listener's port.
        (gateway(http(8080), addresses=["10.0.0.5"]), Routing(parent_refs=[GW]), GW, "http://10.0.0.5:8080/v1/m"),
        (gateway(http(8080), addresses=["fd00::5"]), Routing(parent_refs=[GW]), GW, "http://[fd00::5]:8080/v1/m"),
        # HTTPS on 443, and the route's own prefix.
        (gateway({"name": "tls", "protocol": "HTTPS", "port": 443, "hostname": "api.example.com"}),
         Routing(parent_refs=[GW], path_prefix="/llm/mixtral"), GW, "https://api.example.com/llm/mixtral"),
        # sectionName picks that listener, not the first one.
        (gateway(http(80), {"name": "alt", "protocol": "HTTP", "port": 9090}, addresses=["10.0.0.5"]),
         Routing(parent_refs=[ParentRef(name="gw", section_name="alt")]), ParentRef(name="gw", section_name="alt"),
         "http://10.0.0.5:9090/v1/m"),
        # Nothing a client can use: no such listener, no HTTP listener, no name and no address, no Gateway.
        (gateway(http(), addresses=["10.0.0.5"]), Routing(parent_refs=[GW]), ParentRef(name="gw", section_name="x"),
         None),
        (gateway({"name": "raw", "protocol": "TCP", "port": 9000}, addresses=["10.0.0.5"]), Routing(parent_refs=[GW]),
         GW, None),
        (gateway(http()), Routing(parent_refs=[GW], hostnames=["*.example.com"]), GW, None),
        (None, Routing(parent_refs=[GW]), GW, None),
    ],
)  # fmt: skip
def test_the_url_comes_from_the_listener_the_names_and_the_addresses(
    gw: dict[str, Any] | None, routing: Routing, ref: ParentRef, url: str | None
) -> None:
    assert gateway_url(gw, ref, routing, cr_name="m") == url


class Reader:
    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]], fail: int | None = None) -> None:
        self.objects, self.fail, self.reads = objects, fail, 0

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        assert kind.kind == "Gateway"
        self.reads += 1
        if self.fail is not None:
            raise KubeError(self.fail, "gateways.gateway.networking.k8s.io is forbidden")
        return self.objects.get((namespace or "", name))

    def list(self, kind: Kind, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        raise AssertionError("not used")


ROUTING = Routing(parent_refs=[ParentRef(name="gone"), ParentRef(name="gw", namespace="infra")])
GATEWAYS = {("infra", "gw"): gateway(http(8080), addresses=["10.0.0.5"])}


def test_only_an_accepted_route_gets_a_url_and_the_first_parent_with_one_gives_it() -> None:
    reader = Reader(GATEWAYS)
    for accepted in (None, False):
        assert gateway_endpoint(GatewayMemo(), reader, ROUTING, accepted, namespace="ns", cr_name="m") is None
    assert gateway_endpoint(GatewayMemo(), reader, None, True, namespace="ns", cr_name="m") is None
    assert reader.reads == 0  # nothing read for a route that is not accepted
    url = gateway_endpoint(GatewayMemo(), reader, ROUTING, True, namespace="ns", cr_name="m")
    assert url == "http://10.0.0.5:8080/v1/m"  # ns/gone is not there; infra/gw is


def test_a_gateway_is_read_once_per_ttl() -> None:
    reader, memo = Reader(GATEWAYS), GatewayMemo(ttl_s=60)
    for _ in range(5):
        gateway_endpoint(memo, reader, ROUTING, True, namespace="ns", cr_name="m")
    assert reader.reads == 2  # each of the two parents once
    expired = GatewayMemo(ttl_s=0)
    gateway_endpoint(expired, reader, ROUTING, True, namespace="ns", cr_name="m")
    gateway_endpoint(expired, reader, ROUTING, True, namespace="ns", cr_name="m")
    assert reader.reads == 6


@pytest.mark.parametrize("status", [403, 404, 500])
def test_a_gateway_that_cannot_be_read_gives_no_url_not_a_failure(status: int) -> None:
    reader = Reader(GATEWAYS, fail=status)
    assert gateway_endpoint(GatewayMemo(), reader, ROUTING, True, namespace="ns", cr_name="m") is None
