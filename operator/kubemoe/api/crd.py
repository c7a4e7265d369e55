"""CustomResourceDefinitions generated from the pydantic models (`kubemoe crds`, `make crds`).

pydantic writes JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3 schema. The
conversion inlines every `$ref`, turns `Optional[X]` (`anyOf: [X, null]`) into X, maps numeric
`exclusiveMinimum` to OpenAPI 3.0's boolean form, and drops what a structural schema forbids
(`additionalProperties: false` beside `properties`, `title`). Unknown fields are still rejected: kubectl's
default `--validate=strict` asks the server to refuse fields that the schema does not declare.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from kubemoe.api.common import GROUP, VERSION
from kubemoe.api.moapipeline import MoAPipelineSpec, MoAPipelineStatus
from kubemoe.api.moemodel import MoEModelSpec, MoEModelStatus
from kubemoe.api.rules import CR_NAME_RULE

# Object names become Service names, label values and pod-name prefixes (LWS pods are `<name>-<group>-<worker>`),
# so they must be DNS-1035 labels with room for suffixes. The Python twin is `ObjectMeta`'s name check.
NAME_RULE = CR_NAME_RULE.schema()

_DROP = {"title", "$defs"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    while True:
        if "$ref" in node:
            target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
            target.update(node)  # the field's own description and default win over the class's
            node = target
            continue
        options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
        if "anyOf" in node and len(options) == 1:  # Optional[X] -> X: absence, not null, means "unset"
            merged = dict(options[0])
            merged.update({k: v for k, v in node.items() if k != "anyOf"})
            node = merged
            continue
        break
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key in ("properties", "$defs"):
            out[key] = {k: _resolve(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
            out[key] = _resolve(value, defs)
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if "default" in out and out["default"] is None:
        del out["default"]
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's schema as Kubernetes wants it: structural, refs inlined, camelCase."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _resolve(raw, raw.get("$defs", {}))
    _mark_list_maps(schema)
    return schema


def _mark_list_maps(node: Any) -> None:
    """Conditions are a map keyed by type, so server-side apply merges them per condition."""
    if not isinstance(node, dict):
        return
    for name, prop in node.get("properties", {}).items():
        if name == "conditions" and prop.get("type") == "array":
            prop["x-kubernetes-list-type"] = "map"
            prop["x-kubernetes-list-map-keys"] = ["type"]
        _mark_list_maps(prop)
        _mark_list_maps(prop.get("items"))


def _crd(
    *,
    kind: str,
    plural: str,
    short_name: str,
    spec_model: type[BaseModel],
    status_model: type[BaseModel],
    columns: list[dict[str, Any]],
    scale: bool,
) -> dict[str, Any]:
    subresources: dict[str, Any] = {"status": {}}
    if scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    spec_schema = structural_schema(spec_model)
    spec_schema["description"] = spec_model.__doc__.strip() if spec_model.__doc__ else kind
    status_schema = structural_schema(status_model)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "kubemoe", "app.kubernetes.io/part-of": "kubemoe"},
            # Argo CD applies wave -1 before the MoEModels/MoAPipelines (wave 0) of the same sync.
            "annotations": {"argocd.argoproj.io/sync-wave": "-1"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["kubemoe"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"{kind} (kubemoe.io). {spec_schema['description']}",
                            "required": ["spec"],
                            "x-kubernetes-validations": [NAME_RULE],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "APIVersion of the object."},
                                "kind": {"type": "string", "description": "Kind of the object."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def _ready_column() -> dict[str, Any]:
    return {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}


def _age_column() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def moemodel_crd() -> dict[str, Any]:
    return _crd(
        kind="MoEModel",
        plural="moemodels",
        short_name="moe",
        spec_model=MoEModelSpec,
        status_model=MoEModelStatus,
        scale=True,
        columns=[
            {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
            {"name": "Instance", "type": "string", "jsonPath": ".status.plan.instanceType"},
            {"name": "TP", "type": "integer", "jsonPath": ".status.plan.tensorParallelSize"},
            {"name": "EP", "type": "integer", "jsonPath": ".status.plan.expertParallelSize"},
            {"name": "Nodes", "type": "integer", "jsonPath": ".status.plan.nodesPerReplica"},
            {"name": "$/Mtok", "type": "number", "jsonPath": ".status.plan.costPerMillionTokens"},
            _ready_column(),
            {
                "name": "Reason",
                "type": "string",
                "priority": 1,
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            },
            {"name": "Cost/h", "type": "number", "priority": 1, "jsonPath": ".status.plan.costPerHour"},
            {"name": "Endpoint", "type": "string", "priority": 1, "jsonPath": ".status.endpoint"},
            {"name": "Gateway", "type": "string", "priority": 1, "jsonPath": ".status.gatewayEndpoint"},
            _age_column(),
        ],
    )


def moapipeline_crd() -> dict[str, Any]:
    return _crd(
        kind="MoAPipeline",
        plural="moapipelines",
        short_name="moa",
        spec_model=MoAPipelineSpec,
        status_model=MoAPipelineStatus,
        scale=False,
        columns=[
            {"name": "Layers", "type": "integer", "jsonPath": ".status.layerCount"},
            {"name": "Agents", "type": "integer", "jsonPath": ".status.agentCount"},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
            _ready_column(),
            {"name": "Gateway", "type": "string", "priority": 1, "jsonPath": ".status.gatewayEndpoint"},
            {
                "name": "MaxRPS",
                "type": "number",
                "priority": 1,
                "jsonPath": ".status.capacity.maxStableRequestsPerSecond",
            },
            _age_column(),
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name in `crds/` -> CRD object."""
    return {
        f"{GROUP}_moemodels.yaml": moemodel_crd(),
        f"{GROUP}_moapipelines.yaml": moapipeline_crd(),
    }


def dump_crd(crd: dict[str, Any]) -> str:
    header = (
        "# Generated by `kubemoe crds` from operator/kubemoe/api. Do not edit by hand: run `make crds`.\n"
    )
    return header + yaml.safe_dump(crd, sort_keys=False, width=120)
