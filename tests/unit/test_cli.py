"""`kubemoe` works on every sample, and bad input gets one clear message, a non-zero exit, no traceback.

The CLI runs as a real subprocess (the installed console script), as a user would run it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
KUBEMOE = shutil.which("kubemoe", path=str(Path(sys.executable).parent)) or "kubemoe"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBEMOE, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def assert_clean_failure(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_plan_and_render_work_on_every_sample(sample: Path) -> None:
    plan = run("plan", "-f", str(sample))
    assert plan.returncode == 0, plan.stderr
    render = run("render", "-f", str(sample))
    assert render.returncode == 0, render.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(render.stdout) if d]
    assert "Service" in kinds


def test_render_reads_several_documents_from_stdin() -> None:
    text = "\n---\n".join(p.read_text() for p in SAMPLES)
    proc = run("render", "-f", "-", stdin=text)
    assert proc.returncode == 0, proc.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(proc.stdout) if d]
    assert {"Deployment", "LeaderWorkerSet", "ConfigMap", "HTTPRoute"} <= set(kinds)


def test_plan_shows_the_memory_table_alternatives_and_the_recipe_comparison() -> None:
    proc = run("plan", "deepseek-ai/DeepSeek-V3")
    assert proc.returncode == 0, proc.stderr
    for fragment in ("memory per rank (GiB)", "KV cache", "alternatives:", "vs recipe", "805 GB"):
        assert fragment in proc.stdout


def test_plan_as_json_is_machine_readable() -> None:
    proc = run(
        "plan", "mistralai/Mixtral-8x7B-Instruct-v0.1", "--instance-type", "p4d.24xlarge", "-o", "json"
    )
    plan = json.loads(proc.stdout)
    assert (plan["instance_type"], plan["tensor_parallel_size"]) == ("p4d.24xlarge", 4)


def test_plan_of_a_pipeline_shows_agents_and_capacity() -> None:
    proc = run("plan", "-f", str(ROOT / "manifests" / "samples" / "moa-pipeline.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "3 call(s) to moe:mixtral-8x22b" in proc.stdout
    assert "capacity      ok" in proc.stdout


def test_the_guides_tp2_mixtral_on_p4d_is_refused_with_the_plan_that_fits() -> None:
    proc = run(
        "plan",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "--instance-type",
        "p4d.24xlarge",
        "--tensor-parallel-size",
        "2",
    )
    assert_clean_failure(proc, "InsufficientMemory", "46.7 GB", "A100-40GB", "TP 4 on p4d.24xlarge")


def test_catalog_and_crds_print() -> None:
    models = run("catalog", "models")
    assert models.returncode == 0
    assert "deepseek-ai/DeepSeek-V3" in models.stdout
    instances = run("catalog", "instances", "-o", "yaml")
    assert "trn2.48xlarge" in instances.stdout
    crds = run("crds")
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(crds.stdout)] == [
        "moemodels.kubemoe.io",
        "moapipelines.kubemoe.io",
    ]


def test_crds_writes_files(tmp_path: Path) -> None:
    proc = run("crds", "--output-dir", str(tmp_path))
    assert proc.returncode == 0
    assert (tmp_path / "kubemoe.io_moemodels.yaml").read_text() == (
        ROOT / "crds" / "kubemoe.io_moemodels.yaml"
    ).read_text()


MOE = """apiVersion: kubemoe.io/v1alpha1
kind: MoEModel
metadata: {name: m}
spec:
"""


@pytest.mark.parametrize(
    ("document", "fragments"),
    [
        pytest.param("spec: [unclosed", ("malformed YAML", "line 1"), id="malformed yaml"),
        pytest.param(
            MOE + "  model: {name: acme/unknown-moe}\n",
            ("UnknownModel", "spec.model.architecture"),
            id="unknown model without architecture",
        ),
        pytest.param(
            MOE + "  model: {name: openai/gpt-oss-20b}\n  placement: {instanceTypes: [p9.huge]}\n",
            ("UnknownInstanceType", "p9.huge"),
            id="unknown instance type",
        ),
        pytest.param(
            MOE + "  model: {name: deepseek-ai/DeepSeek-V3}\n  placement: {instanceTypes: [g5.12xlarge]}\n",
            ("InsufficientMemory", "DeepSeek-V3"),
            id="infeasible plan",
        ),
        pytest.param(
            MOE + "  model: {name: openai/gpt-oss-20b}\n  placement: {tensorParallelSize: 3}\n",
            ("spec.placement.tensorParallelSize", "power of two"),
            id="schema violation",
        ),
        pytest.param(
            MOE + "  model: {name: openai/gpt-oss-20b}\n  serving: {maxModelLenn: 10}\n",
            ("spec.serving.maxModelLenn", "unknown field"),
            id="typo in a field name",
        ),
        pytest.param(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", ("not a kubemoe kind",), id="foreign kind"
        ),
        pytest.param(
            MOE + "  model: {name: openai/gpt-oss-20b}\n  serving: {maxModelLen: 999999999}\n",
            ("maxModelLen",),
            id="context longer than the model supports",
        ),
    ],
)
def test_bad_input_gets_one_clear_error(tmp_path: Path, document: str, fragments: tuple[str, ...]) -> None:
    path = tmp_path / "cr.yaml"
    path.write_text(document)
    assert_clean_failure(run("render", "-f", str(path)), *fragments)


def test_missing_file_is_a_clear_error() -> None:
    assert_clean_failure(run("render", "-f", "/nonexistent/cr.yaml"), "cannot read /nonexistent/cr.yaml")


def test_bad_catalog_override_is_a_clear_error(tmp_path: Path) -> None:
    override = tmp_path / "catalog.yaml"
    override.write_text("instances:\n- name: x\n")
    assert_clean_failure(run("--catalog", str(override), "catalog", "instances"), str(override))


def test_catalog_override_adds_an_instance_the_planner_then_uses(tmp_path: Path) -> None:
    override = tmp_path / "catalog.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "instances": [
                    {
                        "name": "x9.cheap",
                        "acceleratorKind": "gpu",
                        "acceleratorModel": "H200",
                        "devicesPerNode": 8,
                        "memoryPerDeviceMib": 143771,
                        "memoryBandwidthGbps": 4800,
                        "interconnect": "NVSwitch",
                        "efa": True,
                        "networkGbps": 3200,
                        "vcpus": 192,
                        "hostMemoryGib": 2048,
                        "pricePerHour": 1.0,
                        "priceSource": "test",
                        "resourceName": "nvidia.com/gpu",
                        "source": "test",
                    }
                ]
            }
        )
    )
    proc = run("--catalog", str(override), "plan", "deepseek-ai/DeepSeek-V3", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["instance_type"] == "x9.cheap"


def test_plan_without_a_model_or_file_says_what_to_give() -> None:
    assert_clean_failure(run("plan"), "give a MODEL")
