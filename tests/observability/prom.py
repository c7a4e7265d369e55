"""A real Prometheus process on 127.0.0.1: static scrape targets, rule files, and its HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .tools import tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Target:
    """One scrape target with the target labels a ServiceMonitor's relabelling would give it."""

    port: int
    namespace: str
    service: str
    pod: str


def _sanitize(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label)


def service_monitor_jobs(monitor: dict[str, Any], targets_file: Path) -> list[dict[str, Any]]:
    """The scrape jobs prometheus-operator generates for a ServiceMonitor (matchLabels and port-name
    endpoints; what kubemoe's own monitors use), with its relabelling (keep by the Service's labels and the
    endpoint's port name; namespace, service, pod, job = service), so that a selector or port name that does
    not match finds no target.

    Discovery is `file_sd` over `targets_file` (`endpoint_targets`), not `kubernetes_sd`: Debian's Prometheus
    is built without the Kubernetes discovery ("field kubernetes_sd_configs not found in type
    config.ScrapeConfig"), so the test lists Services and EndpointSlices itself and writes the same
    `__meta_kubernetes_*` labels role=endpoints would give."""
    meta, spec = monitor["metadata"], monitor["spec"]
    namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or [meta["namespace"]]
    keep = [
        {
            "source_labels": [
                f"__meta_kubernetes_service_label_{_sanitize(k)}",
                f"__meta_kubernetes_service_labelpresent_{_sanitize(k)}",
            ],
            "regex": f"({v});true",
            "action": "keep",
        }
        for k, v in (spec["selector"].get("matchLabels") or {}).items()
    ]
    in_namespaces = {
        "source_labels": ["__meta_kubernetes_namespace"],
        "regex": "|".join(namespaces),
        "action": "keep",
    }
    targets = [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
    ]
    return [
        {
            "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{i}",
            "metrics_path": endpoint.get("path", "/metrics"),
            "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
            "relabel_configs": [
                in_namespaces,
                *keep,
                {
                    "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                    "regex": endpoint["port"],
                    "action": "keep",
                },
                *targets,
            ],
        }
        for i, endpoint in enumerate(spec["endpoints"])
    ]


def endpoint_targets(services: list[dict[str, Any]], slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_sd target groups with the labels Prometheus' Kubernetes discovery (role=endpoints) gives: one
    target per ready endpoint address and port of each Service's EndpointSlices."""
    groups = []
    for svc in services:
        meta = svc["metadata"]
        base = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_service_name": meta["name"],
        }
        for k, v in (meta.get("labels") or {}).items():
            base[f"__meta_kubernetes_service_label_{_sanitize(k)}"] = v
            base[f"__meta_kubernetes_service_labelpresent_{_sanitize(k)}"] = "true"
        for es in slices:
            es_meta = es["metadata"]
            if es_meta["namespace"] != meta["namespace"]:
                continue
            if (es_meta.get("labels") or {}).get("kubernetes.io/service-name") != meta["name"]:
                continue
            for port in es.get("ports") or []:
                for ep in es.get("endpoints") or []:
                    if (ep.get("conditions") or {}).get("ready") is False:
                        continue
                    ref = ep.get("targetRef") or {}
                    labels = {**base, "__meta_kubernetes_endpoint_port_name": port.get("name") or ""}
                    if ref.get("kind") == "Pod":
                        labels["__meta_kubernetes_pod_name"] = ref["name"]
                    groups += [
                        {"targets": [f"{a}:{port['port']}" for a in ep["addresses"]], "labels": labels}
                    ]
    return groups


def scrape_config(targets: list[Target], jobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Static `targets`, or service-discovered `jobs` (service_monitor_jobs) as they are."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": ["rules/*.yaml"],
        "scrape_configs": list(jobs or [])
        + [
            {
                # job = service, like prometheus-operator names the job of a ServiceMonitor endpoint's Service.
                "job_name": t.service,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{t.port}"],
                        "labels": {"namespace": t.namespace, "service": t.service, "pod": t.pod},
                    }
                ],
            }
            for t in targets
        ],
    }


class Prometheus:
    def __init__(
        self,
        workdir: Path,
        targets: list[Target],
        rule_files: dict[str, dict[str, Any]],
        jobs: list[dict[str, Any]] | None = None,
    ) -> None:
        self.workdir = workdir
        (workdir / "rules").mkdir(parents=True)
        for name, doc in rule_files.items():
            (workdir / "rules" / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(targets, jobs), sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                str(tool("PROMETHEUS")),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-admin-api",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait_until(self._ready, 60, "Prometheus ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def firing(self) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["state"] == "firing"]

    def series(self, selector: str, since: float) -> list[dict[str, str]]:
        return list(self.api("series", **{"match[]": selector, "start": f"{since:.3f}"}))

    @staticmethod
    def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
