"""MoAPipeline -> the router that serves it: ConfigMap (the resolved pipeline), Deployment, Service, and
optionally an HTTPRoute, a PrometheusRule and a ServiceMonitor.

Model references are resolved by the caller (the controller reads MoEModels from the cluster; the CLI reads
them from the same file), so this module stays pure.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kubemoe.api.moapipeline import Agent, Aggregator, MoAPipeline
from kubemoe.render.meta import (
    COMPONENT_ROUTER,
    PREFIX,
    object_meta,
    owner_reference,
    selector_labels,
    standard_labels,
)
from kubemoe.render.moemodel import model_endpoint
from kubemoe.render.monitoring import render_prometheus_rule, render_service_monitor
from kubemoe.render.monitoring import router_rules as pipeline_router_rules
from kubemoe.render.network import default_path_prefix, render_httproute, render_service
from kubemoe.router.config import Limits, ResolvedUpstream, RouterConfig

ROUTER_PORT = 8080
CONFIG_KEY = "router.yaml"
CONFIG_DIR = "/etc/kubemoe"
SECRETS_DIR = "/var/run/secrets/kubemoe"
#: Where the client keys Secret is mounted: apart from SECRETS_DIR, so no upstream Secret's name can clash.
CLIENT_KEYS_DIR = "/var/run/kubemoe/client-keys"
DEFAULT_ROUTER_IMAGE = "ghcr.io/kubemoe/kubemoe:0.1.0"


@dataclass(frozen=True)
class RouterRenderContext:
    """What the renderer needs beyond the CR: the router image and the referenced models' served names."""

    image: str = DEFAULT_ROUTER_IMAGE
    #: MoEModel name -> its served model name (`spec.model.servedModelName`, which defaults to the name).
    served_names: Mapping[str, str] = field(default_factory=dict)
    limits: Limits | None = None


def router_name(name: str) -> str:
    """`<name>-router`: a MoEModel and a MoAPipeline of the same name must not fight over `<name>`."""
    return f"{name}-router"


def router_endpoint(name: str, namespace: str) -> str:
    return f"http://{router_name(name)}.{namespace}.svc.cluster.local:{ROUTER_PORT}/v1"


def secret_key_path(secret: str, key: str) -> str:
    return f"{SECRETS_DIR}/{secret}/{key}"


def resolve_reference(
    ref: Agent | Aggregator, *, namespace: str, served_names: Mapping[str, str]
) -> ResolvedUpstream:
    """A model reference as the router calls it. API keys stay in their Secret, mounted as a file."""
    if ref.moe_model_ref is not None:
        name = ref.moe_model_ref.name
        return ResolvedUpstream(url=model_endpoint(name, namespace), model=served_names.get(name, name))
    assert ref.endpoint is not None
    secret = ref.endpoint.api_key_secret_ref
    return ResolvedUpstream(
        url=ref.endpoint.url.rstrip("/"),
        model=ref.endpoint.model,
        api_key_file=secret_key_path(secret.name, secret.key) if secret else None,
    )


def router_config(pipeline: MoAPipeline, ctx: RouterRenderContext) -> RouterConfig:
    ns = pipeline.metadata.namespace
    return RouterConfig.from_spec(
        pipeline.metadata.name,
        pipeline.spec,
        lambda ref: resolve_reference(ref, namespace=ns, served_names=ctx.served_names),
        keys_dir=CLIENT_KEYS_DIR,
        limits=ctx.limits or default_limits(pipeline),
    )


def client_keys_secret(pipeline: MoAPipeline) -> str | None:
    """The Secret of the pipeline's client keys (None when auth is off): `auth.secretName` or
    `<name>-client-keys`."""
    auth = pipeline.spec.auth
    if not auth.enabled:
        return None
    return auth.secret_name or f"{pipeline.metadata.name}-client-keys"


def default_limits(pipeline: MoAPipeline) -> Limits:
    """Shed load above the target rate. By Little's law, requests in flight = rate x time in the system, and
    a request lives at most one layer deadline per layer plus the aggregator's; the router replicas share
    the target, so each one caps its own share."""
    target = pipeline.spec.capacity.target_requests_per_second
    if target is None:
        return Limits()
    per_request = pipeline.spec.policy.layer_timeout_seconds * (len(pipeline.spec.layers) + 1)
    replicas = max(1, pipeline.spec.replicas)
    return Limits(max_concurrent_requests=max(1, math.ceil(target * per_request / replicas)))


def _secret_volumes(pipeline: MoAPipeline) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    secrets = sorted(
        {
            ref.endpoint.api_key_secret_ref.name
            for ref in [
                *(a for layer in pipeline.spec.layers for a in layer.agents),
                pipeline.spec.aggregator,
            ]
            if ref.endpoint is not None and ref.endpoint.api_key_secret_ref is not None
        }
    )
    volumes = [{"name": f"key-{s}", "secret": {"secretName": s, "defaultMode": 0o440}} for s in secrets]
    mounts = [{"name": f"key-{s}", "mountPath": f"{SECRETS_DIR}/{s}", "readOnly": True} for s in secrets]
    clients = client_keys_secret(pipeline)
    if clients is not None:
        # optional: a missing Secret leaves the pod running but not ready (the router answers 401 and /readyz
        # 503 until it has keys), instead of stuck in ContainerCreating; the kubelet fills it in once created.
        # A directory mount, not subPath: only then does the kubelet update the files in place on rotation.
        volumes.append(
            {"name": "client-keys", "secret": {"secretName": clients, "defaultMode": 0o440, "optional": True}}
        )
        mounts.append({"name": "client-keys", "mountPath": CLIENT_KEYS_DIR, "readOnly": True})
    return volumes, mounts


def process_pod(
    pipeline: MoAPipeline,
    *,
    container: str,
    image: str,
    command: list[str],
    port: int,
    config_map: str,
    requests: dict[str, Any],
    limits: dict[str, Any],
) -> dict[str, Any]:
    """The pod spec of a kubemoe process serving a pipeline (the router, or one decentralised peer): its
    config from `config_map`, the pipeline's key Secrets mounted, `requests`/`limits` as defaults under
    `spec.resources`, and the restricted Pod Security Standard (it needs no privilege at all)."""
    secret_volumes, secret_mounts = _secret_volumes(pipeline)
    requests = {**requests, **{k: str(v) for k, v in pipeline.spec.resources.requests.items()}}
    limits = {**limits, **{k: str(v) for k, v in pipeline.spec.resources.limits.items()}}
    return {
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            # The Secret volumes are 0440 root-owned unless the pod has an fsGroup: without it the process
            # (uid 65532) cannot read its client or upstream keys (seen on the real node: PermissionError).
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": container,
                "image": image,
                "command": command,
                "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                "resources": {
                    "requests": dict(sorted(requests.items())),
                    "limits": dict(sorted(limits.items())),
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                    *secret_mounts,
                ],
            }
        ],
        "volumes": [{"name": "config", "configMap": {"name": config_map}}, *secret_volumes],
    }


#: Where router workers keep their metric samples (an emptyDir; see `router.workers`).
METRICS_DIR = "/run/kubemoe-metrics"


def _router_deployment(
    pipeline: MoAPipeline, ctx: RouterRenderContext, *, config_text: str, owner: list[dict[str, Any]]
) -> dict[str, Any]:
    name, ns = pipeline.metadata.name, pipeline.metadata.namespace
    labels = standard_labels("MoAPipeline", name, COMPONENT_ROUTER)
    selector = selector_labels("MoAPipeline", name, COMPONENT_ROUTER)
    workers = pipeline.spec.workers
    command = ["kubemoe", "router", f"--config={CONFIG_DIR}/{CONFIG_KEY}", f"--port={ROUTER_PORT}"]
    if workers > 1:
        command.append(f"--workers={workers}")
    pod = process_pod(
        pipeline,
        container="router",
        image=ctx.image,
        command=command,
        port=ROUTER_PORT,
        config_map=router_name(name),
        requests={"cpu": f"{250 * workers}m", "memory": "256Mi"},
        limits={"memory": f"{512 * workers}Mi"},
    )
    if workers > 1:
        # The workers' metric samples live in files (prometheus-client's multiprocess mode); the root
        # filesystem is read-only, so they get a memory-backed emptyDir.
        container = pod["containers"][0]
        container["env"] = [{"name": "PROMETHEUS_MULTIPROC_DIR", "value": METRICS_DIR}]
        container["volumeMounts"].append({"name": "metrics", "mountPath": METRICS_DIR})
        pod["volumes"].append({"name": "metrics", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}})
    digest = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(name=router_name(name), namespace=ns, labels=labels, owner=owner),
        "spec": {
            "replicas": pipeline.spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "template": {
                # A changed pipeline rolls the router: the config hash is part of the pod template.
                "metadata": {"labels": labels, "annotations": {f"{PREFIX}/config-hash": digest}},
                "spec": pod,
            },
        },
    }


def router_rules(pipeline: MoAPipeline) -> list[dict[str, Any]]:
    """The router's alerts (kubemoe.render.monitoring keeps every rendered rule in one place)."""
    name, ns = pipeline.metadata.name, pipeline.metadata.namespace
    return pipeline_router_rules(
        pipeline.spec.monitoring.alerts, namespace=ns, name=name, service=router_name(name)
    )


def render_moapipeline(pipeline: MoAPipeline, ctx: RouterRenderContext | None = None) -> list[dict[str, Any]]:
    """Every child of the MoAPipeline. Pure."""
    ctx = ctx or RouterRenderContext()
    name, ns = pipeline.metadata.name, pipeline.metadata.namespace
    owner = owner_reference("MoAPipeline", name, pipeline.metadata.uid)
    labels = standard_labels("MoAPipeline", name, COMPONENT_ROUTER)
    selector = selector_labels("MoAPipeline", name, COMPONENT_ROUTER)
    config_text = yaml.safe_dump(router_config(pipeline, ctx).to_file_dict(), sort_keys=False, width=120)
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": object_meta(name=router_name(name), namespace=ns, labels=labels, owner=owner),
            "data": {CONFIG_KEY: config_text},
        },
        _router_deployment(pipeline, ctx, config_text=config_text, owner=owner),
        render_service(
            name=router_name(name),
            namespace=ns,
            labels=labels,
            selector=selector,
            port=ROUTER_PORT,
            owner=owner,
        ),
    ]
    if pipeline.spec.routing is not None:
        objects.append(
            render_httproute(
                pipeline.spec.routing,
                name=router_name(name),
                namespace=ns,
                labels=labels,
                service_port=ROUTER_PORT,
                owner=owner,
                default_prefix=default_path_prefix(name),
            )
        )
    if pipeline.spec.monitoring.alerts.enabled:
        objects.append(
            render_prometheus_rule(
                router_rules(pipeline), name=router_name(name), namespace=ns, labels=labels, owner=owner
            )
        )
    if pipeline.spec.monitoring.service_monitor:
        objects.append(
            render_service_monitor(
                name=router_name(name),
                namespace=ns,
                labels=labels,
                selector=selector,
                interval="30s",
                owner=owner,
            )
        )
    return objects
