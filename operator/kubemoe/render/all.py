"""Render a set of CR documents the way the operator would: plan each MoEModel, then render everything.

MoAPipelines resolve `moeModelRef`s against the MoEModels of the same set (their served names); a
reference to a MoEModel outside the set is rendered with the Service URL and name it would have. A
decentralised pipeline renders its peers (`render.peers`), a central one its router.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.api.moemodel import MoEModel
from kubemoe.catalog.loader import Catalog
from kubemoe.planner import PlanningError, plan_placement
from kubemoe.planner.settings import PlannerSettings
from kubemoe.render.engine import served_model_name
from kubemoe.render.moapipeline import DEFAULT_ROUTER_IMAGE, RouterRenderContext, render_moapipeline
from kubemoe.render.moemodel import render_moemodel
from kubemoe.render.peers import PeerRenderContext, render_peers


def render_documents(
    docs: Sequence[MoEModel | MoAPipeline],
    catalog: Catalog,
    *,
    settings: PlannerSettings | None = None,
    router_image: str | None = None,
) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, MoEModel):
            try:
                plan = plan_placement(doc.spec, catalog, settings)
            except PlanningError as exc:
                exc.message = f"MoEModel {doc.metadata.namespace}/{doc.metadata.name}: {exc.message}"
                raise
            objects += render_moemodel(doc, plan)
        else:
            served = {
                m.metadata.name: served_model_name(m.spec, m.metadata.name)
                for m in docs
                if isinstance(m, MoEModel) and m.metadata.namespace == doc.metadata.namespace
            }
            image = router_image or DEFAULT_ROUTER_IMAGE
            if doc.spec.topology.mode == "decentralised":
                # As the operator renders it, before it has seen the members' Service addresses (it then
                # points the peers at them; until then they use the Services' names).
                objects += render_peers(doc, PeerRenderContext(image=image, served_names=served))
            else:
                objects += render_moapipeline(doc, RouterRenderContext(image=image, served_names=served))
    return objects
