"""MoAPipeline with `topology.mode: decentralised` -> its peers: per member a ConfigMap and a one-replica
Deployment, a headless Service the peers find each other by, and one Service spreading clients over all.

Members are the pipeline's agents (every layer's), in spec order. Each peer pod sets `hostname: <member>` and
`subdomain: <headless Service>`, so it has the stable DNS name `<member>.<name>-peers.<ns>.svc.cluster.local`
and every peer's config can name the others up front (ring and graph selection need stable identities; a
peer that is down simply does not answer and is skipped within the layer deadline). The client Service is
`<name>-router`, the endpoint the central mode also serves, so clients do not change with the topology.

Each member also gets its own ClusterIP Service `<name>-peer-<member>`. Once it exists the controller
passes its address in `PeerRenderContext.peer_addresses`, and the peers call each other by that address
rather than by DNS name: it is as stable (fixed for the Service's lifetime, whatever pod is behind it),
and it works in clusters without a DNS server (the dev cluster has none). Until then, the DNS name.

Why a Deployment per member rather than a sidecar in each model server: a member may be an external
endpoint (no pod to put a sidecar in), or a MoEModel whose workload another CR owns and renders (a sidecar
would couple two CRs' pod templates and restart the model server on every pipeline edit). A peer is a small
CPU-only process; in its own Deployment it rolls, scales and fails independently of the model.

Pure: model references are resolved as for the router (`render.moapipeline.resolve_reference`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kubemoe.api.moapipeline import Agent, MoAPipeline
from kubemoe.peer.config import PeerConfig, PeerRef
from kubemoe.render.meta import PREFIX, object_meta, owner_reference, selector_labels, standard_labels
from kubemoe.render.moapipeline import (
    CLIENT_KEYS_DIR,
    CONFIG_DIR,
    DEFAULT_ROUTER_IMAGE,
    ROUTER_PORT,
    process_pod,
    resolve_reference,
    router_name,
)
from kubemoe.render.monitoring import peer_rules, render_prometheus_rule, render_service_monitor
from kubemoe.render.network import default_path_prefix, render_httproute
from kubemoe.router.config import AgentConfig, ClientAuthConfig

COMPONENT_PEER = "peer"
PEER_PORT = ROUTER_PORT
PEER_CONFIG_KEY = "peer.yaml"
MEMBER_LABEL = f"{PREFIX}/member"


@dataclass(frozen=True)
class PeerRenderContext:
    """The peer image (the kubemoe image), the referenced MoEModels' served names, and the base URLs of
    the members' Services the controller has seen (member -> `http://<clusterIP>:<port>`)."""

    image: str = DEFAULT_ROUTER_IMAGE
    served_names: Mapping[str, str] = field(default_factory=dict)
    peer_addresses: Mapping[str, str] = field(default_factory=dict)


def members(pipeline: MoAPipeline) -> list[Agent]:
    return [a for layer in pipeline.spec.layers for a in layer.agents]


def peer_name(pipeline: str, member: str) -> str:
    return f"{pipeline}-peer-{member}"


def peers_service_name(pipeline: str) -> str:
    """The headless Service: DNS for every peer pod, the peers' own discovery."""
    return f"{pipeline}-peers"


def peer_url(pipeline: str, member: str, namespace: str) -> str:
    return f"http://{member}.{peers_service_name(pipeline)}.{namespace}.svc.cluster.local:{PEER_PORT}"


def peer_address(cluster_ip: str) -> str:
    """The base URL of a member's Service by its ClusterIP (what `peer_addresses` holds)."""
    host = f"[{cluster_ip}]" if ":" in cluster_ip else cluster_ip
    return f"http://{host}:{PEER_PORT}"


def peer_auth(pipeline: MoAPipeline) -> ClientAuthConfig:
    """Client keys on the peer's endpoints: the router's settings (`spec.auth`), the same mount."""
    auth = pipeline.spec.auth
    return ClientAuthConfig(
        enabled=auth.enabled,
        keys_dir=CLIENT_KEYS_DIR if auth.enabled else None,
        requests_per_second=auth.requests_per_second,
        burst=auth.burst,
        revoked_keys=auth.revoked_keys,
    )


def peer_config(pipeline: MoAPipeline, member: Agent, ctx: PeerRenderContext) -> PeerConfig:
    """The config of `member`'s peer; the others are listed in ring order starting after it."""
    name, ns, spec = pipeline.metadata.name, pipeline.metadata.namespace, pipeline.spec
    names = [a.name for a in members(pipeline)]
    i = names.index(member.name)
    target = resolve_reference(member, namespace=ns, served_names=ctx.served_names)
    model = AgentConfig(
        name=member.name,
        url=target.url,
        model=target.model,
        api_key_file=target.api_key_file,
        api_key_env=target.api_key_env,
        temperature=member.temperature,
        top_p=member.top_p,
        max_tokens=member.max_tokens,
        system_prompt=member.system_prompt,
    )
    return PeerConfig(
        pipeline=name,
        model=model,
        peers=[
            PeerRef(name=n, url=ctx.peer_addresses.get(n) or peer_url(name, n, ns))
            for n in names[i + 1 :] + names[:i]
        ],
        topology=spec.topology,
        aggregator_prompt=spec.aggregator.prompt_template,
        aggregator_max_tokens=spec.aggregator.max_tokens,
        policy=spec.policy,
        auth=peer_auth(pipeline),
    )


def _deployment(
    pipeline: MoAPipeline,
    member: Agent,
    ctx: PeerRenderContext,
    config_text: str,
    owner: list[dict[str, Any]],
) -> dict[str, Any]:
    name, ns = pipeline.metadata.name, pipeline.metadata.namespace
    labels = {**standard_labels("MoAPipeline", name, COMPONENT_PEER), MEMBER_LABEL: member.name}
    selector = {**selector_labels("MoAPipeline", name, COMPONENT_PEER), MEMBER_LABEL: member.name}
    pod = process_pod(
        pipeline,
        container="peer",
        image=ctx.image,
        command=["kubemoe", "peer", f"--config={CONFIG_DIR}/{PEER_CONFIG_KEY}", f"--port={PEER_PORT}"],
        port=PEER_PORT,
        config_map=peer_name(name, member.name),
        requests={"cpu": "100m", "memory": "128Mi"},
        limits={"memory": "256Mi"},
    )
    digest = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(name=peer_name(name, member.name), namespace=ns, labels=labels, owner=owner),
        "spec": {
            # One peer per member: its DNS name is its identity. Spare capacity is more members, not replicas.
            "replicas": 0 if pipeline.spec.replicas == 0 else 1,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": {f"{PREFIX}/config-hash": digest}},
                "spec": {
                    "hostname": member.name,
                    "subdomain": peers_service_name(name),
                    # Queries this peer accepted finish before it exits (the peer's shutdown timeout is 30 s).
                    "terminationGracePeriodSeconds": 40,
                    **pod,
                },
            },
        },
    }


def _service(
    pipeline: MoAPipeline,
    *,
    name: str,
    headless: bool,
    owner: list[dict[str, Any]],
    member: str | None = None,
) -> dict[str, Any]:
    pname, ns = pipeline.metadata.name, pipeline.metadata.namespace
    selector = selector_labels("MoAPipeline", pname, COMPONENT_PEER)
    labels = standard_labels("MoAPipeline", pname, COMPONENT_PEER)
    if member is not None:
        selector[MEMBER_LABEL] = labels[MEMBER_LABEL] = member
    spec: dict[str, Any] = {
        "selector": selector,
        "ports": [{"name": "http", "port": PEER_PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    if headless:
        spec["clusterIP"] = "None"
    else:
        spec["type"] = "ClusterIP"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(name=name, namespace=ns, labels=labels, owner=owner),
        "spec": spec,
    }


def render_peers(pipeline: MoAPipeline, ctx: PeerRenderContext | None = None) -> list[dict[str, Any]]:
    """Every child of a decentralised MoAPipeline. Pure; ValueError if the pipeline is not decentralised."""
    if pipeline.spec.topology.mode != "decentralised":
        raise ValueError(f"MoAPipeline {pipeline.metadata.name} is not decentralised")
    ctx = ctx or PeerRenderContext()
    name, ns = pipeline.metadata.name, pipeline.metadata.namespace
    owner = owner_reference("MoAPipeline", name, pipeline.metadata.uid)
    objects: list[dict[str, Any]] = []
    for member in members(pipeline):
        text = yaml.safe_dump(peer_config(pipeline, member, ctx).to_file_dict(), sort_keys=False, width=120)
        labels = {**standard_labels("MoAPipeline", name, COMPONENT_PEER), MEMBER_LABEL: member.name}
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": object_meta(
                    name=peer_name(name, member.name), namespace=ns, labels=labels, owner=owner
                ),
                "data": {PEER_CONFIG_KEY: text},
            }
        )
        objects.append(_deployment(pipeline, member, ctx, text, owner))
        objects.append(
            _service(
                pipeline, name=peer_name(name, member.name), headless=False, owner=owner, member=member.name
            )
        )
    objects.append(_service(pipeline, name=peers_service_name(name), headless=True, owner=owner))
    objects.append(_service(pipeline, name=router_name(name), headless=False, owner=owner))
    if pipeline.spec.routing is not None:  # the same route as the central mode's, to the client Service
        objects.append(
            render_httproute(
                pipeline.spec.routing,
                name=router_name(name),
                namespace=ns,
                labels=standard_labels("MoAPipeline", name, COMPONENT_PEER),
                service_port=PEER_PORT,
                owner=owner,
                default_prefix=default_path_prefix(name),
            )
        )
    objects += _monitoring(pipeline, owner)
    return objects


def _monitoring(pipeline: MoAPipeline, owner: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ServiceMonitor over the members' own Services (one per pod: the headless and client Services select
    the same pods) and the peers' alerts, named `<name>-peers` (the router's are `<name>-router`)."""
    name, ns = pipeline.metadata.name, pipeline.metadata.namespace
    labels = standard_labels("MoAPipeline", name, COMPONENT_PEER)
    objects: list[dict[str, Any]] = []
    if pipeline.spec.monitoring.alerts.enabled:
        rules = peer_rules(
            pipeline.spec.monitoring.alerts,
            namespace=ns,
            name=name,
            services=f"{peer_name(name, '')}.+",
            max_utilization=pipeline.spec.topology.admission.max_utilization,
        )
        objects.append(
            render_prometheus_rule(
                rules, name=peers_service_name(name), namespace=ns, labels=labels, owner=owner
            )
        )
    if pipeline.spec.monitoring.service_monitor:
        objects.append(
            render_service_monitor(
                name=peers_service_name(name),
                namespace=ns,
                labels=labels,
                selector=selector_labels("MoAPipeline", name, COMPONENT_PEER),
                interval="30s",
                owner=owner,
                label_exists=MEMBER_LABEL,
            )
        )
    return objects
