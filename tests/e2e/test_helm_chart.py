"""The chart passes helm's strict lint, renders objects the real API server admits (server-side dry run,
with its schemas, RBAC and Pod Security admission), and its values schema turns a wrong value into a clear
error before anything is sent to the cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from .harness import KubeCluster
from .operator_harness import *  # noqa: F403  (fixtures: kube, operator_crds, ...)
from .operator_harness import Kube

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = str(ROOT / "charts" / "kubemoe")

# Value sets that switch on every optional template: namespaced RBAC, the ServiceMonitor, the catalog
# ConfigMap, a standalone single replica.
VARIANTS: dict[str, list[str]] = {
    "defaults": [],
    "namespaced": ["--set", "watchNamespaces={@NS@}", "--set", "serviceMonitor.enabled=true"],
    "catalog": [
        "--set-json",
        'catalog.instances=[{"name":"x1.test","acceleratorKind":"gpu"}]',
        "--set",
        "priorityClassName=system-cluster-critical",
    ],
    "standalone": ["--set", "replicaCount=1", "--set", "operator.standalone=true"],
}


def _args(variant: str, namespace: str) -> list[str]:
    return [a.replace("@NS@", namespace) for a in VARIANTS[variant]]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict(kube_cluster: KubeCluster, variant: str) -> None:
    proc = kube_cluster.helm("lint", "--strict", CHART, *_args(variant, "team-a"), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def _template(kube_cluster: KubeCluster, namespace: str, *args: str) -> list[dict[str, Any]]:
    out = kube_cluster.helm("template", "kubemoe", CHART, "--namespace", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_template_passes_server_side_dry_run(kube: Kube, namespace: str, variant: str) -> None:
    # The namespace enforces the restricted Pod Security profile, so the dry run also proves the
    # operator pods are admitted there.
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    docs = _template(kube.cluster, namespace, *_args(variant, namespace))
    kinds = sorted({d["kind"] for d in docs})
    assert "Deployment" in kinds
    text = yaml.safe_dump_all(docs)
    proc = kube.kubectl("apply", "--dry-run=server", "--server-side", "-f", "-", input=text, check=False)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "Warning" not in proc.stderr, proc.stderr
    for d in docs:
        assert f"{d['kind'].lower()}" in proc.stdout.lower(), (
            f"{d['kind']} {d['metadata']['name']} not applied"
        )


def test_default_install_is_cluster_wide_and_namespaced_one_has_roles_only(kube_cluster: KubeCluster) -> None:
    default = {(d["kind"], d["metadata"]["name"]) for d in _template(kube_cluster, "ops")}
    assert ("ClusterRole", "kubemoe-operator") in default
    assert ("ClusterRoleBinding", "kubemoe-operator") in default
    scoped = _template(kube_cluster, "ops", "--set", "watchNamespaces={team-a,team-b}")
    kinds = [d["kind"] for d in scoped]
    assert "ClusterRole" not in kinds
    assert "ClusterRoleBinding" not in kinds
    roles = sorted((d["metadata"]["namespace"], d["metadata"]["name"]) for d in scoped if d["kind"] == "Role")
    # The watched namespaces' Roles, and leader election's in the release namespace (in both modes).
    assert roles == [
        ("ops", "kubemoe-leader-election"),
        ("team-a", "kubemoe-operator"),
        ("team-b", "kubemoe-operator"),
    ]
    assert ("Role", "kubemoe-leader-election") in default
    deploy = next(d for d in scoped if d["kind"] == "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args
    assert "--lease-name=kubemoe" in args
    assert "--lease-namespace=ops" in args


def test_standalone_has_no_lease_rbac(kube_cluster: KubeCluster) -> None:
    docs = _template(kube_cluster, "ops", *VARIANTS["standalone"])
    assert not [d for d in docs if "leader-election" in d["metadata"]["name"]]
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert "--standalone" in args
    assert not [a for a in args if a.startswith("--lease")]


def test_router_image_and_operator_image_come_from_one_value(kube_cluster: KubeCluster) -> None:
    docs = _template(
        kube_cluster, "ops", "--set", "image.repository=registry.test/kubemoe", "--set", "image.tag=9.9"
    )
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert container["image"] == "registry.test/kubemoe:9.9"
    assert "--router-image=registry.test/kubemoe:9.9" in container["args"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "replicaCount=two"], ["/replicaCount", "got string, want integer"]),
        (["--set", "operator.logFormat=xml"], ["/operator/logFormat", "json", "text"]),
        (["--set", "replicas=2"], ["additional properties 'replicas' not allowed"]),
        (["--set", "serviceMonitor.interval=often"], ["/serviceMonitor/interval", "does not match"]),
        (["--set-json", 'catalog.models=[{"family":"x"}]'], ["/catalog/models/0", "missing property 'id'"]),
        (["--set", "watchNamespaces={Team_A}"], ["/watchNamespaces/0", "does not match"]),
        (["--set", "operator.leaseSeconds=1"], ["/operator/leaseSeconds", "minimum"]),
        (["--set", "operator.peeringName=x"], ["additional properties 'peeringName' not allowed"]),
    ],
    ids=[
        "wrong-type",
        "not-in-enum",
        "unknown-key",
        "bad-duration",
        "entry-without-id",
        "bad-namespace",
        "lease-too-short",
        "peering-is-gone",
    ],
)
def test_values_schema_rejects_bad_values_with_a_clear_message(
    kube_cluster: KubeCluster, args: list[str], expected: list[str]
) -> None:
    proc = kube_cluster.helm("template", "kubemoe", CHART, *args, check=False)
    assert proc.returncode != 0, f"helm accepted {args}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    for word in expected:
        assert word in proc.stderr, f"{word!r} not in: {proc.stderr}"


def test_standalone_with_two_replicas_fails_with_a_reason(kube_cluster: KubeCluster) -> None:
    proc = kube_cluster.helm("template", "kubemoe", CHART, "--set", "operator.standalone=true", check=False)
    assert proc.returncode != 0
    assert "set replicaCount to 1" in proc.stderr
