"""Fixtures and helpers for the operator's end-to-end tests: the real ``kubemoe run`` process against the
real local control plane (see ``conftest.py``).

Test modules use it with ``from .operator_harness import *`` (fixtures included), e.g.::

    def test_something(running_operator: OperatorProcess, kube: Kube, namespace: str) -> None:
        kube.apply(sample("mixtral-8x7b-p4de.yaml"), namespace)
        wait_ready(kube, namespace, "mixtral-8x7b")

Fixtures
--------
``operator_crds`` (session)
    ``crds/`` installed and Established.
``kube`` (session)
    A :class:`Kube`: raw REST reads/writes of any kind the operator touches, plus ``kubectl``.
``operator_factory`` (function)
    ``operator_factory(namespace, standalone=True, lease_seconds=None, resync_seconds=3)`` starts one more
    ``kubemoe run`` subprocess (its log in the test's tmp dir), waits for ``/readyz`` and returns an
    :class:`OperatorProcess`. Every process it started is killed at teardown, and the test's namespace is
    emptied of workloads so that the next test finds the fake GPUs free.
``running_operator`` (function)
    One standalone operator watching only the test's namespace, resync every 3 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from .harness import KubeCluster, wait_for

__all__ = [
    "KINDS",
    "KUBEMOE",
    "ROOT",
    "SAMPLES",
    "Kube",
    "OperatorProcess",
    "cond",
    "events",
    "free_port",
    "kube",
    "moe_doc",
    "operator_crds",
    "operator_factory",
    "owned_by",
    "pods_of",
    "restart_apiserver",
    "running_operator",
    "sample",
    "wait_for",
    "wait_ready",
]

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "manifests" / "samples"
KUBEMOE = str(Path(sys.executable).parent / "kubemoe")

#: kind -> (api group/version path prefix, plural)
KINDS: dict[str, tuple[str, str]] = {
    "MoEModel": ("/apis/kubemoe.io/v1alpha1", "moemodels"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "ReplicaSet": ("/apis/apps/v1", "replicasets"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Node": ("/api/v1", "nodes"),
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
    "PrometheusRule": ("/apis/monitoring.coreos.com/v1", "prometheusrules"),
    "ServiceMonitor": ("/apis/monitoring.coreos.com/v1", "servicemonitors"),
    "LeaderWorkerSet": ("/apis/leaderworkerset.x-k8s.io/v1", "leaderworkersets"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "MoAPipeline": ("/apis/kubemoe.io/v1alpha1", "moapipelines"),
}
#: What the operator renders for a MoEModel (besides the workload's ReplicaSets and pods).
CHILD_KINDS = ["Deployment", "LeaderWorkerSet", "Service", "HTTPRoute", "PrometheusRule", "ServiceMonitor"]


# ----------------------------------------------------------------------------------------- the API


@dataclass
class Kube:
    """Raw REST access with the cluster's credentials (no discovery, no typed models: plain dicts)."""

    cluster: KubeCluster

    @property
    def api(self) -> client.ApiClient:
        return self.cluster.api_client

    def call(
        self,
        verb: str,
        path: str,
        body: Any = None,
        *,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        method, url, headers, payload, _ = self.api.param_serialize(
            verb,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(
                method, url, header_params=headers, body=payload, _request_timeout=30
            )
            raw, status = response.read(), response.status
        except ApiException as exc:
            raw, status = (exc.body or "").encode() if isinstance(exc.body, str) else exc.body, exc.status
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw
        return status, data

    def path(self, kind: str, namespace: str | None, name: str = "") -> str:
        prefix, plural = KINDS[kind]
        base = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
        return f"{base}/{name}" if name else base

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        status, data = self.call("GET", self.path(kind, namespace, name))
        if status == 404:
            return None
        assert status == 200, f"GET {kind} {namespace}/{name}: {status} {data}"
        return data  # type: ignore[no-any-return]

    def list(self, kind: str, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        status, data = self.call("GET", self.path(kind, namespace), query=query)
        if status == 404:  # the API (CRD) is not installed
            return []
        assert status == 200, f"LIST {kind} {namespace}: {status} {data}"
        return list(data.get("items", []))

    def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        status, data = self.call(
            "PATCH", self.path(kind, namespace, name), patch, content_type="application/merge-patch+json"
        )
        assert status == 200, f"PATCH {kind} {namespace}/{name}: {status} {data}"
        return data  # type: ignore[no-any-return]

    def json_patch(self, kind: str, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        status, data = self.call(
            "PATCH", self.path(kind, namespace, name), ops, content_type="application/json-patch+json"
        )
        assert status == 200, f"PATCH {kind} {namespace}/{name}: {status} {data}"
        return data  # type: ignore[no-any-return]

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        status, data = self.call(
            "DELETE", self.path(kind, namespace, name), {"propagationPolicy": "Background"}
        )
        assert status in (200, 202, 404), f"DELETE {kind} {namespace}/{name}: {status} {data}"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input=input, check=check)

    def apply(self, docs: list[dict[str, Any]] | dict[str, Any], namespace: str) -> None:
        """Create or update MoEModels (any namespace in the documents is replaced by ``namespace``)."""
        items = docs if isinstance(docs, list) else [docs]
        for doc in items:
            doc.setdefault("metadata", {})["namespace"] = namespace
        self.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(items))

    def node_instance_types(self) -> dict[str, str]:
        return {
            n["metadata"]["name"]: n["metadata"].get("labels", {}).get("node.kubernetes.io/instance-type", "")
            for n in self.list("Node", None)
        }


# ------------------------------------------------------------------------------------ CR helpers


def sample(filename: str) -> dict[str, Any]:
    """A sample MoEModel from ``manifests/samples`` as a dict (namespace is set by :meth:`Kube.apply`)."""
    doc = yaml.safe_load((SAMPLES / filename).read_text())
    assert isinstance(doc, dict)
    return doc


def moe_doc(name: str, model: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubemoe.io/v1alpha1",
        "kind": "MoEModel",
        "metadata": {"name": name},
        "spec": {"model": {"name": model}, **spec},
    }


def cond(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """The condition ``type_`` of ``obj`` ({} when absent)."""
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def wait_ready(kube: Kube, namespace: str, name: str, timeout_s: float = 60) -> dict[str, Any]:
    """Wait until the MoEModel is Ready=True for its current generation; returns it."""

    def probe() -> dict[str, Any] | None:
        obj = kube.get("MoEModel", namespace, name)
        if obj is None:
            return None
        st = obj.get("status") or {}
        ready = cond(obj, "Ready")
        if (
            ready.get("status") == "True"
            and st.get("observedGeneration") == obj["metadata"]["generation"]
            and ready.get("observedGeneration") == obj["metadata"]["generation"]
        ):
            return obj
        return None

    return wait_for(f"MoEModel {namespace}/{name} Ready", probe, timeout_s=timeout_s)


def events(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    """Core v1 Events about the object ``name`` in ``namespace``."""
    return [e for e in kube.list("Event", namespace) if (e.get("involvedObject") or {}).get("name") == name]


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    """``obj`` has ``owner`` as its controller owner reference (by uid)."""
    return any(
        ref.get("uid") == owner["metadata"]["uid"]
        and ref.get("controller") is True
        and ref.get("kind") == owner["kind"]
        and ref.get("name") == owner["metadata"]["name"]
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def pods_of(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    """The model-server pods of MoEModel ``name`` (by the operator's selector labels)."""
    selector = f"app.kubernetes.io/name=moemodel,app.kubernetes.io/instance={name}"
    return kube.list("Pod", namespace, selector)


# ------------------------------------------------------------------------------ the operator process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OperatorProcess:
    """One ``kubemoe run`` subprocess with its health port and log file."""

    args: list[str]
    port: int
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self) -> OperatorProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
        )
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            return 0, str(exc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 60) -> None:
        def probe() -> bool:
            if not self.alive():
                pytest.fail(f"operator exited ({self.proc and self.proc.returncode}):\n{self.log()[-4000:]}")
            return self.http("/readyz")[0] == 200

        wait_for(f"operator /readyz on port {self.port}", probe, timeout_s=timeout_s, every_s=0.2)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics as {(name, sorted labels): value}."""
        status, text = self.http("/metrics")
        assert status == 200, f"/metrics: {status} {text[:500]}"
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there is none)."""
        return sum(
            v
            for (n, lbls), v in self.metrics().items()
            if n == name and all(dict(lbls).get(k) == want for k, want in labels.items())
        )

    def wait_resyncs(self, passes: int, timeout_s: float = 60) -> None:
        """Wait until ``passes`` more resync passes have queued every object and the queue has drained, so
        every object has been reconciled again since the call: the condition a negative check ("still
        nothing after resyncs") needs, instead of a sleep that guesses the resync period."""
        start = self.metric("kubemoe_resync_passes_total")
        wait_for(
            f"{passes} resync pass(es) and an empty queue",
            lambda: (
                self.metric("kubemoe_resync_passes_total") >= start + passes
                and self.metric("kubemoe_queue_depth") == 0
            ),
            timeout_s=timeout_s,
            every_s=0.2,
        )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 15) -> None:
        """Send ``sig`` to the process (only ours, by pid) and wait for it; SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None


def _start_operator(
    cluster: KubeCluster,
    log_dir: Path,
    namespace: str | None,
    *,
    standalone: bool = True,
    lease_seconds: float | None = None,
    resync_seconds: float = 3,
    extra: list[str] | None = None,
) -> OperatorProcess:
    port = free_port()
    args = [KUBEMOE, "run", "--resync-seconds", str(resync_seconds), "--health-port", str(port)]
    if namespace:
        args += ["-n", namespace]
    if standalone:
        args.append("--standalone")
    if lease_seconds is not None:
        args += ["--lease-seconds", str(lease_seconds)]
    args += extra or []
    env = dict(cluster.env)
    env["KUBECONFIG"] = str(cluster.kubeconfig)
    env["PYTHONUNBUFFERED"] = "1"
    index = len(list(log_dir.glob("operator-*.log")))
    op = OperatorProcess(args=args, port=port, log_path=log_dir / f"operator-{index}-{port}.log", env=env)
    return op.start()


@dataclass(frozen=True)
class _Component:
    """How kwokctl started one control-plane process: enough to start it again the same way."""

    name: str
    pid: int
    argv: list[str]
    cwd: str
    env: dict[str, str]

    @classmethod
    def of(cls, cluster: KubeCluster, name: str) -> _Component:
        pid = int((cluster.kubeconfig.parent / "pids" / f"{name}.pid").read_text().strip())
        proc = Path(f"/proc/{pid}")
        argv = [a for a in (proc / "cmdline").read_bytes().decode().split("\0") if a]
        assert name in argv[0], (name, argv[:1])
        environ = (proc / "environ").read_bytes().decode().split("\0")
        env = dict(item.split("=", 1) for item in environ if "=" in item)
        return cls(name, pid, argv, os.readlink(proc / "cwd"), env)

    def alive(self) -> bool:
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().split()[2]
        except OSError:
            return False
        return state not in ("Z", "X")

    def start(self, cluster: KubeCluster) -> None:
        log = cluster.kubeconfig.parent / "logs" / f"{self.name}.log"
        with log.open("ab") as out:
            new = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (cluster.kubeconfig.parent / "pids" / f"{self.name}.pid").write_text(f"{new.pid}\n")


#: Restarted with the API server, as on a control-plane node's reboot: both would exit anyway when they
#: cannot renew their leader Lease, at a moment hard to wait for.
_RESTARTED_WITH_APISERVER = ("kube-controller-manager", "kube-scheduler")


def restart_apiserver(cluster: KubeCluster, down_s: float) -> float:
    """Kill this cluster's kube-apiserver, controller-manager and scheduler (SIGKILL, as a crash), keep
    them down `down_s` seconds and start them again with the very command lines, directories and
    environments kwokctl gave them. Pid files are updated, so `hack/cluster down` still stops everything.
    Waits until the API server answers; returns the seconds it was away."""
    apiserver = _Component.of(cluster, "kube-apiserver")
    others = [_Component.of(cluster, n) for n in _RESTARTED_WITH_APISERVER]
    t0 = time.monotonic()
    for component in [apiserver, *others]:
        os.kill(component.pid, signal.SIGKILL)
    wait_for("the control plane gone", lambda: not any(c.alive() for c in [apiserver, *others]), timeout_s=15)
    time.sleep(down_s)  # the outage itself
    apiserver.start(cluster)

    def answers() -> bool:
        try:
            status, _ = Kube(cluster).call("GET", "/readyz")
        except Exception:  # connection refused while it starts
            return False
        if status != 200:
            return False
        # Ready is not enough: the custom resources' storage may still be initialising (429).
        status, _ = Kube(cluster).call("GET", "/apis/kubemoe.io/v1alpha1/moemodels")
        return status == 200

    wait_for("kube-apiserver answers again", answers, timeout_s=90, every_s=0.5)
    away = time.monotonic() - t0
    for component in others:
        component.start(cluster)
    return away


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def operator_crds(kube_cluster: KubeCluster) -> KubeCluster:
    """kubemoe's CRDs, Established."""
    apply = ["apply", "--server-side", "--force-conflicts", "--field-manager=kubemoe-tests"]
    kube_cluster.kubectl(*apply, "-f", str(ROOT / "crds"))
    kube_cluster.wait_established("moemodels.kubemoe.io", "moapipelines.kubemoe.io")
    return kube_cluster


@pytest.fixture(scope="session")
def kube(operator_crds: KubeCluster) -> Kube:
    return Kube(operator_crds)


def _empty_namespace(kube: Kube, namespace: str) -> None:
    """Delete the namespace's MoEModels and workloads and wait (bounded) until its pods are gone, so that
    the fake nodes' GPUs are free for the next test. Best effort: never fails the test."""
    kube.kubectl(
        "delete",
        "-n",
        namespace,
        "moemodels,deployments,replicasets,leaderworkersets",
        "--all",
        "--wait=false",
        check=False,
    )
    kube.kubectl(
        "delete", "-n", namespace, "pods", "--all", "--grace-period=0", "--force", "--wait=false", check=False
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and kube.list("Pod", namespace):
        time.sleep(0.5)


@pytest.fixture
def operator_factory(kube: Kube, namespace: str, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(
        ns: str | None = None,
        *,
        standalone: bool = True,
        lease_seconds: float | None = None,
        resync_seconds: float = 3,
        wait: bool = True,
        extra: list[str] | None = None,
    ) -> OperatorProcess:
        op = _start_operator(
            kube.cluster,
            tmp_path,
            ns or namespace,
            standalone=standalone,
            lease_seconds=lease_seconds,
            resync_seconds=resync_seconds,
            extra=extra,
        )
        started.append(op)
        if wait:
            op.wait_ready()
        return op

    try:
        yield start
    finally:
        for op in started:
            op.kill(signal.SIGKILL)
        for op in started:  # captured: pytest shows it only when the test failed
            sys.stderr.write(f"\n===== {op.log_path} (tail)\n{op.log()[-6000:]}\n")
        _empty_namespace(kube, namespace)


@pytest.fixture
def running_operator(operator_factory: Callable[..., OperatorProcess]) -> OperatorProcess:
    """One standalone operator for the test's namespace, resync every 3 s, ready."""
    return operator_factory()
