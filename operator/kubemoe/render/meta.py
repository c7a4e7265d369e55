"""Names, labels and owner references shared by every rendered object."""

from __future__ import annotations

from typing import Any

from kubemoe.api.common import API_VERSION

MANAGED_BY = "kubemoe"
COMPONENT_MODEL = "model-server"
COMPONENT_ROUTER = "router"
#: Prefix of our own annotations and labels.
PREFIX = "kubemoe.io"


def selector_labels(kind: str, name: str, component: str) -> dict[str, str]:
    """Labels that select the pods of one CR's workload. Never change them: selectors are immutable."""
    return {
        "app.kubernetes.io/name": kind.lower(),
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
    }


def selector_string(kind: str, name: str, component: str) -> str:
    """The selector labels as a label-selector query (`k=v,k=v`), for list calls and the scale subresource."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(kind, name, component).items())


def standard_labels(kind: str, name: str, component: str, version: str | None = None) -> dict[str, str]:
    """Selector labels plus the ones the operator watches its children by (`managed-by`)."""
    labels = selector_labels(kind, name, component)
    labels["app.kubernetes.io/managed-by"] = MANAGED_BY
    labels["app.kubernetes.io/part-of"] = "kubemoe"
    if version:
        labels["app.kubernetes.io/version"] = version[:63]
    return labels


def owner_reference(kind: str, name: str, uid: str | None) -> list[dict[str, Any]]:
    """The CR as controller owner, so deleting it garbage-collects every child. Offline (no uid): none."""
    if not uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": kind,
            "name": name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def object_meta(
    *, name: str, namespace: str, labels: dict[str, str], owner: list[dict[str, Any]]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner:
        meta["ownerReferences"] = owner
    return meta
