"""A real Argo CD sync of kubemoe's CRDs and samples against the dev cluster, health from our Lua checks.

Argo CD v3.5.7's own application controller and repo server (the `argocd` multi-call binary, built from the Go
module proxy by hack/tools-observability), Debian's redis-server and `git daemon` serving a repository of the
chart's CRDs and the samples run as local processes; the operator runs as a local `kubemoe run` (the operator
fixture). Argo CD's CRDs (Application, AppProject) come from the same argo-cd module; the namespace `argocd`
holds argocd-cm with deploy/argocd/argocd-cm-health.yaml's keys exactly as shipped, and the Application is
deploy/argocd/application.yaml with only its repository and destination namespace changed.

The controller reaches the dev cluster as an out-of-cluster Argo CD does in its own local setup (its
Procfile): ARGOCD_FAKE_IN_CLUSTER=true maps the in-cluster destination https://kubernetes.default.svc to
$KUBECONFIG. Its metrics server always binds 0.0.0.0 (controller/appcontroller.go), so every Argo CD process,
redis and git daemon run in a network namespace of this test whose only interface is loopback; a forwarder
(hack/node/forward.py's pipe) carries the API server's 127.0.0.1 port into it. Every process (by its own pid),
the namespace, the `argocd` namespace and Argo CD's CRDs are removed at teardown, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from .argocd_harness import FORWARD, Processes, git_repository, head, listening, loopback_netns, tools
from .operator_harness import *  # noqa: F403  (fixtures: kube, running_operator, namespace, ...)
from .operator_harness import ROOT, SAMPLES, Kube, OperatorProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="ip netns needs root")]

ARGOCD_NS, APP, OPERATOR_APP, PROJECT = "argocd", "kubemoe-models", "kubemoe", "default"
ARGOCD_CRDS = ("applications.argoproj.io", "appprojects.argoproj.io")
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
OWNED = ("kubemoe.io/e2e", "argocd-sync")
RESYNC_S = 10  # --app-resync: the comparison period the stability check waits two of
REDIS, REPO_SERVER, REPO_METRICS, CONTROLLER_METRICS, GIT = 6379, 8081, 8084, 8082, 9418  # Argo CD's defaults
REPO_URL = f"git://127.0.0.1:{GIT}/kubemoe.git"
CHART_REPO_URL = f"git://127.0.0.1:{GIT}/kubemoe-chart.git"
#: The chart's repository: charts/kubemoe as it is in this one (deploy/argocd/operator-application.yaml).
CHART_FILES = {
    str(p.relative_to(ROOT)): p for p in sorted((ROOT / "charts/kubemoe").rglob("*")) if p.is_file()
}
#: The repository's files: the chart's CRDs (wave -1, from `make crds`) and the samples, as a user keeps them.
REPO_FILES = {
    **{f"crds/{p.name}": p for p in sorted((ROOT / "charts/kubemoe/files/crds").glob("*.yaml"))},
    "models/mixtral-8x7b.yaml": SAMPLES / "mixtral-8x7b-p4de.yaml",
    "models/mixtral-8x22b.yaml": SAMPLES / "mixtral-8x22b-p5-64k.yaml",
    "models/mixtral-tp2-p4d.yaml": ROOT / "manifests/demo/mixtral-8x7b-tp2-on-p4d.yaml",  # cannot fit
    "pipelines/moa-chat.yaml": SAMPLES / "moa-pipeline.yaml",
}
RELEASE = "kubemoe-argo-e2e"  # the chart's release: its full name, and the label the cleanup selects by
HEALTHY = {("MoEModel", "mixtral-8x7b"), ("MoEModel", "mixtral-8x22b"), ("MoAPipeline", "moa-chat")}
DEGRADED = ("MoEModel", "mixtral-tp2-p4d")
APPLICATIONS = f"/apis/argoproj.io/v1alpha1/namespaces/{ARGOCD_NS}/applications"


def argocd_objects(namespace: str) -> list[dict[str, Any]]:
    shipped = yaml.safe_load((ROOT / "deploy/argocd/argocd-cm-health.yaml").read_text())
    labels = {"app.kubernetes.io/part-of": "argocd"}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-cm", "namespace": ARGOCD_NS,
         "labels": {**labels, "app.kubernetes.io/name": "argocd-cm"}}, "data": shipped["data"]},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "argocd-secret", "namespace": ARGOCD_NS,
         "labels": {**labels, "app.kubernetes.io/name": "argocd-secret"}}, "type": "Opaque"},
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
         "metadata": {"name": PROJECT, "namespace": ARGOCD_NS},
         "spec": {"sourceRepos": ["*"], "destinations": [{"server": "*", "namespace": "*"}],
                  "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]}},
        application_doc(namespace),
        operator_application_doc(f"{namespace}-op"),
    ]  # fmt: skip


def application_doc(namespace: str) -> dict[str, Any]:
    """deploy/argocd/application.yaml with the repository and the namespace of this test."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "deploy/argocd/application.yaml").read_text())
    assert doc["metadata"]["name"] == APP, doc["metadata"]
    doc["spec"]["source"].update(repoURL=REPO_URL, targetRevision="main")
    doc["spec"]["destination"]["namespace"] = namespace
    return doc


def operator_application_doc(namespace: str) -> dict[str, Any]:
    """deploy/argocd/operator-application.yaml with this test's repository and namespace. The CRDs come from
    the models' Application here (two Applications must not own one object), so the chart leaves them out."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "deploy/argocd/operator-application.yaml").read_text())
    assert doc["metadata"]["name"] == OPERATOR_APP, doc["metadata"]
    doc["spec"]["source"].update(repoURL=CHART_REPO_URL, targetRevision="main")
    doc["spec"]["source"]["helm"]["valuesObject"]["crds"] = {"install": False}
    doc["spec"]["destination"]["namespace"] = namespace
    doc["spec"]["source"]["helm"]["releaseName"] = RELEASE
    # The namespace Argo CD creates carries this test's mark, so that the cleanup finds it.
    doc["spec"]["syncPolicy"]["managedNamespaceMetadata"] = {"labels": dict([OWNED])}
    return doc


def refuse_a_real_argocd(kube: Kube) -> None:
    """Argo CD's namespace and CRDs are created, labelled OWNED and deleted by this test: never a real one's."""
    for path in (f"/api/v1/namespaces/{ARGOCD_NS}", *(f"{CRD_PATH}/{crd}" for crd in ARGOCD_CRDS)):
        status, obj = kube.call("GET", path)
        if status == 200 and ((obj["metadata"].get("labels") or {}).get(OWNED[0]) != OWNED[1]):
            pytest.fail(f"{path} exists and is not this test's (no {OWNED[0]}={OWNED[1]}): not touching it")


def cleanup_cluster(kube: Kube) -> None:
    """Best effort: the Application first (no finalizer: nothing it synced is deleted), then what this test
    created (labelled OWNED); kubemoe's CRDs stay (the session shares them) but lose Argo CD's tracking marks."""
    kube.kubectl("delete", "--ignore-not-found", "--wait=false", "-n", ARGOCD_NS, "applications.argoproj.io", APP,
                 OPERATOR_APP, check=False)  # fmt: skip
    for kind in ("namespace", "crd"):
        kube.kubectl("delete", kind, "-l", "=".join(OWNED), "--timeout=60s", check=False)
    # The chart's cluster-scoped objects (its ClusterRole and binding), by the test's own release name.
    for kind in ("clusterrolebinding", "clusterrole"):
        kube.kubectl("delete", kind, "-l", f"app.kubernetes.io/instance={RELEASE}", check=False)
    unmark = {"metadata": {"annotations": {"argocd.argoproj.io/tracking-id": None,
                                           "kubectl.kubernetes.io/last-applied-configuration": None}}}  # fmt: skip
    for crd in ("moemodels.kubemoe.io", "moapipelines.kubemoe.io"):
        kube.kubectl("patch", "crd", crd, "--type=merge", "-p", json.dumps(unmark), check=False)


def application(kube: Kube, name: str = APP) -> dict[str, Any]:
    status, app = kube.call("GET", f"{APPLICATIONS}/{name}")
    assert status == 200, f"GET Application {name}: {status} {app}"
    return app  # type: ignore[no-any-return]


def resource_health(app: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["kind"], r["name"]): r for r in (app.get("status") or {}).get("resources") or []}


def out_of_sync(status: dict[str, Any]) -> list[tuple[str, str]]:
    """("app", its status) unless Synced, then each resource not Synced."""
    app = [] if status["sync"]["status"] == "Synced" else [("app", status["sync"]["status"])]
    return app + [
        (r["kind"], r["name"]) for r in status.get("resources") or [] if r.get("status") != "Synced"
    ]


def test_an_argo_cd_namespace_that_is_not_this_tests_is_never_touched(kube: Kube) -> None:
    kube.kubectl("create", "namespace", ARGOCD_NS)
    try:
        with pytest.raises(pytest.fail.Exception, match="is not this test's"):
            refuse_a_real_argocd(kube)
    finally:
        kube.kubectl("delete", "namespace", ARGOCD_NS, "--timeout=60s")


def test_argo_cd_syncs_the_samples_reports_our_health_and_stays_synced(
    running_operator: OperatorProcess, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    paths = tools()
    kubeconfig = kube.cluster.kubeconfig
    api_port = urlparse(yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]).port
    assert api_port, f"no API server port in {kubeconfig}"
    for sub in ("home", "tmp", "tls", "ssh", "gpg", "git", "logs"):
        (tmp_path / sub).mkdir()
    repo = git_repository(tmp_path / "git/kubemoe.git", REPO_FILES, manifests=True)
    chart_repo = git_repository(tmp_path / "git/kubemoe-chart.git", CHART_FILES, manifests=False)
    password = uuid.uuid4().hex
    env = {
        # git-verify-wrapper.sh as in Argo CD's image; helm (the toolchain's) for the chart's Application.
        "PATH": f"{paths['ARGOCD'].parent}:{kube.cluster.bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"),
        "KUBECONFIG": str(kubeconfig), "ARGOCD_FAKE_IN_CLUSTER": "true", "REDIS_PASSWORD": password,
        "ARGOCD_TLS_DATA_PATH": str(tmp_path / "tls"), "ARGOCD_SSH_DATA_PATH": str(tmp_path / "ssh"),
        "ARGOCD_GPG_ENABLED": "false", "ARGOCD_GNUPGHOME": str(tmp_path / "gpg"),
        "ARGOCD_ASK_PASS_SOCK": str(tmp_path / "askpass.sock"),
    }  # fmt: skip
    common = ["--redis", f"127.0.0.1:{REDIS}", "--loglevel", "debug", "--logformat", "text"]
    bin_dir = paths["ARGOCD"].parent
    with contextlib.ExitStack() as stack:
        netns = stack.enter_context(loopback_netns())
        procs = Processes(netns, tmp_path / "logs")
        refuse_a_real_argocd(kube)
        stack.callback(cleanup_cluster, kube)
        stack.callback(procs.stop)
        for manifest in sorted(paths["ARGOCD_CRDS"].glob("*.yaml")):  # Application's is too big for CSA
            kube.kubectl("apply", "--server-side", "-f", str(manifest))
        kube.kubectl("label", "--overwrite", "crd", *ARGOCD_CRDS, "=".join(OWNED))
        kube.cluster.wait_established(*ARGOCD_CRDS)
        kube.kubectl("create", "namespace", ARGOCD_NS)
        kube.kubectl("label", "namespace", ARGOCD_NS, "=".join(OWNED))

        procs.start("forward", [sys.executable, "-c", FORWARD, netns, str(api_port), str(ROOT / "hack/node")],
                    inside=False)  # fmt: skip
        procs.start("redis", [str(paths["REDIS_SERVER"]), "--bind", "127.0.0.1", "--port", str(REDIS),
                              "--requirepass", password, "--save", "", "--appendonly", "no",
                              "--dir", str(tmp_path / "tmp")])  # fmt: skip
        procs.start("git-daemon", ["git", "daemon", "--listen=127.0.0.1", f"--port={GIT}", "--export-all",
                                   "--reuseaddr", "--informative-errors", f"--base-path={repo.parent}",
                                   str(repo.parent)])  # fmt: skip
        procs.wait("forward", *listening(api_port))
        procs.wait("redis", "redis-cli", "-p", str(REDIS), "--no-auth-warning", "-a", password, "ping")
        procs.wait("git-daemon", "git", "ls-remote", REPO_URL)

        kube.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(argocd_objects(namespace)))
        # --client-ca-path has a default, which v3.5.7 refuses next to --disable-tls: cleared.
        procs.start("repo-server", [str(bin_dir / "argocd-repo-server"), "--address", "127.0.0.1",
                                    "--port", str(REPO_SERVER), "--metrics-address", "127.0.0.1",
                                    "--metrics-port", str(REPO_METRICS), "--disable-tls", "--client-ca-path=",
                                    *common], env)  # fmt: skip
        procs.wait("repo-server", "curl", "-sf", f"http://127.0.0.1:{REPO_METRICS}/healthz?full=true")
        procs.start("controller", [str(bin_dir / "argocd-application-controller"), "--kubeconfig", str(kubeconfig),
                                   "--namespace", ARGOCD_NS, "--repo-server", f"127.0.0.1:{REPO_SERVER}",
                                   "--repo-server-plaintext", "--app-resync", str(RESYNC_S),
                                   "--app-resync-jitter", "0", "--persist-resource-health",
                                   "--metrics-port", str(CONTROLLER_METRICS), *common], env)  # fmt: skip
        procs.wait("controller", "curl", "-sf", f"http://127.0.0.1:{CONTROLLER_METRICS}/healthz")

        def diagnose(what: str) -> str:
            return (
                f"{what}\n{json.dumps((application(kube).get('status') or {}), indent=1)[-5000:]}\n"
                + "".join(f"===== {n}\n{procs.log(n, 3000)}\n" for n in ("controller", "repo-server"))
            )

        def synced(name: str = APP) -> dict[str, Any] | None:
            for proc_name, proc in procs.procs.items():
                assert proc.poll() is None, diagnose(
                    f"{proc_name} exited ({proc.returncode}):\n{procs.log(proc_name)}"
                )
            app = application(kube, name)
            st = app.get("status") or {}
            if (st.get("operationState") or {}).get("phase") == "Succeeded" and st["sync"][
                "status"
            ] == "Synced":
                return app
            return None

        def wait(what: str, probe: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
            try:
                return wait_for(what, probe, timeout_s=180, every_s=1)
            except pytest.fail.Exception as exc:
                pytest.fail(diagnose(str(exc)))

        app = wait("the Application's first sync Succeeded and Synced", synced)
        st = app["status"]
        assert st["sync"]["revision"] == head(repo)
        synced_kinds = {(r["kind"], r["name"]) for r in st["operationState"]["syncResult"]["resources"]}
        assert {("CustomResourceDefinition", "moemodels.kubemoe.io"), *HEALTHY, DEGRADED} <= synced_kinds
        # Sync waves: every CRD (wave -1, from `make crds`) was applied before any MoEModel/MoAPipeline (wave 0).
        applied = [line for line in procs.log("controller", 10**8).splitlines()
                   if '"dry-run":"none"' in line and "Applying resource " in line]  # fmt: skip
        crds = [i for i, line in enumerate(applied) if "resource CustomResourceDefinition/" in line]
        crs = [
            i
            for i, line in enumerate(applied)
            if "resource MoEModel/" in line or "resource MoAPipeline/" in line
        ]
        assert len(crds) == 2, diagnose(f"the CRDs were not applied: {applied}")
        assert len(crs) == 4, diagnose(f"the CRs were not applied: {applied}")
        assert max(crds) < min(crs), diagnose(f"a CR was applied before a CRD: {applied}")

        def health_settled() -> dict[str, Any] | None:
            app = application(kube)
            res = resource_health(app)
            got = {k: (res.get(k, {}).get("health") or {}).get("status") for k in [*HEALTHY, DEGRADED]}
            want = {**dict.fromkeys(HEALTHY, "Healthy"), DEGRADED: "Degraded"}
            return app if got == want else None

        app = wait("Healthy models and pipeline, Degraded unfit model", health_settled)
        degraded = resource_health(app)[DEGRADED]["health"]
        assert degraded["message"].startswith("InsufficientMemory: "), degraded  # our Lua check's message
        assert app["status"]["health"]["status"] == "Degraded", app["status"]["health"]

        # The operator's own Application: the chart, rendered by the repo server's helm, synced and Healthy
        # (its pods are kwok's on the fake CPU nodes: the operator that acts here is the local process).
        op = wait("the chart's Application Synced", lambda: synced(OPERATOR_APP))
        assert op["status"]["sync"]["revision"] == head(chart_repo)
        op_kinds = {r["kind"] for r in op["status"]["resources"]}
        assert {"Deployment", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Lease"} - op_kinds <= {
            "Lease"
        }, op_kinds
        op = wait(
            "the chart's Application Healthy",
            lambda: (
                a
                if (a := application(kube, OPERATOR_APP))["status"]["health"]["status"] == "Healthy"
                else None
            ),
        )
        op_history = len(op["status"]["history"])

        # After the operator's writes and the API server's defaults: Synced through two resync periods, every
        # resource Synced, and no second sync (automated sync without selfHeal would not hide a drift).
        history = len(app["status"]["history"])
        passes = running_operator.metric("kubemoe_resync_passes_total")
        seen: set[str] = set()
        start = time.monotonic()
        while time.monotonic() < start + 2 * RESYNC_S + 2 or (
            len(seen) < 3 and time.monotonic() < start + 90
        ):
            st = application(kube)["status"]
            assert not out_of_sync(st), diagnose(f"OutOfSync after the sync: {out_of_sync(st)}")
            assert len(st["history"]) == history, diagnose("a second sync ran")
            seen.add(st["reconciledAt"])
            op_st = application(kube, OPERATOR_APP)["status"]
            assert not out_of_sync(op_st), diagnose(
                f"the chart OutOfSync after its sync: {out_of_sync(op_st)}"
            )
            assert len(op_st["history"]) == op_history, diagnose("a second sync of the chart ran")
            time.sleep(1)
        assert len(seen) >= 3, diagnose(
            f"the controller did not compare twice more within the period: {seen}"
        )
        assert running_operator.metric("kubemoe_resync_passes_total") >= passes + 2

        # The check above can fail: a change to a field the repository sets is OutOfSync at once.
        kube.merge_patch(
            "MoAPipeline", namespace, "moa-chat", {"spec": {"policy": {"layerTimeoutSeconds": 46}}}
        )
        drifted = wait_for("the edited pipeline OutOfSync", lambda: out_of_sync(application(kube)["status"]))
        assert drifted == [("app", "OutOfSync"), ("MoAPipeline", "moa-chat")], diagnose(str(drifted))
