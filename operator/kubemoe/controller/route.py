"""What the Gateway controllers say about a rendered HTTPRoute: its `status.parents`, read into the
`RouteAccepted` condition.

Gateway API leaves the route's status to each controller of a parent Gateway: one entry per (parentRef,
controllerName), with `Accepted` (the Gateway lets this route attach: listeners, namespaces, hostnames) and
`ResolvedRefs` (every backendRef resolves: the Service exists, the port, the kind). `RouteAccepted` is True
only when every parent we name has an entry of this route's generation with both True; False names the
first parent that refuses, with the gateway's own reason and message; Unknown while some parent has no entry
yet (no controller for its GatewayClass, or it has not got to the route yet).

It does not change `Ready`: Ready says the model serves in the cluster (its Service answers), which stays true
whatever a gateway does with the route, and the gateway's status can lag or be missing altogether.

Once the route is accepted, `status.gatewayEndpoint` says where a client outside the cluster reaches it
(`gateway_url`): read from the parent Gateway's listeners and addresses, which a `GatewayMemo` reads at
most once per TTL (a Gateway is nobody's child here, so no watch feeds it, and its address rarely changes).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kubemoe.api.common import Condition, ParentRef, Routing
from kubemoe.api.conditions import ConditionType, Reason
from kubemoe.controller import conditions as cond
from kubemoe.controller.kube import KINDS, KubeError, Reader
from kubemoe.render.network import default_path_prefix

GATEWAY_GROUP = "gateway.networking.k8s.io"


@dataclass(frozen=True)
class RouteState:
    accepted: bool | None
    reason: Reason
    message: str


def _matches(entry_ref: dict[str, Any], ref: ParentRef, route_namespace: str) -> bool:
    return (
        entry_ref.get("group", GATEWAY_GROUP) == GATEWAY_GROUP
        and entry_ref.get("kind", "Gateway") == "Gateway"
        and entry_ref.get("name") == ref.name
        and (entry_ref.get("namespace") or route_namespace) == (ref.namespace or route_namespace)
        and entry_ref.get("sectionName") == ref.section_name
    )


def _describe(ref: ParentRef, route_namespace: str) -> str:
    where = f"Gateway {ref.namespace or route_namespace}/{ref.name}"
    return f"{where} listener {ref.section_name}" if ref.section_name else where


def _condition(entry: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in entry.get("conditions") or [] if c.get("type") == type_), None)


def route_state(route: dict[str, Any] | None, parent_refs: list[ParentRef], *, namespace: str) -> RouteState:
    """The RouteAccepted condition for the live HTTPRoute `route` (None: it is not there) of a CR whose
    spec.routing names `parent_refs`."""
    if route is None:
        return RouteState(None, Reason.ROUTE_STATUS_PENDING, "the HTTPRoute has not been created yet")
    name = route["metadata"]["name"]
    generation = route["metadata"].get("generation")
    entries = (route.get("status") or {}).get("parents") or []
    pending: list[str] = []
    accepted: list[str] = []
    for ref in parent_refs:
        where = _describe(ref, namespace)
        mine = [e for e in entries if _matches(e.get("parentRef") or {}, ref, namespace)]
        if not mine:
            pending.append(f"{where}: no Gateway controller has written a status for it yet")
            continue
        for entry in mine:
            controller = entry.get("controllerName", "?")
            acc, refs = _condition(entry, "Accepted"), _condition(entry, "ResolvedRefs")
            stale = [
                c
                for c in (acc, refs)
                if c is not None
                and generation is not None
                and c.get("observedGeneration", generation) < generation
            ]
            if acc is None or stale:
                pending.append(f"{where} ({controller}): has not yet reported generation {generation}")
                continue
            if acc.get("status") != "True":
                return RouteState(
                    False,
                    Reason.ROUTE_NOT_ACCEPTED,
                    f"HTTPRoute {name} not accepted by {where} ({controller}): Accepted={acc.get('status')} "
                    f"{acc.get('reason', '')}: {acc.get('message', '')}".rstrip(": "),
                )
            if refs is not None and refs.get("status") != "True":
                return RouteState(
                    False,
                    Reason.ROUTE_REFS_UNRESOLVED,
                    f"HTTPRoute {name} accepted by {where} ({controller}) but its backends do not resolve: "
                    f"ResolvedRefs={refs.get('status')} {refs.get('reason', '')}: {refs.get('message', '')}".rstrip(
                        ": "
                    ),
                )
            accepted.append(f"{where} ({controller})")
    if pending:
        return RouteState(None, Reason.ROUTE_STATUS_PENDING, f"HTTPRoute {name}: " + "; ".join(pending))
    return RouteState(True, Reason.ROUTE_ACCEPTED, f"HTTPRoute {name} accepted by " + ", ".join(accepted))


def set_route_condition(
    conditions: list[Condition],
    routing: Routing | None,
    live: dict[tuple[str, str], dict[str, Any]],
    *,
    route_name: str,
    namespace: str,
    gateway_api: bool,
    generation: int | None,
) -> bool | None:
    """Set RouteAccepted from the synced children `live` ((kind, name) -> object), or drop it when the spec
    asks for no route; returns the condition's value (None also when there is none). `gateway_api`: whether
    the HTTPRoute CRD is installed."""
    if routing is None:
        conditions[:] = [c for c in conditions if c.type != ConditionType.ROUTE_ACCEPTED]
        return None
    if not gateway_api:
        state = RouteState(
            False, Reason.OPTIONAL_API_MISSING, "spec.routing asks for an HTTPRoute, but the Gateway API CRDs "
            "(gateway.networking.k8s.io/v1) are not installed",
        )  # fmt: skip
    else:
        state = route_state(live.get(("HTTPRoute", route_name)), routing.parent_refs, namespace=namespace)
    cond.set_condition(
        conditions,
        ConditionType.ROUTE_ACCEPTED,
        state.accepted,
        reason=state.reason,
        message=state.message,
        generation=generation,
    )
    return state.accepted


def _listener(gateway: dict[str, Any], ref: ParentRef) -> dict[str, Any] | None:
    """The HTTP(S) listener the route attaches to: the named one, else the Gateway's first HTTP(S) one."""
    for listener in (gateway.get("spec") or {}).get("listeners") or []:
        if ref.section_name is not None and listener.get("name") != ref.section_name:
            continue
        if listener.get("protocol") in ("HTTP", "HTTPS"):
            return dict(listener)
    return None


def _host(routing: Routing, listener: dict[str, Any], gateway: dict[str, Any]) -> str | None:
    """The route's first exact hostname, else the listener's, else the Gateway's first address (what a
    client can name: a wildcard cannot be dialled)."""
    for name in [*routing.hostnames, listener.get("hostname") or ""]:
        if name and "*" not in name:
            return str(name)
    for address in (gateway.get("status") or {}).get("addresses") or []:
        value = str(address.get("value") or "")
        if not value:
            continue
        try:
            return f"[{value}]" if ipaddress.ip_address(value).version == 6 else value
        except ValueError:
            return value  # a Hostname address
    return None


def gateway_url(
    gateway: dict[str, Any] | None, ref: ParentRef, routing: Routing, *, cr_name: str
) -> str | None:
    """The OpenAI base URL through `gateway` (None: it is not there, has no HTTP(S) listener for `ref`, or
    nothing a client can dial). The route rewrites `<prefix>` to `/v1`, so `<url>/chat/completions` works."""
    if gateway is None:
        return None
    listener = _listener(gateway, ref)
    host = _host(routing, listener, gateway) if listener is not None else None
    if listener is None or host is None:
        return None
    scheme = "https" if listener["protocol"] == "HTTPS" else "http"
    port = listener.get("port")
    default_port = 443 if scheme == "https" else 80
    where = host if port in (None, default_port) else f"{host}:{port}"
    return f"{scheme}://{where}{routing.path_prefix or default_path_prefix(cr_name)}"


@dataclass
class GatewayMemo:
    """Parent Gateways, each read at most once per `ttl_s`: endpoint URLs cost no read per reconcile, and one
    is stale at most `ttl_s` plus one resync after a Gateway changes. A read that fails (403 under
    per-namespace RBAC, gone) counts as no Gateway: no URL, never a failed reconcile."""

    ttl_s: float = 30.0
    _held: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, reader: Reader, namespace: str, name: str) -> dict[str, Any] | None:
        now = time.monotonic()
        with self._lock:
            held = self._held.get((namespace, name))
        if held is not None and now - held[0] < self.ttl_s:
            return held[1]
        try:
            obj = reader.get(KINDS["Gateway"], namespace, name)
        except KubeError:
            obj = None
        with self._lock:
            self._held[(namespace, name)] = (now, obj)
        return obj


def gateway_endpoint(
    memo: GatewayMemo,
    reader: Reader,
    routing: Routing | None,
    accepted: bool | None,
    *,
    namespace: str,
    cr_name: str,
) -> str | None:
    """`status.gatewayEndpoint`: the first parent's URL, only while RouteAccepted is True."""
    if routing is None or accepted is not True:
        return None
    for ref in routing.parent_refs:
        url = gateway_url(
            memo.get(reader, ref.namespace or namespace, ref.name), ref, routing, cr_name=cr_name
        )
        if url is not None:
            return url
    return None
