"""The live stack: vLLM stand-ins for every MoEModel sample, `kubemoe router` against an OpenAI stub, and a real
Prometheus scraping all of them with the rendered rules loaded.

The rules are the rendered ones with their time constants scaled down (`for: 5m` -> 3s, `[5m]` -> 15s), so an
alert fires and clears within seconds; thresholds, expressions, labels and annotations are untouched (the
promtool tests check the real durations). The pipeline sample is rendered with a p95 threshold of 0.5s
(`monitoring.alerts.p95LatencySeconds`), since a test cannot hold requests for the default 60s.
Targets carry `namespace`, `service` and `pod` as static labels: what a ServiceMonitor's relabelling gives them.
The operator itself runs only against a cluster (its rules are checked by promtool against synthetic series,
test_operator_rules.py); its plan-cost gauges are scraped here from the operator's own metrics registry
(`kubemoe.controller.metrics`), set by `set_plan_cost` from the real planner's plan of each sample.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prometheus_client
import yaml

from kubemoe.api.moemodel import MoEModel
from kubemoe.catalog.loader import load_catalog
from kubemoe.controller import metrics as operator_metrics
from kubemoe.planner import plan_placement
from kubemoe.planner.settings import PlannerSettings
from kubemoe.render.engine import served_model_name
from kubemoe.router.config import RouterConfig

from .prom import Prometheus, Target, free_port
from .promtool_cases import matchers
from .rendered import REPO, SAMPLES, alerting_rules, render
from .standins import LoopThread, OpenAIStub, Reply, VllmStandin

PIPELINE_SAMPLE = REPO / "manifests" / "samples" / "moa-pipeline.yaml"
ROUTER_P95_SECONDS = 0.5
MAX_DRIVE_SECONDS = 120.0


def time_scaled(spec: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    for group in out["groups"]:
        for rule in group["rules"]:
            rule["for"] = "3s"
            rule["expr"] = re.sub(r"\[5m\]", "[15s]", rule["expr"])
    return out


def pipeline_rules(tmp: Path) -> dict[str, Any]:
    docs = list(yaml.safe_load_all(PIPELINE_SAMPLE.read_text()))
    for d in docs:
        if d and d["kind"] == "MoAPipeline":
            d["spec"].setdefault("monitoring", {}).setdefault("alerts", {})["p95LatencySeconds"] = (
                ROUTER_P95_SECONDS
            )
    path = tmp / "moa-pipeline-fast.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    render.cache_clear()
    (rule,) = [o for o in render(path) if o["kind"] == "PrometheusRule"]
    return rule


def calm_replies() -> dict[str, Reply]:
    """Agent c is a little slower than a and b, so the layer moves on at its quorum of 2 (a short-circuit)."""
    return {"c": Reply(latency=0.3)}


def hot_replies() -> dict[str, Reply]:
    """b and c hang past the 1s layer deadline (a quorum miss, and p95 above 0.5s); every other aggregator
    call fails (5xx)."""
    return {"b": Reply(hang=True), "c": Reply(hang=True), "agg": Reply(status=500, fail_every=2)}


@dataclass
class Stack:
    prometheus: Prometheus
    loop: LoopThread
    standins: dict[str, VllmStandin]  # by MoEModel name (the alerts' `model` label)
    stub: OpenAIStub
    router_url: str
    pipeline: str
    rules: dict[str, dict[str, Any]]  # rendered (unscaled) PrometheusRules by file name
    started: float = field(default_factory=time.time)
    _driver: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def alert_keys(self) -> set[tuple[str, str]]:
        """(alertname, model or pipeline) of every firing alert."""
        out = set()
        for a in self.prometheus.firing():
            lb = a["labels"]
            out.add((lb["alertname"], lb.get("model") or lb.get("pipeline", "?")))
        return out

    def chat(self, *, oversized: bool = False) -> int:
        content = "x" * 2048 if oversized else "hello"
        body = {"model": self.pipeline, "messages": [{"role": "user", "content": content}]}
        req = urllib.request.Request(
            f"{self.router_url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def drive(self, *, oversized: bool) -> None:
        """Send requests to the router in the background (bounded in count and time) until `quiet()`."""
        self.quiet()
        self._stop.clear()

        def loop() -> None:
            deadline = time.monotonic() + MAX_DRIVE_SECONDS
            for _ in range(400):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                self.chat()
                if oversized:
                    self.chat(oversized=True)
                time.sleep(0.1)

        self._driver = threading.Thread(target=loop, daemon=True)
        self._driver.start()

    def quiet(self) -> None:
        self._stop.set()
        if self._driver is not None:
            self._driver.join(20)
            self._driver = None


def export_plan_costs(model_rules: dict[str, dict[str, Any]]) -> None:
    """What the operator's render step exports for each MoEModel sample: its plan's cost, from the planner."""
    catalog, settings = load_catalog(environ={}), PlannerSettings()
    namespaces = {r["metadata"]["name"]: r["metadata"]["namespace"] for r in model_rules.values()}
    for sample in SAMPLES:
        for doc in yaml.safe_load_all(sample.read_text()):
            if not doc or doc.get("kind") != "MoEModel" or doc["metadata"]["name"] not in namespaces:
                continue
            model = MoEModel.model_validate(doc)
            plan = plan_placement(model.spec, catalog, settings).summary()
            name = model.metadata.name
            operator_metrics.set_plan_cost(
                namespaces[name],
                name,
                served_name=served_model_name(model.spec, name),
                per_hour=plan.cost_per_hour,
                per_million_tokens=plan.cost_per_million_tokens,
            )


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout:g}s")


@contextlib.contextmanager
def run_stack(tmp: Path, model_rules: dict[str, dict[str, Any]]) -> Iterator[Stack]:
    loop = LoopThread()
    router: subprocess.Popen[bytes] | None = None
    prometheus: Prometheus | None = None
    stack: Stack | None = None
    try:
        targets, standins = [], {}
        for obj in model_rules.values():
            name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
            served = next(
                matchers(r["expr"])["model_name"]
                for r in alerting_rules(obj["spec"])
                if "model_name" in r["expr"]
            )
            standin = VllmStandin(served)
            port = loop.run(standin.start())
            standins[name] = standin
            targets.append(Target(port, ns, name, f"{name}-0"))

        stub = OpenAIStub()
        stub_port = loop.run(stub.start())
        prule = pipeline_rules(tmp)
        pipeline = prule["metadata"]["name"].removesuffix("-router")
        url = f"http://127.0.0.1:{stub_port}/v1"
        config = RouterConfig.model_validate(
            {
                "name": pipeline,
                "layers": [{"agents": [{"name": n, "url": url, "model": n} for n in ("a", "b", "c")]}],
                "aggregator": {"name": "agg", "url": url, "model": "agg"},
                "policy": {"minResponses": 2, "layerTimeoutSeconds": 1.0},
                "limits": {"maxRequestBodyBytes": 1024},
                # A loopback router for this test's load alone; client keys are tested in tests/router.
                "auth": {"enabled": False},
            }
        )
        cfg = tmp / "router.yaml"
        cfg.write_text(yaml.safe_dump(config.to_file_dict()))
        router_port = free_port()
        router_log = (tmp / "router.log").open("w")
        router = subprocess.Popen(
            [str(Path(sys.executable).with_name("kubemoe")), "router", "--config", str(cfg), "--host", "127.0.0.1",
             "--port", str(router_port), "--log-level", "WARNING"],
            stdout=router_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        router_url = f"http://127.0.0.1:{router_port}"
        _wait_http(f"{router_url}/readyz", 30)
        ns = prule["metadata"]["namespace"]
        targets.append(Target(router_port, ns, prule["metadata"]["name"], f"{prule['metadata']['name']}-0"))

        export_plan_costs(model_rules)
        operator_port = free_port()
        operator_server, _ = prometheus_client.start_http_server(
            operator_port, addr="127.0.0.1", registry=operator_metrics.REGISTRY
        )
        targets.append(Target(operator_port, "kubemoe-system", "kubemoe-operator", "kubemoe-operator-0"))

        rules = {**model_rules, "moa-pipeline": prule}
        prometheus = Prometheus(tmp / "prom", targets, {k: time_scaled(v["spec"]) for k, v in rules.items()})
        stub.replies.update(calm_replies())
        stack = Stack(prometheus, loop, standins, stub, router_url, pipeline, rules)
        yield stack
    finally:
        if stack is not None:
            stack.quiet()
        if prometheus is not None:
            prometheus.stop()
        if locals().get("operator_server") is not None:
            operator_server.shutdown()
        if router is not None:
            router.terminate()
            router.wait(10)
        for s in locals().get("standins", {}).values():
            with contextlib.suppress(Exception):
                loop.run(s.stop())
        loop.stop()
