"""The in-cluster install (manifests/operator) applies cleanly, and its ClusterRole grants the service
account every verb the operator uses, as the real RBAC authorizer answers `kubectl auth can-i`."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import KubeCluster

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SA = "system:serviceaccount:kubemoe-system:kubemoe"

NEEDED = [
    ("patch", "moemodels.kubemoe.io/status"),
    ("watch", "moemodels.kubemoe.io"),
    ("watch", "moapipelines.kubemoe.io"),
    ("patch", "moapipelines.kubemoe.io/status"),
    ("patch", "deployments.apps"),
    ("delete", "deployments.apps"),
    ("create", "services"),
    ("delete", "configmaps"),
    ("patch", "leaderworkersets.leaderworkerset.x-k8s.io"),
    ("delete", "httproutes.gateway.networking.k8s.io"),
    ("get", "gateways.gateway.networking.k8s.io"),
    ("patch", "prometheusrules.monitoring.coreos.com"),
    ("patch", "servicemonitors.monitoring.coreos.com"),
    ("list", "pods"),
    ("create", "events"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "namespaces"),
]


@pytest.fixture(scope="module")
def installed(kube_cluster: KubeCluster) -> KubeCluster:
    kube_cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    kube_cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests/operator/operator.yaml"))
    return kube_cluster


@pytest.mark.parametrize(("verb", "resource"), NEEDED, ids=[f"{v} {r}" for v, r in NEEDED])
def test_the_operator_service_account_may_do_what_the_operator_does(
    installed: KubeCluster, verb: str, resource: str
) -> None:
    proc = installed.kubectl("auth", "can-i", verb, resource, "--as", SA, "--all-namespaces", check=False)
    assert proc.stdout.strip() == "yes", f"{SA} cannot {verb} {resource}: {proc.stdout} {proc.stderr}"


@pytest.mark.parametrize("verb", ["get", "create", "update"])
def test_the_service_account_may_hold_the_leader_lease_in_its_namespace_only(
    installed: KubeCluster, verb: str
) -> None:
    def can(namespace: str) -> str:
        proc = installed.kubectl(
            "auth", "can-i", verb, "leases.coordination.k8s.io", "--as", SA, "-n", namespace, check=False
        )
        return proc.stdout.strip()

    assert can("kubemoe-system") == "yes"
    assert can("default") == "no"


def test_the_service_account_gets_nothing_beyond_its_job(installed: KubeCluster) -> None:
    for verb, resource in [
        ("get", "secrets"),
        ("delete", "nodes"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
    ]:
        proc = installed.kubectl("auth", "can-i", verb, resource, "--as", SA, "--all-namespaces", check=False)
        assert proc.stdout.strip() == "no", f"{SA} may {verb} {resource}"
