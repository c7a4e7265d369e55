"""The chart installed the way users install it, on the cluster's real node (hack/node: containerd, runc,
kubelet, kube-proxy): the operator pods run from the image built by `make image`, under the restricted
Pod Security profile, authenticated by their ServiceAccount token, electing their leader through the
release's coordination.k8s.io Lease; the MoA
router runs as a real pod and answers through its Service from stand-in backends; upgrade, handover and
uninstall behave as documented in charts/kubemoe/README.md.

Everything the tests contact is loopback or an address inside the node's own bridge and Service range,
which hack/cluster creates (and `down` removes). The fake GPU fleet stays kwok's."""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .harness import NAMESPACE_LABEL, wait_for
from .operator_harness import *  # noqa: F403  (fixtures: kube, namespace, ...)
from .operator_harness import SAMPLES, Kube, cond, moe_doc, wait_ready

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = str(ROOT / "charts" / "kubemoe")
RELEASE = "e2e-kubemoe"  # contains the chart name, so the full name is the release name
NODE_LABEL = "kubemoe.io/node=real"
STUB_PORT = 8000
# The real node is tainted (hack/node/node.sh): pods meant for it say so.
TOLERATIONS = '[{"key": "kubemoe.io/node", "operator": "Equal", "value": "real", "effect": "NoSchedule"}]'


# A stand-in for vLLM (no GPU here): an OpenAI-compatible chat endpoint that names itself in each answer.
STUB = """
import json, os
from aiohttp import web
name = os.environ["STUB_NAME"]
async def chat(request):
    body = await request.json()
    last = body["messages"][-1]["content"]
    text = f"[stand-in {name}] answer to: {last[:60]}"
    if not body.get("stream"):
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for delta, finish in (({"role": "assistant", "content": text}, None), ({}, "stop")):
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        await resp.write(f"data: {json.dumps(chunk)}\\n\\n".encode())
    await resp.write(b"data: [DONE]\\n\\n")
    await resp.write_eof()
    return resp
async def models(request):
    return web.json_response({"object": "list", "data": [{"id": name, "object": "model"}]})
app = web.Application()
app.add_routes([web.post("/v1/chat/completions", chat), web.get("/v1/models", models), web.get("/health", models)])
web.run_app(app, host="0.0.0.0", port=8000, print=None)
"""


def _real_node(kube: Kube) -> str:
    if os.environ.get("KUBEMOE_REAL_NODE") == "0":
        pytest.skip("KUBEMOE_REAL_NODE=0: this machine runs no real node (hack/cluster without containers)")
    nodes = kube.list("Node", None, NODE_LABEL)
    ready = [n for n in nodes if cond(n, "Ready").get("status") == "True"]
    assert ready, f"no Ready node labelled {NODE_LABEL}: hack/cluster up should have started it"
    return str(ready[0]["metadata"]["name"])


def _restricted(kube: Kube, namespace: str) -> None:
    kube.kubectl(
        "label", "--overwrite", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )


def _operator_pods(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    pods = kube.list(
        "Pod", namespace, f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
    )
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") == "Running" and cond(pod, "Ready").get("status") == "True"


def _lease_holder(kube: Kube, namespace: str) -> str:
    lease = json.loads(kube.kubectl("get", "lease", RELEASE, "-n", namespace, "-o", "json").stdout)
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _holder_pod(holder: str, pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pod a Lease holder identity names: controller/runtime.py makes it "<hostname>-<8 hex>", and a
    pod's hostname is its name."""
    return next((p for p in pods if holder.rpartition("-")[0] == p["metadata"]["name"]), None)


def _lease_story(kube: Kube, namespace: str) -> str:
    """The Lease, every operator pod (terminating ones too) and the tail of each one's log: what a CI log
    needs to tell why a handover did not happen."""
    out = [kube.kubectl("get", "lease", RELEASE, "-n", namespace, "-o", "yaml", check=False).stdout]
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
    out.append(kube.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "wide", check=False).stdout)
    for pod in kube.list("Pod", namespace, selector):
        name = pod["metadata"]["name"]
        logs = kube.kubectl("logs", "-n", namespace, name, "--tail=40", check=False)
        out.append(f"--- log of {name}:\n{logs.stdout}{logs.stderr}")
    return "\n".join(out)


def _metric(pod: dict[str, Any], name: str) -> float:
    ip = pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=5) as resp:
        text = resp.read().decode()
    # A labelled series ("name{...} v") or an unlabelled one ("name v").
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + "{", name + " "))
    )


@pytest.fixture
def workloads(kube: Kube) -> Iterator[str]:
    """A second namespace for the models and pipelines: the operator's namespace enforces the restricted
    profile, which the rendered vLLM workloads do not meet (they are admitted under the default profile)."""
    name = f"e2e-w-{uuid.uuid4().hex[:10]}"
    kube.kubectl("create", "namespace", name)
    kube.kubectl("label", "namespace", name, f"{NAMESPACE_LABEL}=true")
    try:
        yield name
    finally:
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def installed(kube: Kube, namespace: str) -> Iterator[dict[str, Any]]:
    with install_chart(kube, namespace) as info:
        yield info


@contextlib.contextmanager
def install_chart(kube: Kube, namespace: str, *sets: str) -> Iterator[dict[str, Any]]:
    """The chart in `namespace` (restricted), operator pods on the real node, `--set` each of `sets` too;
    yields the node's name and the install's duration, and uninstalls."""
    node = _real_node(kube)
    _restricted(kube, namespace)
    t0 = time.monotonic()
    extra = [arg for s in sets for arg in ("--set", s)]
    kube.cluster.helm(
        "install", RELEASE, CHART, "-n", namespace, "--set", "crds.install=false",
        "--set", "operator.resyncSeconds=5", "--set-string", "nodeSelector.kubemoe\\.io/node=real", "--set-json", f"tolerations={TOLERATIONS}",
        *extra, "--wait", "--timeout", "240s", timeout=300,
    )  # fmt: skip
    info = {"node": node, "install_s": time.monotonic() - t0}
    try:
        yield info
    finally:
        kube.cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s", check=False)


def test_operator_pods_run_ready_on_the_real_node_one_active_json_logs(
    kube: Kube, namespace: str, workloads: str, installed: dict[str, Any]
) -> None:
    pods = wait_for("two Ready operator pods", lambda: (p if len(p := [x for x in _operator_pods(kube, namespace) if _ready(x)]) == 2 else None), timeout_s=120)  # fmt: skip
    assert {p["spec"]["nodeName"] for p in pods} == {installed["node"]}
    # Authenticated by the pod's own ServiceAccount token (kubelet-projected), not a kubeconfig.
    assert all(p["spec"]["serviceAccountName"] == RELEASE for p in pods)
    # Leader election: the release's Lease (the chart's default name: the full name) is held by one
    # replica, and that one alone acts.
    kube.apply(
        yaml.safe_load((SAMPLES / "mixtral-8x7b-p4de.yaml").read_text()) | {"metadata": {"name": "m1"}},
        workloads,
    )
    wait_ready(kube, workloads, "m1", timeout_s=120)
    holder = _lease_holder(kube, namespace)
    leader = _holder_pod(holder, pods)
    assert leader is not None, f"Lease holder {holder!r} is none of {[p['metadata']['name'] for p in pods]}"
    reconciles = {p["metadata"]["name"]: _metric(p, "kubemoe_reconcile_total") for p in pods}
    active = [name for name, n in reconciles.items() if n > 0]
    assert active == [leader["metadata"]["name"]], (
        f"only the Lease holder {holder} may reconcile: {reconciles}"
    )
    assert {p["metadata"]["name"]: _metric(p, "kubemoe_leader") for p in pods} == {
        p["metadata"]["name"]: (1.0 if p is leader else 0.0) for p in pods
    }
    for pod in pods:
        lines = kube.kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout.splitlines()
        assert lines, "no log lines"
        for line in lines:
            json.loads(line)  # every line is one JSON object


def _stub_backend(kube: Kube, namespace: str, name: str) -> str:
    """A stand-in backend pod on the real node and its Service; returns the Service's ClusterIP (the
    cluster has no DNS server, so the pipeline names backends by address)."""
    labels = {"app.kubernetes.io/name": "stand-in", "app.kubernetes.io/instance": name}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeSelector": {"kubemoe.io/node": "real"},
            "tolerations": json.loads(TOLERATIONS),
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "stand-in",
                "image": kube.cluster.run("bash", str(ROOT / "hack/image"), "name").stdout.strip(),
                "imagePullPolicy": "Never",
                "command": ["python3", "-c", STUB],
                "env": [{"name": "STUB_NAME", "value": name}],
                "ports": [{"containerPort": STUB_PORT}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": STUB_PORT}, "periodSeconds": 1},
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }  # fmt: skip
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": labels, "ports": [{"port": STUB_PORT, "targetPort": STUB_PORT}]},
    }
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([pod, service]))
    svc = json.loads(kube.kubectl("get", "service", name, "-n", namespace, "-o", "json").stdout)
    return str(svc["spec"]["clusterIP"])


def _chat(url: str, model: str, text: str, key: str) -> dict[str, Any]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def deploy_standin_pipeline(
    kube: Kube, namespace: str, routing: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The sample pipeline `moa-chat`, its agents pointed at stand-ins: its MoEModels would be vLLM on GPUs
    (kwok's fake pods here), so each agent becomes an endpoint agent at a stand-in Service on the real node.
    `routing`: its spec.routing (none by default). Returns a client key and the router Deployment as the
    operator rendered it, once rolled out on the real node."""
    pipeline = yaml.safe_load((SAMPLES / "moa-pipeline.yaml").read_text())
    pipeline["metadata"] = {"name": "moa-chat"}
    ips: dict[str, str] = {}
    for layer in pipeline["spec"]["layers"]:
        for agent in layer["agents"]:
            ips[agent["name"]] = _stub_backend(kube, namespace, f"stand-in-{agent['name']}")
            agent.pop("moeModelRef", None)
            agent["endpoint"] = {"url": f"http://{ips[agent['name']]}:{STUB_PORT}/v1", "model": agent["name"]}
    ips["aggregator"] = _stub_backend(kube, namespace, "stand-in-aggregator")
    pipeline["spec"]["aggregator"] = {
        "endpoint": {"url": f"http://{ips['aggregator']}:{STUB_PORT}/v1", "model": "aggregator"},
    }
    pipeline["spec"].pop("capacity", None)
    pipeline["spec"].pop("routing", None)
    if routing is not None:
        pipeline["spec"]["routing"] = routing
    # Client keys are on by default (spec.auth): the router is Ready only once its keys Secret
    # (<pipeline>-client-keys, data key = the key's name) exists, and answers only with a key of it.
    key = uuid.uuid4().hex
    kube.kubectl(
        "create", "secret", "generic", "moa-chat-client-keys", "-n", namespace, f"--from-literal=e2e={key}"
    )
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(pipeline))
    router = wait_for(
        "the router Deployment", lambda: kube.get("Deployment", namespace, "moa-chat-router"), timeout_s=60
    )
    # CPU workloads belong on the real node; the operator sets no node selector (users choose), so the
    # test adds one with its own field manager, which the operator's server-side apply leaves alone.
    kube.kubectl(
        "patch", "deployment", "moa-chat-router", "-n", namespace, "--type", "merge", "--field-manager", "e2e",
        "-p", json.dumps({"spec": {"template": {"spec": {"nodeSelector": {"kubemoe.io/node": "real"}, "tolerations": json.loads(TOLERATIONS)}}}}),
    )  # fmt: skip
    kube.kubectl("rollout", "status", "deployment/moa-chat-router", "-n", namespace, "--timeout=180s")
    return key, router


def test_sample_pipeline_router_answers_through_its_service_from_stand_ins(
    kube: Kube, workloads: str, installed: dict[str, Any]
) -> None:
    namespace = workloads
    key, router = deploy_standin_pipeline(kube, namespace)
    assert router["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["kubemoe", "router"]
    pods = [p for p in kube.list("Pod", namespace) if p["metadata"]["name"].startswith("moa-chat-router-")]
    assert pods
    assert all(p["spec"]["nodeName"] == installed["node"] for p in pods if _ready(p))
    svc = json.loads(kube.kubectl("get", "service", "moa-chat-router", "-n", namespace, "-o", "json").stdout)
    url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}/v1/chat/completions"
    errors: list[str] = []
    try:
        answer = wait_for(
            "a chat completion through the router Service",
            lambda: _try(lambda: _chat(url, "moa-chat", "What is a mixture of experts?", key), errors),
            timeout_s=60,
            every_s=1,
        )
    except BaseException:
        logs = kube.kubectl("logs", "-n", namespace, "deploy/moa-chat-router", "--tail=30", check=False)
        pytest.fail(
            f"no answer from {url}: last error {errors[-1:]}\nrouter log:\n{logs.stdout}{logs.stderr}"
        )
    text = answer["choices"][0]["message"]["content"]
    assert "[stand-in stand-in-aggregator]" in text, answer
    # A wrong key is refused with 401. Retried like the first request: seen once at load average 5-9, the
    # Service refused the connection (no ready endpoint for a moment) between the two requests.
    refused: list[str] = []

    def denial() -> int | None:
        try:
            _chat(url, "moa-chat", "What is a mixture of experts?", "not-a-key")
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError as exc:
            refused.append(repr(exc))
            return None
        pytest.fail("a wrong client key was answered")

    try:
        code = wait_for("an answer to a wrong key", denial, timeout_s=60, every_s=1)
    except BaseException:
        pods = kube.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False)
        pytest.fail(f"no answer to a wrong key from {url}: {refused[-1:]}\n{pods.stdout}")
    assert code == 401, refused


def _try(fn: Any, errors: list[str]) -> Any:
    try:
        return fn()
    except urllib.error.HTTPError as exc:
        errors.append(f"HTTP {exc.code}: {exc.read()[:500]!r}")
    except (OSError, ValueError) as exc:
        errors.append(repr(exc))
    return None


def _reconcile_events(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    """The one Event of each reconcile that changed something: Planned (the plan changed) or Synced."""
    events = kube.list("Event", namespace)
    return [
        e
        for e in events
        if e["involvedObject"].get("name") == name and e.get("reason") in ("Planned", "Synced")
    ]


def _change_and_wait(kube: Kube, namespace: str, name: str, replicas: int, timeout_s: float) -> float:
    """Change the MoEModel's spec; seconds until the operator has reconciled exactly that generation."""
    t0 = time.monotonic()
    obj = kube.merge_patch("MoEModel", namespace, name, {"spec": {"replicas": replicas}})
    generation = obj["metadata"]["generation"]

    def done() -> bool:
        current = kube.get("MoEModel", namespace, name) or {}
        deploy = kube.get("Deployment", namespace, name) or {}
        return (current.get("status") or {}).get("observedGeneration") == generation and (
            deploy.get("spec", {}).get("replicas") == replicas
        )

    wait_for(f"{name} generation {generation} reconciled", lambda: done() or None, timeout_s=timeout_s)
    return time.monotonic() - t0


def test_upgrade_rolls_handover_on_kill_and_uninstall_keeps_crs(
    kube: Kube, namespace: str, workloads: str, installed: dict[str, Any]
) -> None:
    kube.apply(moe_doc("m2", "mistralai/Mixtral-8x7B-Instruct-v0.1", placement={"instanceTypes": ["p4de.24xlarge"]}, replicas=1), workloads)  # fmt: skip
    wait_ready(kube, workloads, "m2", timeout_s=120)
    before = {p["metadata"]["name"] for p in _operator_pods(kube, namespace)}

    # helm upgrade with a changed value: a new ReplicaSet rolls in one pod at a time (maxUnavailable 0).
    # A spec change made mid-rollout is reconciled once: not lost (observedGeneration catches up) and not
    # twice (one Planned/Synced event: only the Lease holder writes).
    synced_before = len(_reconcile_events(kube, workloads, "m2"))
    upgrade = kube.cluster.run(
        "helm", "upgrade", RELEASE, CHART, "-n", namespace, "--reuse-values", "--set-string", "podAnnotations.rev=2",
        "--wait", "--timeout", "240s", "--kubeconfig", str(kube.cluster.kubeconfig), check=False, timeout=300,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    _change_and_wait(kube, workloads, "m2", 2, timeout_s=180)
    after = {p["metadata"]["name"] for p in _operator_pods(kube, namespace) if _ready(p)}
    assert len(after) == 2
    assert not after & before, "every operator pod was replaced by the upgrade"
    assert len(_reconcile_events(kube, workloads, "m2")) == synced_before + 1

    # Kill the active replica: force-delete its pod (grace 0). The kubelet still stops the container with
    # SIGTERM first, so the operator releases the Lease on the way out (controller/leader.py) and a live
    # replica takes it at once; a SIGKILL with no clean exit would wait for the Lease to expire
    # (operator.leaseSeconds, 15 s). The active replica is the Lease's holder. (Reconcile counters cannot
    # tell after a rollout: leadership may have moved between the new pods while they came up one by one.)
    # The successor is whichever candidate tries first once the Lease is free, as with client-go: the
    # standby (it tries every retry period, 2 s) or the Deployment's replacement pod, which tries as it
    # starts and, with the image on the node, can start within that period (seen here and in CI).
    pods = [p for p in _operator_pods(kube, namespace) if _ready(p)]
    holder = _lease_holder(kube, namespace)
    active = _holder_pod(holder, pods)
    assert active is not None, f"Lease holder {holder!r} is none of {[p['metadata']['name'] for p in pods]}"
    killed = active["metadata"]["name"]
    standby = next(p for p in pods if p is not active)
    standby_before = _metric(standby, "kubemoe_reconcile_total")
    t0 = time.monotonic()
    kube.kubectl("delete", "pod", killed, "-n", namespace, "--grace-period=0", "--force")
    taken = wait_for(
        "a live replica holding the Lease",
        lambda: h if (h := _lease_holder(kube, namespace)) and h.rpartition("-")[0] != killed else None,
        timeout_s=60,
        every_s=0.25,
        explain=lambda: _lease_story(kube, namespace),
    )
    lease_s = time.monotonic() - t0
    handover_s = _change_and_wait(kube, workloads, "m2", 1, timeout_s=240)
    successor = _holder_pod(taken, _operator_pods(kube, namespace))
    assert successor is not None, (
        f"the new holder {taken!r} is no operator pod\n{_lease_story(kube, namespace)}"
    )
    role = "standby" if successor["metadata"]["name"] == standby["metadata"]["name"] else "replacement pod"
    print(
        f"handover after force-deleting the active operator pod: Lease taken by the {role} {taken} in "
        f"{lease_s:.1f}s, then a spec change reconciled in {handover_s:.1f}s"
    )
    # Sooner than the Lease could have expired: it was released, not waited out.
    assert lease_s < 15, f"the Lease was taken only after {lease_s:.1f}s: was it released on SIGTERM?"
    # The successor reconciles: the standby beyond its count before the kill, a new pod from 0.
    before = standby_before if role == "standby" else 0.0
    assert _metric(successor, "kubemoe_reconcile_total") > before, f"the {role} did not take over"
    lease = json.loads(kube.kubectl("get", "lease", RELEASE, "-n", namespace, "-o", "json").stdout)
    assert lease["spec"]["leaseTransitions"] >= 1, lease  # client-go's count: the take-over is one

    # helm uninstall: the operator goes; the CRs and everything they made stay (documented).
    kube.cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s")
    wait_for("operator pods gone", lambda: not _operator_pods(kube, namespace) or None, timeout_s=120)
    assert kube.get("Deployment", namespace, f"{RELEASE}-operator") is None
    assert kube.get("MoEModel", workloads, "m2") is not None
    assert kube.get("Deployment", workloads, "m2") is not None
    assert kube.get("Service", workloads, "m2") is not None
