"""spec.topology on a real API server: a decentralised pipeline is admitted, its CEL rules reject bad
topologies with their messages, and the objects `render.peers` writes pass the real Kubernetes schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemoe.api.moapipeline import MoAPipeline
from kubemoe.render.peers import render_peers

from .harness import KubeCluster

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crds_installed(kube_cluster: KubeCluster) -> KubeCluster:
    kube_cluster.kubectl("apply", "--server-side", "--field-manager=kubemoe-tests", "-f", str(ROOT / "crds"))
    kube_cluster.wait_established("moapipelines.kubemoe.io")
    return kube_cluster


def pipeline(namespace: str, topology: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubemoe.io/v1alpha1",
        "kind": "MoAPipeline",
        "metadata": {"name": "peers", "namespace": namespace},
        "spec": {
            "layers": [
                {
                    "agents": [
                        {"name": n, "endpoint": {"url": f"http://{n}.models:8000/v1", "model": n}}
                        for n in ("a", "b", "c")
                    ]
                }
            ],
            "aggregator": {"endpoint": {"url": "http://a.models:8000/v1", "model": "a"}},
            "topology": topology,
        },
    }


def test_decentralised_pipeline_is_admitted_with_defaults_and_its_peers_pass_the_schemas(
    crds_installed: KubeCluster, namespace: str
) -> None:
    doc = pipeline(namespace, {"mode": "decentralised", "neighbours": 2, "selection": "ring"})
    crds_installed.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    obj = yaml.safe_load(crds_installed.kubectl("get", "moa", "peers", "-n", namespace, "-o", "yaml").stdout)
    assert obj["spec"]["topology"]["admission"]["maxUtilization"] == 0.9
    assert obj["spec"]["topology"]["aggregation"] == "synthesize"
    rendered = render_peers(MoAPipeline.model_validate(obj))
    proc = crds_installed.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=kubemoe",
        "-f",
        "-",
        input=yaml.safe_dump_all(rendered),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("topology", "fragment"),
    [
        pytest.param(
            {"mode": "decentralised", "neighbours": 3},
            "topology.neighbours must be below the number of members",
            id="k too large (CEL)",
        ),
        pytest.param(
            {"mode": "decentralised", "neighbours": 1, "selection": "graph"},
            "selection graph needs a graph",
            id="graph missing (CEL)",
        ),
        pytest.param(
            {
                "mode": "decentralised",
                "neighbours": 1,
                "selection": "graph",
                "graph": [{"member": "z", "neighbours": ["a"]}],
            },
            "topology.graph must name members",
            id="unknown member (CEL)",
        ),
        pytest.param(
            {"mode": "decentralised", "neighbours": 2, "graph": [{"member": "a", "neighbours": ["b"]}]},
            "at least `neighbours` neighbours",
            id="too few graph neighbours (CEL)",
        ),
        pytest.param(
            {"mode": "decentralised", "admission": {"maxUtilization": 1}},
            "maxUtilization",
            id="rho limit < 1",
        ),
        pytest.param({"mode": "mesh"}, "Unsupported value", id="mode enum"),
    ],
)
def test_bad_topologies_are_rejected_at_apply(
    crds_installed: KubeCluster, namespace: str, topology: dict[str, Any], fragment: str
) -> None:
    doc = yaml.safe_dump(pipeline(namespace, topology))
    proc = crds_installed.kubectl("apply", "-n", namespace, "-f", "-", input=doc, check=False)
    assert proc.returncode != 0, proc.stdout
    assert fragment in proc.stderr, proc.stderr
