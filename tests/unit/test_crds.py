"""The CRDs in crds/ are generated from the pydantic models, structural, and documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemoe.api.crd import all_crds, dump_crd

CRDS = Path(__file__).resolve().parents[2] / "crds"


@pytest.mark.parametrize("filename", sorted(all_crds()))
def test_checked_in_crd_matches_what_the_models_generate(filename: str) -> None:
    generated = dump_crd(all_crds()[filename])
    on_disk = (CRDS / filename).read_text() if (CRDS / filename).exists() else ""
    assert on_disk == generated, f"crds/{filename} is stale: run `make crds`"


def test_crds_directory_holds_nothing_but_generated_files() -> None:
    assert sorted(p.name for p in CRDS.glob("*.yaml")) == sorted(all_crds())


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, child in node.get("properties", {}).items():
            out += _walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("filename", sorted(all_crds()))
def test_schema_is_structural_every_node_typed_and_no_json_schema_leftovers(filename: str) -> None:
    for path, node in _walk(_schema(all_crds()[filename])):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"):
            assert forbidden not in node, f"{path} has {forbidden}"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path}: properties and additionalProperties together"
        if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(
            node["exclusiveMinimum"], bool
        ):
            pytest.fail(f"{path}: numeric exclusiveMinimum is not OpenAPI 3.0")


@pytest.mark.parametrize("filename", sorted(all_crds()))
def test_every_spec_field_has_a_description_for_kubectl_explain(filename: str) -> None:
    spec = _schema(all_crds()[filename])["properties"]["spec"]
    # Every field; the items of a list (or values of a map) of scalars are described by the list itself.
    missing = [
        path
        for path, node in _walk(spec, "spec")
        if not node.get("description") and not (path.endswith(("[]", "{}")) and "properties" not in node)
    ]
    assert missing == []


def test_moemodel_crd_names_scale_subresource_and_printer_columns() -> None:
    crd = all_crds()["kubemoe.io_moemodels.yaml"]
    names = crd["spec"]["names"]
    assert (names["kind"], names["shortNames"], names["categories"]) == ("MoEModel", ["moe"], ["kubemoe"])
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert version["subresources"]["scale"]["labelSelectorPath"] == ".status.selector"
    columns = [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c]
    assert columns == ["Model", "Instance", "TP", "EP", "Nodes", "$/Mtok", "Ready", "Age"]


def test_moapipeline_crd_names_and_printer_columns() -> None:
    crd = all_crds()["kubemoe.io_moapipelines.yaml"]
    assert crd["spec"]["names"]["shortNames"] == ["moa"]
    version = crd["spec"]["versions"][0]
    assert "scale" not in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c]
    assert columns == ["Layers", "Agents", "Endpoint", "Ready", "Age"]


def _rules(node: dict[str, Any]) -> list[str]:
    return [r["rule"] for _, n in _walk(node) for r in n.get("x-kubernetes-validations", [])]


def test_cross_field_rules_are_cel_validations_in_the_schema() -> None:
    moe = _rules(_schema(all_crds()["kubemoe.io_moemodels.yaml"]))
    moa = _rules(_schema(all_crds()["kubemoe.io_moapipelines.yaml"]))
    assert any("tensorParallelSize == 8" in r for r in moe), "TP power of two"
    assert any("engine.kind" in r for r in moe), "engine matches accelerator"
    assert any("has(self.moeModelRef) != has(self.endpoint)" in r for r in moa), "exactly one model reference"
    assert any("minResponses" in r for r in moa), "quorum <= agents in the layer"
    assert all(any("metadata.name" in r for r in rules) for rules in (moe, moa)), "name rule"


def test_defaults_reach_the_schema_so_the_api_server_fills_them() -> None:
    spec = _schema(all_crds()["kubemoe.io_moemodels.yaml"])["properties"]["spec"]
    serving = spec["properties"]["serving"]
    assert serving["default"] == {}
    assert serving["properties"]["gpuMemoryUtilization"]["default"] == 0.9
    assert serving["properties"]["kvCacheDtype"]["enum"] == ["auto", "fp8"]
    assert spec["properties"]["placement"]["properties"]["strategy"]["default"] == "cheapest"
    assert "default" not in spec["properties"]["replicas"], "unset replicas means an autoscaler owns them"


def test_conditions_merge_per_type_under_server_side_apply() -> None:
    status = _schema(all_crds()["kubemoe.io_moemodels.yaml"])["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_generated_yaml_parses_back_to_the_same_object() -> None:
    for crd in all_crds().values():
        assert yaml.safe_load(dump_crd(crd)) == crd
