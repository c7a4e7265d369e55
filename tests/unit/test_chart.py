"""The Helm chart's static contract, without helm: its CRDs are the generated ones, every value is
documented and typed, the image it installs is the release the code is, and leader election is the
operator's Lease (RBAC on it in the release namespace, and the flags `kubemoe run` takes).

helm itself (lint, template, the schema's rejections) is exercised in tests/e2e/test_helm_chart.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import kubemoe
from kubemoe.api.crd import all_crds, dump_crd
from kubemoe.render.moapipeline import DEFAULT_ROUTER_IMAGE

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubemoe"
CHART_CRDS = CHART / "files" / "crds"
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES: dict[str, Any] = yaml.safe_load(VALUES_TEXT)
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
CHART_META: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())

# Keys another part of the project fills in later; reserved (documented and typed) but not rendered yet.
RESERVED = {"grafanaDashboards", "prometheusRule"}


@pytest.mark.parametrize("filename", sorted(all_crds()))
def test_chart_crds_are_the_generated_ones(filename: str) -> None:
    generated = dump_crd(all_crds()[filename])
    path = CHART_CRDS / filename
    assert path.exists(), f"charts/kubemoe/files/crds/{filename} is missing: run `make crds`"
    assert path.read_text() == generated, f"charts/kubemoe/files/crds/{filename} is stale: run `make crds`"
    assert path.read_text() == (ROOT / "crds" / filename).read_text()


def test_chart_carries_no_crd_the_models_do_not_generate() -> None:
    assert sorted(p.name for p in CHART_CRDS.glob("*.yaml")) == sorted(all_crds())


# ------------------------------------------------------------------ leader election (Lease) without helm
# A few template expressions stand for known values; the rest of the chart's logic is helm's
# (tests/e2e/test_helm_chart.py renders it, tests/e2e/test_helm_sa_token.py asks the real authorizer).
LEASE = "LEASE-NAME"
RELEASE_NS = "RELEASE-NS"
_CONTROL = re.compile(r"{{-?\s*(if|range|with|define|else|end)\b([^}]*)}}")


def _substitute(text: str) -> str:
    """The template text with its lines that are only template actions dropped and the inline
    expressions replaced: the Lease name, the release namespace, `.Values.x.y` by its default."""

    def value(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr in {'include "kubemoe.leaseName" .', "$lease | quote"}:
            return LEASE
        if expr in (".Release.Namespace", "$.Release.Namespace"):
            return RELEASE_NS
        if expr.startswith(".Values."):
            node: Any = VALUES
            for part in expr.removeprefix(".Values.").split("."):
                node = node[part]
            return str(node)
        return "X"

    lines = [ln for ln in text.splitlines() if not re.fullmatch(r"\s*{{-?[^}]*}}\s*", ln)]
    return re.sub(r"{{-?\s*(.*?)\s*-?}}", value, "\n".join(lines))


def _guards(text: str, pos: int) -> list[str]:
    """The if/range/with blocks open at `pos` of a template, outermost first."""
    stack: list[str] = []
    for m in _CONTROL.finditer(text, 0, pos):
        kind, rest = m.group(1), m.group(2).strip()
        if kind == "end":
            stack.pop()
        elif kind == "else":
            stack[-1] = f"else of {stack[-1]}"
        else:
            stack.append(f"{kind} {rest}")
    return stack


RBAC = (CHART / "templates" / "rbac.yaml").read_text()
ROLE_START = RBAC.index("kind: Role\nmetadata:\n  name: {{ $fullname }}-leader-election")


def _leader_election_objects() -> dict[str, dict[str, Any]]:
    docs = [yaml.safe_load(_substitute(d)) for d in RBAC[RBAC.rfind("---", 0, ROLE_START) :].split("---")]
    return {d["kind"]: d for d in docs if d and d["metadata"]["name"] == "X-leader-election"}


def test_lease_role_grants_exactly_get_create_update_on_leases_in_the_release_namespace() -> None:
    objs = _leader_election_objects()
    assert sorted(objs) == ["Role", "RoleBinding"]
    role = objs["Role"]
    assert role["metadata"]["namespace"] == RELEASE_NS
    grants = sorted(
        (group, res, verb, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    )
    # get/update only on the release's Lease; create cannot be narrowed by name (the object has none yet).
    assert grants == [
        ("coordination.k8s.io", "leases", "create", ()),
        ("coordination.k8s.io", "leases", "get", (LEASE,)),
        ("coordination.k8s.io", "leases", "update", (LEASE,)),
    ]
    binding = objs["RoleBinding"]
    assert binding["metadata"]["namespace"] == RELEASE_NS
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "X-leader-election",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "X", "namespace": RELEASE_NS}]


def test_lease_role_is_rendered_in_both_rbac_modes_unless_standalone() -> None:
    # Outside the `if not .Values.watchNamespaces` / else: the cluster-wide and the namespaced install both
    # get it; only a standalone operator (no election) does not.
    assert _guards(RBAC, ROLE_START) == ["if .Values.rbac.create", "if not .Values.operator.standalone"]


def test_lease_name_defaults_to_the_full_name() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert '{{- default (include "kubemoe.fullname" .) .Values.operator.leaseName }}' in helpers
    assert VALUES["operator"]["leaseName"] == ""
    assert VALUES["operator"]["leaseSeconds"] == 15


def _deployment_args() -> list[str]:
    text = (CHART / "templates" / "deployment.yaml").read_text()
    block = _substitute(text[text.index("        args:\n") : text.index("        env:\n")])
    items = [ln.strip().removeprefix("- ") for ln in block.splitlines()[1:] if ln.strip().startswith("- ")]
    return [i for i in items if i not in ("X", '"X"')]  # extraArgs: the user's own


def test_deployment_args_are_accepted_by_kubemoe_run_and_carry_the_lease() -> None:
    from kubemoe.cli import build_parser

    args = _deployment_args()
    assert f"--lease-name={LEASE}" in args
    assert f"--lease-namespace={RELEASE_NS}" in args
    # Every flag the chart passes exists (a flag the CLI dropped, as --peering was, fails here).
    parsed = build_parser().parse_args(args)
    assert (parsed.lease_name, parsed.lease_namespace) == (LEASE, RELEASE_NS)
    assert float(parsed.lease_seconds) == VALUES["operator"]["leaseSeconds"]


def test_chart_carries_no_kopf_peering() -> None:
    assert not list((CHART / "crds").glob("*")), "charts/kubemoe/crds/: Helm installs it once, never upgrades"
    for path in sorted((CHART / "templates").glob("*")):
        text = path.read_text()
        assert "kopf.dev" not in text, f"{path.name} still uses kopf peering"
        assert "peering" not in text.lower(), f"{path.name} still uses kopf peering"


def test_app_version_is_the_package_version_and_the_router_image_default() -> None:
    assert CHART_META["appVersion"] == kubemoe.__version__
    assert f"{VALUES['image']['repository']}:{CHART_META['appVersion']}" == DEFAULT_ROUTER_IMAGE
    assert VALUES["image"]["tag"] == "", "image.tag overrides appVersion: leave it empty in the defaults"


def _leaves(values: Any = VALUES, schema: dict[str, Any] = SCHEMA, path: str = "") -> list[str]:
    """Dotted paths of the values the schema types one by one (it types free-form maps such as
    `resources` as a whole)."""
    props = schema.get("properties")
    if not isinstance(values, dict) or not props:
        return [path]
    out = []
    for key, child in values.items():
        sub = f"{path}.{key}" if path else key
        out += _leaves(child, props.get(key, {}), sub)
    return out


LEAVES = _leaves()


def _schema_node(path: str) -> dict[str, Any] | None:
    node: Any = SCHEMA
    for part in path.split("."):
        props = node.get("properties", {}) if isinstance(node, dict) else {}
        if part not in props:
            return None
        node = props[part]
    return dict(node)


@pytest.mark.parametrize("path", LEAVES)
def test_every_value_is_typed_in_the_schema(path: str) -> None:
    node = _schema_node(path)
    assert node is not None, f"values.yaml has {path} but values.schema.json does not"
    assert "type" in node, f"values.schema.json: {path} has no type"
    assert node.get("description"), f"values.schema.json: {path} has no description"


def test_schema_rejects_unknown_keys_at_every_documented_object() -> None:
    assert SCHEMA["additionalProperties"] is False
    for key, node in SCHEMA["properties"].items():
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{key}: unknown keys would be ignored silently"


def test_every_value_has_a_comment_in_values_yaml() -> None:
    stack: list[tuple[int, str]] = []
    commented: dict[str, bool] = {}
    previous = ""
    for line in VALUES_TEXT.splitlines():
        m = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):", line)
        if m:
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([p for _, p in stack] + [m.group(2)])
            stack.append((indent, m.group(2)))
            commented[path] = previous.lstrip().startswith("#")
        if line.strip():
            previous = line
    missing = [p for p in LEAVES if not commented.get(p)]
    assert not missing, f"values.yaml: no comment above {missing}"


def test_reserved_keys_are_documented_disabled_and_typed() -> None:
    assert VALUES["grafanaDashboards"] == {"enabled": False, "labels": {}, "annotations": {}}
    assert VALUES["prometheusRule"] == {"enabled": False, "additionalLabels": {}}
    for key in RESERVED:
        assert SCHEMA["properties"][key]["properties"]["enabled"]["type"] == "boolean"


def test_chart_readme_lists_every_top_level_value() -> None:
    readme = (CHART / "README.md").read_text()
    for key in VALUES:
        assert f"`{key}" in readme, f"charts/kubemoe/README.md does not document {key}"
