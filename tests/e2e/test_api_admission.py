"""kubemoe's generated CRDs on a real API server: samples are admitted, bad CRs are rejected at apply with
readable messages (schema and CEL), `kubectl explain` shows the field docs, and every manifest `kubemoe
render` produces passes the real schemas of Kubernetes and of the third-party CRDs (Gateway API,
prometheus-operator, LeaderWorkerSet)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubemoe.documents import parse_resource

from .harness import KubeCluster, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
KUBEMOE = str(Path(sys.executable).parent / "kubemoe")


@pytest.fixture(scope="module")
def crds_installed(kube_cluster: KubeCluster) -> KubeCluster:
    kube_cluster.kubectl("apply", "--server-side", "--field-manager=kubemoe-tests", "-f", str(ROOT / "crds"))
    kube_cluster.wait_established("moemodels.kubemoe.io", "moapipelines.kubemoe.io")
    return kube_cluster


def _with_namespace(text: str, namespace: str) -> str:
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return yaml.safe_dump_all(docs)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_samples_are_admitted_by_the_generated_schema(
    crds_installed: KubeCluster, namespace: str, sample: Path
) -> None:
    crds_installed.kubectl(
        "apply", "-n", namespace, "-f", "-", input=_with_namespace(sample.read_text(), namespace)
    )


def test_api_server_fills_schema_defaults(crds_installed: KubeCluster, namespace: str) -> None:
    sample = ROOT / "manifests" / "samples" / "mixtral-8x7b-p4de.yaml"
    crds_installed.kubectl(
        "apply", "-n", namespace, "-f", "-", input=_with_namespace(sample.read_text(), namespace)
    )
    obj = yaml.safe_load(
        crds_installed.kubectl("get", "moe", "mixtral-8x7b", "-n", namespace, "-o", "yaml").stdout
    )
    assert obj["spec"]["serving"]["gpuMemoryUtilization"] == 0.9
    assert obj["spec"]["placement"]["strategy"] == "cheapest"
    assert obj["spec"]["monitoring"]["alerts"]["kvCacheUsagePercent"] == 95


MOE = """apiVersion: kubemoe.io/v1alpha1
kind: MoEModel
metadata: {{name: {name}}}
spec:
  model: {{name: mistralai/Mixtral-8x7B-Instruct-v0.1}}
{extra}"""

MOA = """apiVersion: kubemoe.io/v1alpha1
kind: MoAPipeline
metadata: {{name: p}}
spec:
  aggregator: {{moeModelRef: {{name: m}}}}
{extra}"""


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        pytest.param(
            MOE.format(name="m", extra="  placement: {tensorParallelSize: 3}\n"),
            "tensorParallelSize must be a power of two",
            id="tp not a power of two (CEL)",
        ),
        pytest.param(
            MOE.format(name="m", extra="  serving: {maxModelLenn: 4096}\n"),
            'unknown field "spec.serving.maxModelLenn"',
            id="typo rejected by strict validation",
        ),
        pytest.param(
            MOE.format(name="m", extra="  serving: {kvCacheDtype: int3}\n"), "Unsupported value", id="enum"
        ),
        pytest.param(
            MOE.format(name="m", extra="  serving: {gpuMemoryUtilization: 1.5}\n"),
            "gpuMemoryUtilization",
            id="range",
        ),
        pytest.param(
            MOE.format(name="m", extra="  engine: {kind: neuronx}\n  placement: {accelerator: gpu}\n"),
            "engine.kind must match placement.accelerator",
            id="engine matches accelerator (CEL)",
        ),
        pytest.param(MOE.format(name="Bad_Name", extra=""), "metadata.name", id="name rule"),
        pytest.param(
            MOA.format(extra="  layers:\n  - agents:\n    - {name: a}\n"),
            "set exactly one of moeModelRef and endpoint",
            id="no model reference (CEL)",
        ),
        pytest.param(
            MOA.format(
                extra="  policy: {minResponses: 2}\n  layers:\n  - agents:\n    - {name: a, moeModelRef: {name: m}}\n"
            ),
            "policy.minResponses must not exceed",
            id="quorum above layer size (CEL)",
        ),
        pytest.param(
            MOA.format(
                extra="  layers:\n  - agents:\n    - {name: a, moeModelRef: {name: m}}\n"
                "  - agents:\n    - {name: a, moeModelRef: {name: m}}\n"
            ),
            "agent names must be unique",
            id="duplicate agents (CEL)",
        ),
    ],
)
def test_bad_crs_are_rejected_at_apply_with_readable_messages(
    crds_installed: KubeCluster, namespace: str, document: str, fragment: str
) -> None:
    proc = crds_installed.kubectl("apply", "-n", namespace, "-f", "-", input=document, check=False)
    assert proc.returncode != 0, proc.stdout
    assert fragment in proc.stderr, proc.stderr


#: Every new rule's valid edge: admitted by the API server and by the Python twin alike.
NEAR_MISSES = """apiVersion: kubemoe.io/v1alpha1
kind: MoEModel
metadata: {name: a-52-character-name-is-the-longest-allowed-012345678}
spec:
  model:
    name: acme/moe
    architecture: {totalParamsB: 47, activeParamsB: 47, numLayers: 32, hiddenSize: 4096,
                   numAttentionHeads: 32, numKvHeads: 8, numExperts: 8, expertsPerToken: 2}
  engine: {version: 0.10.1}
  placement:
    nodeSelector: {topology.kubernetes.io/zone: us-east-1a, example.com/Pool_A.b: "", tier: "1"}
    tolerations:
    - {operator: Exists}
    - {key: example.com/dedicated, operator: Equal, value: gpu-pool, effect: NoSchedule}
    - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 30}
  routing:
    parentRefs: [{name: gw}]
    hostnames: ["*.models.example.com", api.example.com, localhost]
  resources:
    requests: {cpu: 500m, memory: 1.5Gi, ephemeral-storage: 1e3, example.com/foo: 4}
    limits: {cpu: "1", memory: 1536Mi, example.com/foo: 4}
"""


def test_valid_edges_of_every_new_rule_are_admitted(crds_installed: KubeCluster, namespace: str) -> None:
    doc = yaml.safe_load(NEAR_MISSES)
    parse_resource(doc, "near misses")  # the Python twin admits it too
    proc = crds_installed.kubectl("apply", "-n", namespace, "-f", "-", input=NEAR_MISSES, check=False)
    assert proc.returncode == 0, proc.stderr


def test_kubectl_explain_documents_the_fields(crds_installed: KubeCluster) -> None:
    def explained() -> str | None:
        proc = crds_installed.kubectl("explain", "moe.spec.serving", check=False)
        return proc.stdout if proc.returncode == 0 else None

    text = wait_for("kubectl explain to see the new CRD", explained, timeout_s=60)
    assert "maxModelLen" in text
    assert "At least one sequence of this length must fit" in text


def test_every_rendered_sample_passes_the_real_schemas(crds_installed: KubeCluster, namespace: str) -> None:
    text = "\n---\n".join(_with_namespace(p.read_text(), namespace) for p in SAMPLES)
    rendered = subprocess.run(
        [KUBEMOE, "render", "-f", "-"], input=text, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert {"Deployment", "LeaderWorkerSet", "HTTPRoute", "PrometheusRule", "ServiceMonitor"} <= kinds
    proc = crds_installed.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=kubemoe",
        "-f",
        "-",
        input=rendered,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
