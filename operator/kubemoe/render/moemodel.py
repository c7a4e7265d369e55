"""MoEModel + Plan -> the manifests that serve it, in apply order."""

from __future__ import annotations

from typing import Any

from kubemoe.api.moemodel import MoEModel
from kubemoe.planner.types import Plan
from kubemoe.render import engine
from kubemoe.render.meta import COMPONENT_MODEL, owner_reference, selector_labels, standard_labels
from kubemoe.render.monitoring import model_server_rules, render_prometheus_rule, render_service_monitor
from kubemoe.render.network import render_httproute, render_service
from kubemoe.render.workload import render_workload


def model_endpoint(name: str, namespace: str) -> str:
    """In-cluster OpenAI base URL of a MoEModel's Service."""
    return f"http://{name}.{namespace}.svc.cluster.local:{engine.VLLM_PORT}/v1"


def render_moemodel(model: MoEModel, plan: Plan) -> list[dict[str, Any]]:
    """Every child of the MoEModel. Pure: the same inputs give byte-identical output."""
    spec, meta = model.spec, model.metadata
    name, namespace = meta.name, meta.namespace
    owner = owner_reference("MoEModel", name, meta.uid)
    labels = standard_labels("MoEModel", name, COMPONENT_MODEL, engine.engine_version(spec, plan))
    selector = selector_labels("MoEModel", name, COMPONENT_MODEL)
    if plan.multi_node:
        # Only the leader serves HTTP; workers hold GPUs for its Ray cluster.
        selector = {**selector, "leaderworkerset.sigs.k8s.io/worker-index": "0"}
    objects = [
        render_workload(spec, plan, name=name, namespace=namespace, owner=owner),
        render_service(
            name=name,
            namespace=namespace,
            labels=labels,
            selector=selector,
            port=engine.VLLM_PORT,
            owner=owner,
        ),
    ]
    if spec.routing is not None:
        objects.append(
            render_httproute(
                spec.routing,
                name=name,
                namespace=namespace,
                labels=labels,
                service_port=engine.VLLM_PORT,
                owner=owner,
            )
        )
    monitoring = spec.monitoring
    if monitoring.alerts.enabled:
        rules = model_server_rules(
            monitoring.alerts,
            namespace=namespace,
            name=name,
            served=engine.served_model_name(spec, name),
            scraped=monitoring.service_monitor.enabled,
        )
        objects.append(
            render_prometheus_rule(rules, name=name, namespace=namespace, labels=labels, owner=owner)
        )
    if monitoring.service_monitor.enabled:
        objects.append(
            render_service_monitor(
                name=name,
                namespace=namespace,
                labels=labels,
                selector=selector_labels("MoEModel", name, COMPONENT_MODEL),
                interval=monitoring.service_monitor.interval,
                owner=owner,
            )
        )
    return objects
