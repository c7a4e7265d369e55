"""spec.topology validation and the pure renderer of decentralised peers (render.peers)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubemoe.api.crd import moapipeline_crd
from kubemoe.api.moapipeline import MoAPipeline, MoAPipelineSpec
from kubemoe.peer.config import PeerConfig
from kubemoe.render.peers import MEMBER_LABEL, PeerRenderContext, peer_url, render_peers

AGENTS = ["a", "b", "c", "d"]


def spec(topology: dict[str, Any] | None = None, agents: list[str] = AGENTS) -> dict[str, Any]:
    return {
        "layers": [
            {"agents": [{"name": n, "moeModelRef": {"name": "mixtral"}} for n in agents[:2]]},
            {
                "agents": [
                    {"name": n, "endpoint": {"url": f"http://{n}.models:8000/v1", "model": f"m-{n}"}}
                    for n in agents[2:]
                ]
            },
        ],
        "aggregator": {"moeModelRef": {"name": "mixtral"}, "maxTokens": 300},
        "policy": {"layerTimeoutSeconds": 20},
        **({"topology": topology} if topology is not None else {}),
    }


def pipeline(topology: dict[str, Any] | None = None, **kw: Any) -> MoAPipeline:
    return MoAPipeline.model_validate(
        {"metadata": {"name": "moa", "namespace": "ml", "uid": "u1"}, "spec": spec(topology, **kw)}
    )


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def test_topology_defaults_to_central_and_round_trips() -> None:
    s = MoAPipelineSpec.model_validate(spec())
    assert s.topology.mode == "central"
    d = MoAPipelineSpec.model_validate(spec({"mode": "decentralised", "neighbours": 3, "layers": 1}))
    dumped = d.model_dump(by_alias=True, mode="json")["topology"]
    assert dumped["neighbours"] == 3
    assert dumped["admission"]["policy"] == "shed"
    assert dumped["admission"]["maxUtilization"] == 0.9


@pytest.mark.parametrize(
    ("topology", "message"),
    [
        (
            {"mode": "decentralised", "neighbours": 4},
            r"neighbours \(4\) must be below the number of members \(4\)",
        ),
        ({"mode": "decentralised", "selection": "graph"}, "selection graph needs a graph"),
        (
            {
                "mode": "decentralised",
                "neighbours": 1,
                "selection": "graph",
                "graph": [{"member": "z", "neighbours": ["a"]}],
            },
            "unknown members: z",
        ),
        (
            {
                "mode": "decentralised",
                "neighbours": 1,
                "selection": "graph",
                "graph": [{"member": "a", "neighbours": ["a"]}],
            },
            "lists itself",
        ),
        (
            {
                "mode": "decentralised",
                "neighbours": 2,
                "selection": "graph",
                "graph": [{"member": "a", "neighbours": ["b"]}],
            },
            "at least `neighbours` neighbours",
        ),
        ({"mode": "decentralised", "admission": {"maxUtilization": 1.0}}, "less than 1"),
        ({"mode": "decentralised", "aggregation": "mean"}, "synthesize"),
        ({"mode": "mesh"}, "central"),
        ({"mode": "decentralised", "neighbour": 2}, "Extra inputs"),
    ],
)
def test_bad_topology_is_refused_with_a_clear_message(topology: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MoAPipelineSpec.model_validate(spec(topology))


def test_crd_carries_the_topology_schema_and_cel_rules() -> None:
    text = yaml.safe_dump(moapipeline_crd())
    assert "topology.neighbours must be below the number of members" in text
    assert "selection graph needs a graph" in text
    assert "reduceNeighbours" in text


def test_one_peer_per_member_a_headless_service_and_a_client_service() -> None:
    objs = render_peers(pipeline({"mode": "decentralised", "neighbours": 2, "layers": 3}))
    deployments = by_kind(objs, "Deployment")
    assert [d["metadata"]["name"] for d in deployments] == [f"moa-peer-{n}" for n in AGENTS]
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind(objs, "Service")}
    assert services["moa-peers"]["clusterIP"] == "None"
    assert services["moa-router"]["type"] == "ClusterIP"
    # Both Services select every peer; each Deployment selects only its own member.
    peer_sel = services["moa-router"]["selector"]
    assert services["moa-peers"]["selector"] == peer_sel
    for d, n in zip(deployments, AGENTS, strict=True):
        sel = d["spec"]["selector"]["matchLabels"]
        assert sel == {**peer_sel, "kubemoe.io/member": n}
        tmpl = d["spec"]["template"]
        assert set(sel.items()) <= set(tmpl["metadata"]["labels"].items())
        assert tmpl["spec"]["hostname"] == n
        assert tmpl["spec"]["subdomain"] == "moa-peers"
        assert d["spec"]["replicas"] == 1
        assert tmpl["spec"]["containers"][0]["command"][:2] == ["kubemoe", "peer"]
        assert d["metadata"]["ownerReferences"][0]["uid"] == "u1"


def test_peer_configs_name_the_others_in_ring_order_and_resolve_models() -> None:
    ctx = PeerRenderContext(served_names={"mixtral": "mistralai/Mixtral-8x7B"})
    objs = render_peers(pipeline({"mode": "decentralised", "neighbours": 2, "selection": "ring"}), ctx)
    configs = {
        c["metadata"]["labels"]["kubemoe.io/member"]: PeerConfig.model_validate(
            yaml.safe_load(c["data"]["peer.yaml"])
        )
        for c in by_kind(objs, "ConfigMap")
    }
    assert [p.name for p in configs["c"].peers] == ["d", "a", "b"]
    assert configs["c"].peers[0].url == peer_url("moa", "d", "ml")
    assert peer_url("moa", "d", "ml") == "http://d.moa-peers.ml.svc.cluster.local:8080"
    assert configs["a"].model.url.startswith("http://mixtral.ml.svc")
    assert configs["a"].model.model == "mistralai/Mixtral-8x7B"
    assert configs["d"].model.url == "http://d.models:8000/v1"
    assert configs["d"].model.model == "m-d"
    assert configs["b"].topology.neighbours == 2
    assert configs["b"].aggregator_max_tokens == 300
    assert configs["b"].policy.layer_timeout_seconds == 20


def test_config_change_rolls_only_through_the_hash_and_render_is_deterministic() -> None:
    p = pipeline({"mode": "decentralised", "neighbours": 1})
    assert render_peers(p) == render_peers(p)
    hashes = lambda objs: [  # noqa: E731
        d["spec"]["template"]["metadata"]["annotations"]["kubemoe.io/config-hash"]
        for d in by_kind(objs, "Deployment")
    ]
    assert hashes(render_peers(p)) != hashes(
        render_peers(pipeline({"mode": "decentralised", "neighbours": 2}))
    )


def test_central_pipeline_is_not_rendered_as_peers() -> None:
    with pytest.raises(ValueError, match="not decentralised"):
        render_peers(pipeline())


def test_peer_status_copies_what_a_peer_reports() -> None:
    from kubemoe.api.moapipeline import MoAPipelineStatus, PeerStatus

    body = {
        "utilization": 0.42,
        "arrivalRate": 2.0,
        "serviceTimeSeconds": 0.03,
        "maxStableRate": 4.76,
        "effectiveNeighbours": 2,
    }
    status = MoAPipelineStatus(peers=[PeerStatus.from_peer("a", body)])
    dumped = status.model_dump(by_alias=True, exclude_none=True)["peers"][0]
    assert dumped == {
        "member": "a",
        "ready": False,
        "utilization": 0.42,
        "arrivalRate": 2.0,
        "serviceTimeSeconds": 0.03,
        "maxStableRate": 4.76,
        "neighbours": 2,
    }


def test_peers_get_the_pipelines_route_and_client_keys() -> None:
    p = MoAPipeline.model_validate(
        {
            "metadata": {"name": "moa", "namespace": "ml", "uid": "u1"},
            "spec": {
                **spec({"mode": "decentralised"}),
                "routing": {"parentRefs": [{"name": "gw"}]},
                "auth": {"revokedKeys": ["old"]},
            },
        }
    )
    objs = render_peers(p)
    (route,) = by_kind(objs, "HTTPRoute")
    assert route["metadata"]["name"] == "moa-router"
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "moa-router"
    cfg = yaml.safe_load(by_kind(objs, "ConfigMap")[0]["data"]["peer.yaml"])
    assert cfg["auth"]["enabled"] is True
    assert cfg["auth"]["revokedKeys"] == ["old"]
    pod = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["client-keys"] == cfg["auth"]["keysDir"]
    (member_svc,) = [o for o in by_kind(objs, "Service") if o["metadata"]["name"] == "moa-peer-a"]
    assert member_svc["spec"]["selector"]["kubemoe.io/member"] == "a"
    off = MoAPipeline.model_validate(
        {
            "metadata": {"name": "moa", "namespace": "ml"},
            "spec": {**spec({"mode": "decentralised"}), "auth": {"enabled": False}},
        }
    )
    objs = render_peers(off)
    assert yaml.safe_load(by_kind(objs, "ConfigMap")[0]["data"]["peer.yaml"])["auth"] == {
        "enabled": False,
        "revokedKeys": [],
        "reloadSeconds": 1.0,
    }
    pod = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]
    assert "client-keys" not in {v["name"] for v in pod["volumes"]}


def test_peer_addresses_are_urls_for_ipv4_and_ipv6() -> None:
    from kubemoe.render.peers import peer_address

    assert peer_address("10.96.0.7") == "http://10.96.0.7:8080"
    assert peer_address("fd00::7") == "http://[fd00::7]:8080"
    cfg = yaml.safe_load(
        render_peers(
            pipeline({"mode": "decentralised"}),
            PeerRenderContext(peer_addresses={"b": "http://[fd00::7]:8080"}),
        )[0]["data"]["peer.yaml"]
    )
    urls = {p["name"]: p["url"] for p in cfg["peers"]}
    assert urls["b"] == "http://[fd00::7]:8080"
    assert urls["c"] == peer_url("moa", "c", "ml")  # no address yet: its DNS name


def test_peers_are_scraped_once_each_and_page_near_the_stability_limit() -> None:
    p = pipeline(
        {"mode": "decentralised", "neighbours": 2, "layers": 1, "admission": {"maxUtilization": 0.8}}
    )
    objs = render_peers(p)
    (monitor,) = by_kind(objs, "ServiceMonitor")
    assert monitor["metadata"]["name"] == "moa-peers"
    selector = monitor["spec"]["selector"]
    # The members' own Services only: the headless and client Services select the same pods.
    assert selector["matchExpressions"] == [{"key": MEMBER_LABEL, "operator": "Exists"}]
    services = by_kind(objs, "Service")

    def selected(svc: dict[str, Any]) -> bool:
        labels = svc["metadata"]["labels"]
        return all(labels.get(k) == v for k, v in selector["matchLabels"].items()) and all(
            e["key"] in labels for e in selector["matchExpressions"]
        )

    assert sorted(s["metadata"]["name"] for s in services if selected(s)) == [f"moa-peer-{m}" for m in AGENTS]
    (rule,) = by_kind(objs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    near = alerts["KubeMoEPeerNearInstability"]
    assert near["expr"] == 'kubemoe_peer_utilization{namespace="ml", service=~"moa-peer-.+"} > 0.8'
    assert near["labels"] == {"severity": "warning", "pipeline": "moa", "namespace": "ml"}
    # The router's request alerts apply to every peer (they export the same families).
    assert 'service=~"moa-peer-.+"' in alerts["KubeMoERouterErrorRate"]["expr"]

    off = pipeline({"mode": "decentralised"})
    off.spec.monitoring.alerts.enabled = False
    off.spec.monitoring.service_monitor = False
    assert by_kind(render_peers(off), "PrometheusRule") == by_kind(render_peers(off), "ServiceMonitor") == []
