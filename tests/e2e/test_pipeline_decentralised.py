"""A decentralised MoAPipeline (`spec.topology.mode: decentralised`) on the real control plane, with the
operator running as in the other e2e tests (`kubemoe run`, a subprocess on this machine).

- Any cluster (kwok's fake pods included): the operator renders one peer per member instead of the
  router, lists every member in `status.peers` with its pod's readiness, and a topology switch prunes the
  other side's children both ways.
- The real node (hack/node): the peers run as real pods from the image `make image` builds, in front of
  OpenAI-compatible stand-in pods (no GPU here: they stand in for vLLM and say so in each answer); a query
  to the client Service `<name>-router` comes back aggregated from gossip across the peer pods, the status
  carries each peer's rho as its `/status` reports it, and deleting a peer pod loses no query.

The cluster has no DNS server: the stand-ins are named by Service address, and the peers find each other
by their member Services' addresses (render.peers)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from .harness import wait_for
from .operator_harness import *  # noqa: F403  (fixtures: kube, namespace, operator_factory, ...)
from .operator_harness import ROOT, Kube, OperatorProcess, cond
from .test_helm_install import STUB_PORT, TOLERATIONS, _chat, _real_node, _stub_backend, _try

pytestmark = pytest.mark.e2e

NAME = "moa-gossip"
MEMBERS = ["ada", "bob", "cyd"]


def _doc(urls: dict[str, str], mode: str = "decentralised") -> dict[str, Any]:
    return {
        "apiVersion": "kubemoe.io/v1alpha1",
        "kind": "MoAPipeline",
        "metadata": {"name": NAME},
        "spec": {
            "layers": [{"agents": [{"name": m, "endpoint": {"url": urls[m], "model": m}} for m in MEMBERS]}],
            "aggregator": {"endpoint": {"url": urls[MEMBERS[0]], "model": MEMBERS[0]}},
            "policy": {"layerTimeoutSeconds": 10},
            "topology": {"mode": mode, "neighbours": 2, "layers": 2},
        },
    }


def _pipeline(kube: Kube, namespace: str) -> dict[str, Any]:
    obj = kube.get("MoAPipeline", namespace, NAME)
    assert obj is not None
    return obj


def _names(kube: Kube, namespace: str, kind: str) -> set[str]:
    objs = kube.list(kind, namespace, f"app.kubernetes.io/instance={NAME}")
    return {o["metadata"]["name"] for o in objs if not o["metadata"].get("deletionTimestamp")}


PEER_DEPLOYMENTS = {f"{NAME}-peer-{m}" for m in MEMBERS}


def _switch(kube: Kube, namespace: str, mode: str) -> None:
    kube.merge_patch("MoAPipeline", namespace, NAME, {"spec": {"topology": {"mode": mode}}})


def _check_switching(kube: Kube, namespace: str) -> None:
    _switch(kube, namespace, "central")
    wait_for(
        "the router to replace the peers",
        lambda: (
            _names(kube, namespace, "Deployment") == {f"{NAME}-router"}
            and _names(kube, namespace, "Service") == {f"{NAME}-router"}
            and _names(kube, namespace, "ConfigMap") == {f"{NAME}-router"}
        ),
        timeout_s=60,
    )
    svc = kube.get("Service", namespace, f"{NAME}-router")
    assert svc is not None
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "router"
    _switch(kube, namespace, "decentralised")
    wait_for(
        "the peers to replace the router",
        lambda: _names(kube, namespace, "Deployment") == PEER_DEPLOYMENTS,
        timeout_s=60,
    )
    assert _names(kube, namespace, "ConfigMap") == PEER_DEPLOYMENTS


def test_decentralised_pipeline_renders_peers_lists_them_and_switches_topology(
    kube: Kube, namespace: str, operator_factory: Callable[..., OperatorProcess]
) -> None:
    operator_factory()
    urls = {m: f"http://192.0.2.{i + 1}:8000/v1" for i, m in enumerate(MEMBERS)}  # never called here
    kube.apply(_doc(urls), namespace)
    wait_for(
        "a peer Deployment per member", lambda: _names(kube, namespace, "Deployment") == PEER_DEPLOYMENTS
    )
    services = {*PEER_DEPLOYMENTS, f"{NAME}-peers", f"{NAME}-router"}  # applied in one pass, in order
    wait_for(
        "the member, headless and client Services", lambda: _names(kube, namespace, "Service") == services
    )
    dep = kube.get("Deployment", namespace, f"{NAME}-peer-bob")
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["kubemoe", "peer"]
    status = wait_for(
        "status.peers listing every member",
        lambda: (_pipeline(kube, namespace).get("status") or {}).get("peers"),
    )
    assert [p["member"] for p in status] == MEMBERS
    cfg = _converged_config(kube, namespace)
    assert [p["name"] for p in cfg["peers"]] == ["bob", "cyd"]
    assert cfg["auth"]["enabled"] is True
    _check_switching(kube, namespace)


def _config(kube: Kube, namespace: str, member: str) -> dict[str, Any]:
    cm = kube.get("ConfigMap", namespace, f"{NAME}-peer-{member}")
    assert cm is not None
    return dict(yaml.safe_load(cm["data"]["peer.yaml"]))


def _converged_config(kube: Kube, namespace: str) -> dict[str, Any]:
    """Once every member Service has its address, the peers' configs name each other by it (no DNS)."""

    def probe() -> dict[str, Any] | None:
        configs = [_config(kube, namespace, m) for m in MEMBERS]
        done = all("svc.cluster.local" not in p["url"] for c in configs for p in c["peers"])
        return configs[0] if done else None

    return wait_for("the peer configs to use the member Services' addresses", probe)


def _on_real_node(kube: Kube, namespace: str, deployment: str) -> None:
    """CPU workloads belong on the real node; the operator sets no node selector (users choose), so the
    test adds one with its own field manager, which the operator's server-side apply leaves alone."""
    patch = {"spec": {"template": {"spec": {"nodeSelector": {"kubemoe.io/node": "real"}, "tolerations": json.loads(TOLERATIONS)}}}}  # fmt: skip
    kube.kubectl(
        "patch", "deployment", deployment, "-n", namespace, "--type", "merge", "--field-manager", "e2e",
        "-p", json.dumps(patch),
    )  # fmt: skip


def _ask(url: str, key: str, text: str) -> dict[str, Any]:
    body = json.dumps(
        {"model": NAME, "messages": [{"role": "user", "content": text}], "moa_trace": True}
    ).encode()
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return dict(json.loads(resp.read()))


def _ask_retrying_connects(url: str, key: str, text: str, refused: list[str]) -> dict[str, Any]:
    """One query. Retried, and counted, only where no peer accepted it: a connection the Service could
    not open (kube-proxy still pointing at a pod that is gone), or a 429 from a peer's admission control
    (rho = alpha((k+1)M+1)lambda near its limit: one client asking back to back is, to the stability
    model, every peer asking at that rate), after its Retry-After. Any other error fails the test."""
    for _ in range(8):
        try:
            return _ask(url, key, text)
        except urllib.error.HTTPError as exc:
            if exc.code != 429:
                raise
            refused.append(f"429, Retry-After {exc.headers.get('Retry-After')}")
            time.sleep(float(exc.headers.get("Retry-After") or 1))
        except (urllib.error.URLError, ConnectionError) as exc:
            refused.append(str(exc))
            time.sleep(0.2)
    raise AssertionError(f"no answer from {url}: {refused[-3:]}")


def _gossiped(answer: dict[str, Any]) -> list[str]:
    """The agents that answered (`ok`) in every layer of a query's trace."""
    layers = answer["moa_trace"]["layers"]
    ok = [{a["agent"] for a in layer["agents"] if a["status"] == "ok"} for layer in layers]
    return sorted(set.intersection(*ok))


def test_peers_answer_through_the_client_service_and_survive_losing_one(
    kube: Kube, namespace: str, operator_factory: Callable[..., OperatorProcess]
) -> None:
    node = _real_node(kube)
    image = kube.cluster.run("bash", str(ROOT / "hack/image"), "name").stdout.strip()
    operator_factory(extra=["--router-image", image])
    ips = {m: _stub_backend(kube, namespace, f"stand-in-{m}") for m in MEMBERS}
    urls = {m: f"http://{ips[m]}:{STUB_PORT}/v1" for m in MEMBERS}
    key = uuid.uuid4().hex
    kube.kubectl(
        "create", "secret", "generic", f"{NAME}-client-keys", "-n", namespace, f"--from-literal=e2e={key}"
    )
    kube.apply(_doc(urls), namespace)
    wait_for("the peer Deployments", lambda: _names(kube, namespace, "Deployment") == PEER_DEPLOYMENTS)
    _converged_config(kube, namespace)
    for dep in sorted(PEER_DEPLOYMENTS):
        _on_real_node(kube, namespace, dep)
    for dep in sorted(PEER_DEPLOYMENTS):
        kube.kubectl("rollout", "status", f"deployment/{dep}", "-n", namespace, "--timeout=180s")

    def ready_pipeline() -> dict[str, Any] | None:
        obj = _pipeline(kube, namespace)
        return obj if cond(obj, "Ready").get("status") == "True" else None

    ready = wait_for("the pipeline Ready with every peer ready", ready_pipeline, timeout_s=240, every_s=2)
    pods = [
        p
        for p in kube.list("Pod", namespace, "app.kubernetes.io/component=peer")
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"
    ]
    assert {p["spec"].get("nodeName") for p in pods} == {node}
    assert sorted(p["metadata"]["labels"]["kubemoe.io/member"] for p in pods) == MEMBERS
    assert [(p["member"], p["ready"]) for p in ready["status"]["peers"]] == [(m, True) for m in MEMBERS]

    svc = kube.get("Service", namespace, f"{NAME}-router")
    assert svc is not None
    url = f"http://{svc['spec']['clusterIP']}:8080/v1/chat/completions"
    errors: list[str] = []
    answer = wait_for(
        "an answer through the client Service",
        lambda: _try(lambda: _ask(url, key, "What is a mixture of agents?"), errors),
        timeout_s=60,
        every_s=1,
    )
    # Every layer ran on the entry peer and both neighbours (k = 2 of 3), each over its own pod.
    assert _gossiped(answer) == MEMBERS, answer["moa_trace"]
    assert len(answer["moa_peers"]) == 2
    text = answer["choices"][0]["message"]["content"]
    assert text.startswith("[stand-in stand-in-"), text
    with pytest.raises(urllib.error.HTTPError) as denied:
        _chat(url, NAME, "hello", "not-a-key")
    assert denied.value.code == 401

    # Each peer's /status, read by the operator, is in the status: rho for every member.
    def rho_everywhere() -> list[dict[str, Any]] | None:
        ps: list[dict[str, Any]] = _pipeline(kube, namespace)["status"]["peers"]
        return ps if all(p.get("utilization") is not None for p in ps) else None

    peers = wait_for("rho of every peer in status.peers", rho_everywhere, timeout_s=60, every_s=1)
    assert all(p["address"].startswith("http://") for p in peers)
    capacity = cond(_pipeline(kube, namespace), "CapacityOK")
    assert capacity["status"] == "True", capacity

    # Lose a peer: its pod is deleted (its Deployment starts another). Queries keep being answered.
    victim = next(p for p in pods if p["metadata"]["labels"]["kubemoe.io/member"] == "bob")
    kube.kubectl("delete", "pod", victim["metadata"]["name"], "-n", namespace, "--wait=false")
    refused: list[str] = []
    answered = []
    for i in range(8):
        answered.append(_ask_retrying_connects(url, key, f"question {i}", refused))
        time.sleep(0.5)
    assert all(a["choices"][0]["message"]["content"] for a in answered)
    wait_for(
        "the pipeline Ready again with a new bob",
        lambda: (
            cond(_pipeline(kube, namespace), "Ready").get("status") == "True"
            and all(p["ready"] for p in _pipeline(kube, namespace)["status"]["peers"])
        ),
        timeout_s=120,
        every_s=2,
    )
    again = _ask(url, key, "and now?")
    assert _gossiped(again) == MEMBERS, again["moa_trace"]
    without_bob = sum("bob" not in _gossiped(a) for a in answered)
    print(
        f"losing bob: {len(answered)} queries answered, {without_bob} of them without bob's answer; "
        f"retried where no peer accepted: {refused}"
    )
    _check_switching(kube, namespace)
