"""The operator authenticated as the chart's ServiceAccount (a TokenRequest token, not the admin
kubeconfig) brings the samples to Ready, and the real RBAC authorizer grants that account nothing
beyond what the operator does.

The operator runs here as a local process with a kubeconfig built from the token; with the real node
(tests/e2e/test_helm_install.py) the same chart runs it as pods, where the kubelet mounts the token.
The chart is installed with crds.install=false because the session's other tests already created the
CRDs (Helm refuses to adopt objects it did not create); its CRD install is covered by the dry run in
tests/e2e/test_helm_chart.py and by test_helm_install.py."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .harness import KubeCluster, wait_for
from .operator_harness import *  # noqa: F403  (fixtures: kube, namespace, ...)
from .operator_harness import KUBEMOE, SAMPLES, Kube, OperatorProcess, cond, free_port, moe_doc, wait_ready

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = str(ROOT / "charts" / "kubemoe")


@dataclass
class Release:
    name: str
    namespace: str
    fullname: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"


@pytest.fixture
def release(kube: Kube, namespace: str) -> Iterator[Release]:
    """The chart installed without operator pods (replicaCount 0): ServiceAccount and RBAC (the Lease's
    Role among it; the Lease itself goes with the namespace)."""
    name = f"sa-{uuid.uuid4().hex[:6]}"
    rel = Release(name=name, namespace=namespace, fullname=f"{name}-kubemoe")
    kube.cluster.helm(
        "install", name, CHART, "-n", namespace, "--set", "crds.install=false", "--set", "replicaCount=0",
        "--wait", "--timeout", "60s",
    )  # fmt: skip
    try:
        yield rel
    finally:
        kube.cluster.helm("uninstall", name, "-n", namespace, "--wait", check=False)


def _token_kubeconfig(cluster: KubeCluster, rel: Release, path: Path) -> Path:
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    token = cluster.kubectl(
        "create", "token", rel.fullname, "-n", rel.namespace, "--duration=1h"
    ).stdout.strip()
    cluster_entry: dict[str, Any] = {"server": server["server"]}
    if "certificate-authority-data" in server:
        cluster_entry["certificate-authority-data"] = server["certificate-authority-data"]
    elif "certificate-authority" in server:
        ca = Path(server["certificate-authority"])
        cluster_entry["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    else:
        cluster_entry["insecure-skip-tls-verify"] = server.get("insecure-skip-tls-verify", False)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster_entry}],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    return path


def test_operator_with_the_service_account_token_brings_samples_to_ready(
    kube: Kube, namespace: str, release: Release, tmp_path: Path
) -> None:
    kubeconfig = _token_kubeconfig(kube.cluster, release, tmp_path / "sa.kubeconfig")
    # The token really is the ServiceAccount, not the admin.
    whoami = kube.cluster.run("kubectl", "--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json")
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == release.user

    port = free_port()
    env = dict(kube.cluster.env, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1")
    # Leader election like the chart's pods (not standalone): get/update are limited to this release's
    # Lease by resourceNames, and the Lease does not exist yet, so this also proves create suffices.
    assert kube.kubectl("get", "lease", release.fullname, "-n", namespace, check=False).returncode != 0
    args = [
        KUBEMOE,
        "run",
        "--lease-name",
        release.fullname,
        "--lease-namespace",
        release.namespace,
        "--resync-seconds",
        "3",
        "--health-port",
        str(port),
    ]
    op = OperatorProcess(args=args, port=port, log_path=tmp_path / "operator.log", env=env).start()
    try:
        op.wait_ready(timeout_s=90)
        models = yaml.safe_load((SAMPLES / "mixtral-8x7b-p4de.yaml").read_text())
        models["metadata"].pop("namespace", None)
        kube.apply(models, namespace)
        pipeline = yaml.safe_load((SAMPLES / "moa-pipeline.yaml").read_text())
        pipeline["metadata"].pop("namespace", None)
        kube.apply(
            [
                moe_doc("mixtral-8x7b", "mistralai/Mixtral-8x7B-Instruct-v0.1",
                        placement={"instanceTypes": ["p4de.24xlarge"]}, replicas=1),
                moe_doc("mixtral-8x22b", "mistralai/Mixtral-8x22B-Instruct-v0.1",
                        placement={"instanceTypes": ["p5.48xlarge"]}, replicas=1),
                pipeline,
            ],
            namespace,
        )  # fmt: skip
        wait_ready(kube, namespace, models["metadata"]["name"], timeout_s=90)
        wait_ready(kube, namespace, "mixtral-8x7b", timeout_s=90)
        wait_ready(kube, namespace, "mixtral-8x22b", timeout_s=90)

        def pipeline_ready() -> dict[str, Any] | None:
            proc = kube.kubectl("get", "moapipeline", "moa-chat", "-n", namespace, "-o", "json", check=False)
            obj = json.loads(proc.stdout) if proc.returncode == 0 else None
            return obj if cond(obj, "Ready").get("status") == "True" else None

        wait_for("MoAPipeline moa-chat Ready", pipeline_ready, timeout_s=90)
        lease = json.loads(
            kube.kubectl("get", "lease", release.fullname, "-n", namespace, "-o", "json").stdout
        )
        # controller/runtime.py: the identity is "<hostname>-<8 hex>"; here the host is this machine.
        assert lease["spec"]["holderIdentity"].startswith(socket.gethostname() + "-"), lease["spec"]
        log = op.log()
        assert "Forbidden" not in log, log[-4000:]
        assert " 403" not in log, log[-4000:]
    finally:
        op.kill()


# What the operator does, as (verb, resource, namespace or "" for cluster scope).
NEEDED = [
    ("watch", "moemodels.kubemoe.io"),
    ("patch", "moemodels.kubemoe.io/status"),
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
]
# Leader election, in the release namespace only: its own Lease by name, and create (which RBAC cannot
# narrow to a name).
LEASE_NEEDED = [("get", "leases.coordination.k8s.io/@LEASE@"), ("update", "leases.coordination.k8s.io/@LEASE@"), ("create", "leases.coordination.k8s.io")]  # fmt: skip
LEASE_FORBIDDEN = [
    ("get", "leases.coordination.k8s.io/kubemoe"),
    ("update", "leases.coordination.k8s.io/kubemoe"),
    ("list", "leases.coordination.k8s.io"),
    ("watch", "leases.coordination.k8s.io"),
    ("delete", "leases.coordination.k8s.io/@LEASE@"),
    ("patch", "leases.coordination.k8s.io/@LEASE@"),
]
# What it must not do: secrets (API keys of MoA agents), other writes to pods, cluster-scoped writes,
# RBAC escalation, token minting, and Leases anywhere but the release namespace.
FORBIDDEN = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "pods/exec"),
    ("update", "deployments.apps"),
    ("delete", "nodes"),
    ("patch", "nodes"),
    ("delete", "namespaces"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "moemodels.kubemoe.io"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "serviceaccounts/token"),
    ("create", "leases.coordination.k8s.io"),
    ("get", "leases.coordination.k8s.io"),
    ("update", "leases.coordination.k8s.io"),
]


def _can_i(kube: Kube, rel: Release, verb: str, resource: str, *scope: str) -> str:
    proc = kube.kubectl("auth", "can-i", verb, resource, "--as", rel.user, *scope, check=False)
    return proc.stdout.strip()


def test_service_account_may_do_what_the_operator_does(kube: Kube, release: Release) -> None:
    denied = [(v, r) for v, r in NEEDED if _can_i(kube, release, v, r, "--all-namespaces") != "yes"]
    assert not denied, f"{release.user} lacks {denied}"
    ns = ("-n", release.namespace)
    lease = [(v, r.replace("@LEASE@", release.fullname)) for v, r in LEASE_NEEDED]
    denied = [(v, r) for v, r in lease if _can_i(kube, release, v, r, *ns) != "yes"]
    assert not denied, f"{release.user} lacks {denied} in {release.namespace}"


def test_service_account_can_do_nothing_beyond_it(kube: Kube, release: Release) -> None:
    allowed = [(v, r) for v, r in FORBIDDEN if _can_i(kube, release, v, r, "--all-namespaces") != "no"]
    assert not allowed, f"{release.user} may {allowed}"
    ns = ("-n", release.namespace)
    lease = [(v, r.replace("@LEASE@", release.fullname)) for v, r in LEASE_FORBIDDEN]
    allowed = [(v, r) for v, r in lease if _can_i(kube, release, v, r, *ns) != "no"]
    assert not allowed, f"{release.user} may {allowed} in {release.namespace}"
    # Nor in another namespace (the default one here): not even its own Lease's name.
    elsewhere = [(v, r.replace("@LEASE@", release.fullname)) for v, r in LEASE_NEEDED]
    allowed = [(v, r) for v, r in elsewhere if _can_i(kube, release, v, r, "-n", "default") != "no"]
    assert not allowed, f"{release.user} may {allowed} in default"
    # The whole grant, as the authorizer lists it: nothing but the chart's rules (plus what every
    # authenticated user gets: self-reviews, discovery, its own identity).
    expected = {
        "moemodels.kubemoe.io", "moapipelines.kubemoe.io", "moemodels.kubemoe.io/status",
        "moapipelines.kubemoe.io/status", "deployments.apps", "services", "configmaps",
        "leaderworkersets.leaderworkerset.x-k8s.io", "httproutes.gateway.networking.k8s.io",
        "gateways.gateway.networking.k8s.io",
        "prometheusrules.monitoring.coreos.com", "servicemonitors.monitoring.coreos.com", "pods", "events",
        "customresourcedefinitions.apiextensions.k8s.io", "namespaces",
        # Granted to every authenticated user by the default ClusterRoles.
        "selfsubjectreviews.authentication.k8s.io", "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
    }  # fmt: skip
    for namespace, granted in (
        ("default", expected),
        (release.namespace, expected | {"leases.coordination.k8s.io"}),
    ):
        listing = kube.kubectl("auth", "can-i", "--list", "--as", release.user, "-n", namespace).stdout
        resources = {line.split()[0] for line in listing.splitlines()[1:] if line.strip()}
        extra = {r for r in resources - granted if not r.startswith("[")}  # "[/api]" etc: non-resource URLs
        assert not extra, (
            f"{release.user} is granted more than the operator needs in {namespace}: {sorted(extra)}\n{listing}"
        )
        assert ("leases.coordination.k8s.io" in resources) == (namespace == release.namespace), listing
