"""A small, typed Kubernetes REST client: get, list, server-side apply, delete, status patch.

The operator touches a handful of known kinds, so a static table maps kind -> REST path instead of a
discovery client. Foreign errors are mapped here, at one boundary:

    KubeError
      NotFound        -- 404 (object, or the whole API group/version when a CRD is missing)
      Conflict        -- 409
      KubeApiError    -- any other API status (status code and message kept)
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubemoe.controller import metrics

FIELD_MANAGER = "kubemoe"


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class KubeApiError(KubeError):
    pass


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str

    @property
    def group(self) -> str:
        return self.api_version.split("/")[0] if "/" in self.api_version else ""

    def base(self, namespace: str | None) -> str:
        root = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        return f"{root}/namespaces/{namespace}/{self.plural}" if namespace else f"{root}/{self.plural}"


KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind("v1", "Service", "services"),
        Kind("v1", "ConfigMap", "configmaps"),
        Kind("v1", "Pod", "pods"),
        Kind("v1", "Event", "events"),
        Kind("coordination.k8s.io/v1", "Lease", "leases"),
        Kind("apps/v1", "Deployment", "deployments"),
        Kind("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets"),
        Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
        Kind("gateway.networking.k8s.io/v1", "Gateway", "gateways"),
        Kind("monitoring.coreos.com/v1", "PrometheusRule", "prometheusrules"),
        Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors"),
        Kind("kubemoe.io/v1alpha1", "MoEModel", "moemodels"),
        Kind("kubemoe.io/v1alpha1", "MoAPipeline", "moapipelines"),
    )
}


def kind_of(obj: Mapping[str, Any]) -> Kind:
    return KINDS[obj["kind"]]


class Reader(Protocol):
    """Reads only: the API client, or a watch-fed cache in front of it (`controller.cache`)."""

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None: ...

    def list(self, kind: Kind, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]: ...


@runtime_checkable
class WriteThrough(Protocol):
    """A reader that also takes what the API server answered to our writes (the watch-fed cache)."""

    def remember(self, kind: str, obj: dict[str, Any] | None) -> None: ...


def remember(reader: object, kind: str, obj: dict[str, Any] | None) -> None:
    """Tell a write-through reader what a write of ours left on the API server (nothing for others)."""
    if isinstance(reader, WriteThrough):
        reader.remember(kind, obj)


class KubeClient:
    """Synchronous calls (the reconcile runs in a worker thread); every call is counted in metrics."""

    def __init__(self, api: client.ApiClient, *, api_check_ttl: float = 60.0) -> None:
        self.api = api
        self._api_check_ttl = api_check_ttl
        self._api_seen: dict[str, tuple[frozenset[str], float]] = {}

    def _call(
        self,
        verb: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        read: tuple[str, str] = ("GET", ""),
    ) -> Any:
        """One request; ``read`` names a GET for the reads metric: (GET or LIST, the kind)."""
        method, url, headers, payload, _ = self.api.param_serialize(
            verb,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        if verb == "GET":
            metrics.READS.labels(verb=read[0], kind=read[1]).inc()
        try:
            response = self.api.call_api(
                method, url, header_params=headers, body=payload, _request_timeout=(10, 60)
            )
            raw = response.read()  # type: ignore[no-untyped-call]
            status = response.status
        except ApiException as exc:  # connection-level failures surface as status 0
            raw, status = (exc.body or "").encode(), exc.status or 0
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # No answer at all (refused, reset, timed out, MaxRetryError): the API server is away, which
            # the callers handle like any other API error rather than dying on a foreign exception.
            metrics.API_ERRORS.labels(verb=verb, code="0").inc()
            raise KubeApiError(
                0, f"{verb} {path}: API server unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        if status >= 400 or status == 0:
            metrics.API_ERRORS.labels(verb=verb, code=str(status)).inc()
            message = f"{verb} {path}: {_status_message(raw, status)}"
            if status == 404:
                raise NotFound(404, message)
            if status == 409:
                raise Conflict(409, message)
            raise KubeApiError(status, message)
        return json.loads(raw) if raw else None

    # ---------------------------------------------------------------- reads
    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self._call("GET", f"{kind.base(namespace)}/{name}", read=("GET", kind.kind))
            return obj
        except NotFound:
            return None

    def list(self, kind: Kind, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self._call("GET", kind.base(namespace), query=query, read=("LIST", kind.kind))
        items: list[dict[str, Any]] = result.get("items", [])
        for item in items:  # list items carry no kind/apiVersion
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items

    def has_api(self, kind: Kind) -> bool:
        """Whether the API server serves this kind (its CRD may be missing). The resource list of each
        group/version is cached briefly, so a CRD installed or removed later is noticed without a restart
        and without asking on every reconcile; kinds of one group are told apart by their plural."""
        if not kind.group:
            return True
        seen = self._api_seen.get(kind.api_version)
        now = time.monotonic()
        if seen is None or now - seen[1] >= self._api_check_ttl:
            try:
                listing = self._call("GET", f"/apis/{kind.api_version}", read=("GET", "discovery"))
                plurals = frozenset(str(r.get("name")) for r in listing.get("resources", []))
            except NotFound:
                plurals = frozenset()
            seen = (plurals, now)
            self._api_seen[kind.api_version] = seen
        return kind.plural in seen[0]

    # ---------------------------------------------------------------- writes
    def apply(self, obj: Mapping[str, Any], *, force: bool = True, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply with our field manager. `force` takes over fields we own from other managers:
        the CR is the source of truth for everything we render. `dry_run` runs every validation and
        admission webhook and persists nothing."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        query = [("fieldManager", FIELD_MANAGER)]
        if force:
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        result: dict[str, Any] = self._call(
            "PATCH",
            f"{kind.base(meta.get('namespace'))}/{meta['name']}",
            body=dict(obj),
            query=query,
            content_type="application/apply-patch+yaml",
        )
        return result

    def merge_patch(self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "PATCH",
            f"{kind.base(namespace)}/{name}",
            body=dict(patch),
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
        )
        return result

    def delete(self, kind: Kind, namespace: str | None, name: str) -> None:
        with contextlib.suppress(NotFound):  # already gone is what we wanted
            self._call("DELETE", f"{kind.base(namespace)}/{name}", body={"propagationPolicy": "Background"})

    def patch_status(
        self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch the status subresource; returns the object as the API server stored it."""
        result: dict[str, Any] | None = self._call(
            "PATCH",
            f"{kind.base(namespace)}/{name}/status",
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )
        return result

    def create(self, kind: Kind, namespace: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self._call("POST", kind.base(namespace), body=dict(obj))
        return created

    def replace(self, kind: Kind, namespace: str, name: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: with metadata.resourceVersion set, a 409 Conflict if someone changed it meanwhile."""
        replaced: dict[str, Any] = self._call("PUT", f"{kind.base(namespace)}/{name}", body=dict(obj))
        return replaced


def _status_message(raw: bytes | str | None, status: int) -> str:
    try:
        return str(json.loads(raw or b"{}").get("message") or f"HTTP {status}")
    except (TypeError, ValueError):
        return f"HTTP {status}"
