"""The pods on the real node, as the tools a platform team runs see them: Traefik (hack/tools-gateway) routes
the pipeline's HTTPRoute to the MoA router pod, and a real Prometheus (hack/tools-observability), finding its
targets the way prometheus-operator does from the chart's and the pipeline's ServiceMonitors, scrapes the
operator pods and the router pod and evaluates the pipeline's rendered PrometheusRule. Debian's Prometheus
has no Kubernetes service discovery ("field kubernetes_sd_configs not found in type config.ScrapeConfig"),
so the test discovers the Services' EndpointSlices itself and hands Prometheus the same labels through
file_sd; the relabelling that selects targets is prometheus-operator's (observability.prom).

Both tools run as local processes with the dev cluster's kubeconfig, listening on 127.0.0.1 only, and reach
the pods through the node's bridge (hack/cluster creates it and `down` removes it). The router's backends
are stand-in pods (no GPU and no vLLM here), as in test_helm_install.py.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from observability.prom import Prometheus, endpoint_targets, service_monitor_jobs
from observability.rendered import alerting_rules, metric_names

from .harness import wait_for
from .operator_harness import *  # noqa: F403  (fixtures: kube, namespace, ...)
from .operator_harness import Kube, cond, free_port
from .test_gateway_traefik import gateway, gateway_class, traefik  # noqa: F401  (gateway_class: a fixture)
from .test_helm_install import (  # noqa: F401  (workloads: a fixture)
    RELEASE,
    deploy_standin_pipeline,
    install_chart,
    workloads,
)

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="the real node needs root")]

HOST = "moa.example.test"


@pytest.fixture
def monitored(kube: Kube, namespace: str) -> Iterator[str]:
    """The chart with its ServiceMonitor, operator pods on the real node; yields the node's name."""
    with install_chart(kube, namespace, "serviceMonitor.enabled=true") as info:
        yield str(info["node"])


def _chat(url: str, host: str, key: str, errors: list[str]) -> dict[str, Any] | None:
    body = json.dumps(
        {"model": "moa-chat", "messages": [{"role": "user", "content": "What is MoE?"}]}
    ).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}", "Host": host}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=30) as r:
            return dict(json.loads(r.read()))
    except (OSError, urllib.error.HTTPError) as exc:
        errors.append(repr(exc))
        return None


def test_traefik_reaches_the_router_pod_and_prometheus_scrapes_the_pods(
    kube: Kube,
    namespace: str,
    workloads: str,  # noqa: F811
    monitored: str,
    gateway_class: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    port = free_port()
    kube.apply(gateway("inference-gateway", gateway_class, port), workloads)
    key, _ = deploy_standin_pipeline(
        kube, workloads, {"parentRefs": [{"name": "inference-gateway"}], "hostnames": [HOST]}
    )
    router_pods = [
        p for p in kube.list("Pod", workloads) if p["metadata"]["name"].startswith("moa-chat-router-")
    ]
    assert {p["spec"].get("nodeName") for p in router_pods if p["status"].get("podIP")} == {monitored}

    with traefik(workloads, port, tmp_path / "traefik.log", os.environ["KUBECONFIG"]):

        def accepted() -> dict[str, Any] | None:
            c = cond(kube.get("MoAPipeline", workloads, "moa-chat"), "RouteAccepted")
            return c if c.get("status") == "True" else None

        try:
            wait_for("the pipeline's RouteAccepted=True", accepted, timeout_s=120)
        except BaseException:
            pytest.fail((tmp_path / "traefik.log").read_text()[-4000:])
        url = f"http://{HOST}:{port}/v1/moa-chat"
        status = wait_for(
            "the pipeline's status.gatewayEndpoint",
            lambda: (s if (s := (kube.get("MoAPipeline", workloads, "moa-chat") or {}).get("status") or {}).get("gatewayEndpoint") == url else None),
            timeout_s=60,
        )  # fmt: skip
        assert status["endpoint"].startswith("http://moa-chat-router."), status
        # The URL's name does not resolve here: dialled at Traefik's address, with the URL's Host.
        errors: list[str] = []
        answer = wait_for(
            "a chat completion through Traefik and the router pod",
            lambda: _chat(
                f"http://127.0.0.1:{port}/v1/moa-chat/chat/completions", f"{HOST}:{port}", key, errors
            ),
            timeout_s=90,
            every_s=1,
        )
        assert "[stand-in stand-in-aggregator]" in answer["choices"][0]["message"]["content"], (
            answer,
            errors,
        )

    operator_monitor = kube.get("ServiceMonitor", namespace, f"{RELEASE}-operator")
    router_monitor = kube.get("ServiceMonitor", workloads, "moa-chat-router")
    assert operator_monitor is not None, "the chart rendered no ServiceMonitor"
    assert router_monitor is not None, "the operator rendered no ServiceMonitor for the router"
    monitors = [operator_monitor, router_monitor]
    rules = kube.get("PrometheusRule", workloads, "moa-chat-router")
    assert rules is not None
    targets_file = tmp_path / "targets.json"

    def discover() -> None:  # what Prometheus' Kubernetes discovery would see (see service_monitor_jobs)
        services, slices = [], []
        for ns in (namespace, workloads):
            services += kube.list("Service", ns)
            status, body = kube.call("GET", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices")
            assert status == 200, body
            slices += body["items"]
        targets_file.write_text(json.dumps(endpoint_targets(services, slices)))

    discover()
    jobs = [job for m in monitors for job in service_monitor_jobs(m, targets_file)]
    prom = Prometheus(tmp_path / "prometheus", [], {"router": rules["spec"]}, jobs=jobs)
    try:
        up: dict[str, Any] = {}

        def all_up() -> bool:
            discover()
            up.clear()
            up.update(
                {f"{s['metric']['service']}/{s['metric']['pod']}": s["value"][1] for s in prom.query("up")}
            )
            return sorted(up.values()) == ["1", "1", "1"]

        try:
            prom.wait_until(all_up, 60, "three targets up: two operator pods and the router pod")
        except AssertionError:
            pytest.fail(f"targets: {prom.api('targets')['activeTargets']}; up: {up}")
        services = {k.split("/")[0] for k in up}
        assert services == {f"{RELEASE}-metrics", "moa-chat-router"}, up
        # One leader among the two operator pods, seen by Prometheus through the chart's ServiceMonitor.
        leaders = prom.query(f'sum(kubemoe_leader{{namespace="{namespace}"}})')
        assert [s["value"][1] for s in leaders] == ["1"], leaders
        # The request through the gateway was counted by the router pod, under the labels the rules select on.
        selector = f'{{namespace="{workloads}", service="moa-chat-router"}}'
        counted = prom.query(f"sum(kubemoe_router_requests_total{selector})")
        assert [float(s["value"][1]) >= 1 for s in counted] == [True], counted
        # Every metric a router alert reads is one the router pod exports (a typo would never fire), and
        # every rule evaluates without error against the live series.
        exported = {m["metric"] for m in prom.api("targets/metadata", match_target='{job="moa-chat-router"}')}
        exported |= {"up"}
        for rule in alerting_rules(rules["spec"]):
            read = {
                n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
                for n in metric_names(rule["expr"])
            }
            assert read <= exported, f"{rule['alert']} reads {read - exported}, which the router does not export"  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            groups = prom.api("rules")["groups"]
            health = {r["name"]: (r.get("health"), r.get("lastError")) for g in groups for r in g["rules"]}
            if health and all(h == "ok" for h, _ in health.values()):
                break
            assert time.monotonic() < deadline, health
            time.sleep(1)
        assert len(health) == len(alerting_rules(rules["spec"])), health
    finally:
        prom.stop()
