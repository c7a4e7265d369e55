"""The client-facing Service and the Gateway API HTTPRoute."""

from __future__ import annotations

from typing import Any

from kubemoe.api.common import Routing
from kubemoe.render.meta import object_meta

HTTPROUTE_API_VERSION = "gateway.networking.k8s.io/v1"


def render_service(
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    selector: dict[str, str],
    port: int,
    owner: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(name=name, namespace=namespace, labels=labels, owner=owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def default_path_prefix(name: str) -> str:
    return f"/v1/{name}"


def render_httproute(
    routing: Routing,
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    service_port: int,
    owner: list[dict[str, Any]],
    default_prefix: str | None = None,
) -> dict[str, Any]:
    """`<pathPrefix>/chat/completions` on the Gateway reaches `/v1/chat/completions` on the server.

    The default prefix is `/v1/<name>` of the CR, which may differ from the Service `name` routed to.
    """
    prefix = routing.path_prefix or default_prefix or default_path_prefix(name)
    parents = []
    for ref in routing.parent_refs:
        parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": ref.name}
        if ref.namespace:
            parent["namespace"] = ref.namespace
        if ref.section_name:
            parent["sectionName"] = ref.section_name
        parents.append(parent)
    spec: dict[str, Any] = {
        "parentRefs": parents,
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "filters": [
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v1"}},
                    }
                ],
                "backendRefs": [{"name": name, "port": service_port}],
            }
        ],
    }
    if routing.hostnames:
        spec["hostnames"] = list(routing.hostnames)
    return {
        "apiVersion": HTTPROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": object_meta(name=name, namespace=namespace, labels=labels, owner=owner),
        "spec": spec,
    }
