"""The benchmark's cluster: a ``hack/cluster`` cluster sized for the run, raw REST access, the API server's
own request counters, and a bench-made fake fleet.

Sizing: ``hack/cluster`` layers ``$KUBEMOE_KWOKCTL_EXTRA_CONFIG`` over ``hack/kwokctl.yaml``; the benchmark
writes one that widens the Service CIDR (1000 models need more Services than the default /24 holds) and
lifts the components' client QPS limits (the default 20 QPS of kube-controller-manager would otherwise be
the only thing measured, and make a 1000-model run take an hour). The default cluster stays as it was.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO_ROOT / "hack" / "cluster"
FLEET_MANIFEST = REPO_ROOT / "hack" / "manifests" / "fleet-nodes.yaml"
BENCH_LABEL = "kubemoe.dev/bench"
#: A /16 holds 65k Services, far above the largest run; still never an address anything listens on.
SERVICE_CIDR = os.environ.get("KUBEMOE_BENCH_SERVICE_CIDR", "10.96.0.0/16")

EXTRA_KWOKCTL_CONFIG = f"""\
# Written by hack/bench: the benchmark cluster's sizing, layered over hack/kwokctl.yaml.
kind: KwokctlConfiguration
apiVersion: config.kwok.x-k8s.io/v1alpha1
options:
  disableQPSLimits: true
componentsPatches:
- name: kube-apiserver
  extraArgs:
  - key: service-cluster-ip-range
    value: {SERVICE_CIDR}
- name: kube-controller-manager
  extraArgs:
  - key: service-cluster-ip-range
    value: {SERVICE_CIDR}
"""

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
READ_VERBS = frozenset({"GET", "LIST"})
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def wait_until(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.5) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


# ------------------------------------------------------------------------------------------ the cluster


@dataclass
class Cluster:
    name: str
    kubeconfig: Path
    env: dict[str, str]
    started_here: bool

    def script(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLUSTER_SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def will_go_down(self) -> bool:
        return self.started_here and os.environ.get("KUBEMOE_BENCH_KEEP_CLUSTER") != "1"

    def down(self) -> None:
        if self.will_go_down:
            self.script("down", timeout=300)


def cluster_env(name: str, cache: Path) -> dict[str, str]:
    extra = cache / "bench" / "kwokctl-bench.yaml"
    extra.parent.mkdir(parents=True, exist_ok=True)
    extra.write_text(EXTRA_KWOKCTL_CONFIG)
    env = dict(os.environ)
    env["KUBEMOE_CLUSTER_NAME"] = name
    env["KUBEMOE_KWOKCTL_EXTRA_CONFIG"] = str(extra)
    # No real node: the operator runs as a local process and every pod is kwok's, so a kubelet and
    # kube-proxy would only add load to both sides (and 10 s to each of the run's cluster starts).
    env["KUBEMOE_REAL_NODE"] = os.environ.get("KUBEMOE_BENCH_REAL_NODE", "0")
    return env


def start_cluster(name: str, cache: Path) -> Cluster:
    """Bring the named cluster up with the bench sizing (reused when it is already up with it: the
    cluster's fingerprint covers the extra configuration, so a differently sized one is recreated)."""
    env = cluster_env(name, cache)
    status = subprocess.run(
        [str(CLUSTER_SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    started_here = status.returncode != 0
    if started_here:
        up = subprocess.run(
            [str(CLUSTER_SCRIPT), "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=3 * 3600,
            check=False,
        )
        if up.returncode != 0:
            raise RuntimeError(f"hack/cluster up failed ({up.returncode}):\n{up.stderr[-4000:]}")
    kubeconfig = subprocess.run(
        [str(CLUSTER_SCRIPT), "kubeconfig"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    exports = subprocess.run(
        [str(CLUSTER_SCRIPT), "env"], env=env, capture_output=True, text=True, check=True
    ).stdout
    bin_dir = re.search(r"export PATH=(\S+?):", exports)
    if bin_dir:
        env["PATH"] = f"{bin_dir.group(1).strip(chr(39))}:{env.get('PATH', '')}"
    env["KUBECONFIG"] = kubeconfig
    return Cluster(name=name, kubeconfig=Path(kubeconfig), env=env, started_here=started_here)


# ----------------------------------------------------------------------------------------- REST access

#: kind -> (path prefix, plural)
PATHS: dict[str, tuple[str, str]] = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Namespace": ("/api/v1", "namespaces"),
    "Node": ("/api/v1", "nodes"),
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
    "PrometheusRule": ("/apis/monitoring.coreos.com/v1", "prometheusrules"),
    "ServiceMonitor": ("/apis/monitoring.coreos.com/v1", "servicemonitors"),
    "LeaderWorkerSet": ("/apis/leaderworkerset.x-k8s.io/v1", "leaderworkersets"),
    "MoEModel": ("/apis/kubemoe.io/v1alpha1", "moemodels"),
    "MoAPipeline": ("/apis/kubemoe.io/v1alpha1", "moapipelines"),
}


class Api:
    """Plain-dict REST calls with the cluster's credentials; no typed models, no discovery."""

    def __init__(self, kubeconfig: Path) -> None:
        self.client: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        # Enough connections for the appliers' threads, the poller and a watch per kind (hack.bench._watch).
        self.client.rest_client.pool_manager.connection_pool_kw["maxsize"] = 12

    def call(
        self,
        verb: str,
        path: str,
        body: Any = None,
        *,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        raw: bool = False,
    ) -> tuple[int, Any]:
        method, url, headers, payload, _ = self.client.param_serialize(
            verb,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.client.call_api(
                method, url, header_params=headers, body=payload, _request_timeout=60
            )
            data, status = response.read(), response.status  # type: ignore[no-untyped-call]
        except ApiException as exc:
            data, status = (exc.body or b""), exc.status
        if raw:
            return status, data
        text = data.decode() if isinstance(data, bytes) else data
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    @staticmethod
    def path(kind: str, namespace: str | None, name: str = "") -> str:
        prefix, plural = PATHS[kind]
        base = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
        return f"{base}/{name}" if name else base

    @staticmethod
    def object_path(obj: Mapping[str, Any]) -> str:
        meta = obj["metadata"]
        return Api.path(obj["kind"], meta.get("namespace"), meta["name"])

    def apply(self, obj: Mapping[str, Any], manager: str) -> None:
        status, data = self.call(
            "PATCH",
            self.object_path(obj),
            json.dumps(obj),
            query=[("fieldManager", manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        if status not in (200, 201):
            raise RuntimeError(f"apply {obj['kind']} {obj['metadata']['name']}: {status} {str(data)[:300]}")

    def apply_all(self, objects: Iterable[Mapping[str, Any]], manager: str, workers: int) -> int:
        items = list(objects)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda o: self.apply(o, manager), items))
        return len(items)

    def list(self, kind: str, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        status, data = self.call("GET", self.path(kind, namespace), query=query)
        if status != 200:
            raise RuntimeError(f"list {kind} in {namespace}: {status} {str(data)[:300]}")
        return list(data.get("items") or [])

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        status, data = self.call(
            "DELETE", self.path(kind, namespace, name), {"propagationPolicy": "Background"}
        )
        if status not in (200, 202, 404):
            raise RuntimeError(f"delete {kind} {namespace}/{name}: {status} {str(data)[:300]}")

    def request_counts(self) -> dict[tuple[str, str, str], float]:
        """``apiserver_request_total`` summed by (verb, resource, subresource), from the API server itself."""
        status, data = self.call("GET", "/metrics", raw=True)
        if status != 200:
            raise RuntimeError(f"GET /metrics of the API server: {status}")
        return parse_request_counts(data.decode())


def parse_request_counts(text: str) -> dict[tuple[str, str, str], float]:
    """``apiserver_request_total`` of a /metrics page, summed by (verb, resource, subresource); dry-run
    requests are counted under ``<verb>(dry-run)``."""
    counts: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        verb = labels.get("verb", "")
        # A server-side dry run (the operator validates a whole set of children before applying any)
        # writes nothing: its own verb, so no write count includes it and it can still be counted alone.
        if labels.get("dry_run"):
            verb = f"{verb}(dry-run)"
        key = (verb, labels.get("resource", ""), labels.get("subresource", ""))
        counts[key] = counts.get(key, 0.0) + float(m.group("value"))
    return counts


def delta(
    after: Mapping[tuple[str, str, str], float], before: Mapping[tuple[str, str, str], float]
) -> dict[tuple[str, str, str], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def count(
    counts: Mapping[tuple[str, str, str], float],
    verbs: Iterable[str],
    resources: Iterable[str] | None = None,
    subresource: str | None = None,
) -> float:
    verbs, res = set(verbs), set(resources) if resources is not None else None
    return sum(
        v
        for (verb, resource, sub), v in counts.items()
        if verb in verbs and (res is None or resource in res) and (subresource is None or sub == subresource)
    )


# -------------------------------------------------------------------------------------- namespaces


def create_namespace(api: Api, name: str) -> None:
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {BENCH_LABEL: "true"}},
        },
        "kubemoe-bench",
    )
    wait_until(
        f"ServiceAccount default in {name}",
        lambda: api.call("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
        timeout_s=60,
    )


def delete_namespace(api: Api, name: str, timeout_s: float = 600) -> None:
    """Delete and wait until it is gone, so the next measurement finds the fake GPUs free and the
    controllers idle."""
    api.delete("Namespace", None, name)
    wait_until(
        f"namespace {name} deleted",
        lambda: api.call("GET", Api.path("Namespace", None, name))[0] == 404,
        timeout_s=timeout_s,
        every_s=1.0,
    )


# ------------------------------------------------------------------------------------------- the fleet


def fleet_templates() -> dict[str, dict[str, Any]]:
    """hack/manifests/fleet-nodes.yaml's nodes by instance type (the first of each)."""
    out: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(FLEET_MANIFEST.read_text()):
        if doc and doc.get("kind") == "Node":
            itype = doc["metadata"]["labels"]["node.kubernetes.io/instance-type"]
            out.setdefault(itype, doc)
    return out


def bench_nodes(instance_type: str, count_: int) -> Iterator[dict[str, Any]]:
    """``count_`` fake nodes labelled, tainted and sized exactly like the fleet's ``instance_type`` node."""
    template = fleet_templates()[instance_type]
    stem = instance_type.replace(".", "-")
    for i in range(count_):
        node = json.loads(json.dumps(template))
        name = f"bench-{stem}-{i}"
        node["metadata"]["name"] = name
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        node["metadata"]["labels"][BENCH_LABEL] = "true"
        yield node


def ensure_fleet(api: Api, wanted: Mapping[str, int]) -> int:
    """Create the bench nodes (instance type -> count) and wait until kwok reports them Ready."""
    nodes = [n for itype, k in wanted.items() for n in bench_nodes(itype, k)]
    api.apply_all(nodes, "kubemoe-bench", workers=4)

    def all_ready() -> bool:
        ready = 0
        for n in api.list("Node", None, f"{BENCH_LABEL}=true"):
            conds = (n.get("status") or {}).get("conditions") or []
            ready += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
        return ready >= len(nodes)

    wait_until(f"{len(nodes)} bench nodes Ready", all_ready, timeout_s=300, every_s=1.0)
    return len(nodes)


def wait_nodes_registered(api: Api, timeout_s: float = 90) -> None:
    """Until the node controller has posted its RegisteredNode Event for every node. It does so one
    monitor period after it starts (about 20 s into a new cluster), so a window measured earlier would see
    its Events as writes."""

    def registered() -> bool:
        nodes = {n["metadata"]["name"] for n in api.list("Node", None)}
        _, data = api.call("GET", "/api/v1/events", query=[("fieldSelector", "reason=RegisteredNode")])
        seen = {e["involvedObject"]["name"] for e in (data or {}).get("items", [])}
        return nodes <= seen

    wait_until("every node's RegisteredNode Event", registered, timeout_s, every_s=1.0)


def delete_fleet(api: Api) -> None:
    for n in api.list("Node", None, f"{BENCH_LABEL}=true"):
        api.delete("Node", None, n["metadata"]["name"])


# ------------------------------------------------------------------------------------- process stats


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0
