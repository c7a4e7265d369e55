"""`kubemoe` works on every sample, and bad input gets one clear message, a non-zero exit, no traceback.

The CLI runs as a real subprocess (the installed console script), as a user would run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cases.catalog_override import EXTRA_INSTANCE
from cases.samples import decentralised_pipeline

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
KUBEMOE = shutil.which("kubemoe", path=str(Path(sys.executable).parent)) or "kubemoe"


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "KUBEMOE_CATALOG_PATH"}
    return subprocess.run(
        [KUBEMOE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**environ, **(env or {})},
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
    # TP 8 (MoE TP 8) on the 8 A100-40GB: $1.169/M tokens against TP 4 x DP 2 (MoE TP 8)'s $1.197
    # (test_planner_golden's p4d TP 2 error case has the figures); plain TP, so EP is off.
    assert (plan["instanceType"], plan["tensorParallelSize"], plan["dataParallelSize"]) == (
        "p4d.24xlarge",
        8,
        1,
    )
    assert plan["expertParallel"] is False
    assert plan["expertParallelSize"] == 0
    assert plan["layout"] == "TP 8 (MoE TP 8) on p4d.24xlarge"


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
    assert_clean_failure(
        proc, "InsufficientMemory", "46.7 GB", "A100-40GB", "TP 8 (MoE TP 8) on p4d.24xlarge"
    )  # the plan that fits is the planner's own choice on p4d (test_plan_as_json_is_machine_readable)


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
                        "fp8": True,
                        "bf16Tflops": 989,
                        "fp8Tflops": 1979,
                        "performanceSource": "test",
                        "source": "test",
                    }
                ]
            }
        )
    )
    proc = run("--catalog", str(override), "plan", "deepseek-ai/DeepSeek-V3", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["instanceType"] == "x9.cheap"


def test_plan_without_a_model_or_file_says_what_to_give() -> None:
    assert_clean_failure(run("plan"), "give a MODEL")


# ------------------------------------------------------------------ documented features (issue 14)


def test_catalog_path_variable_reaches_every_command(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(EXTRA_INSTANCE)
    env = {"KUBEMOE_CATALOG_PATH": str(extra)}
    assert "x9.envtest" not in run("catalog", "instances").stdout
    listed = run("catalog", "instances", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "x9.envtest" in listed.stdout
    plan = run("plan", "mistralai/Mixtral-8x7B-Instruct-v0.1", "--instance-type", "x9.envtest", env=env)
    assert plan.returncode == 0, plan.stderr
    assert "x9.envtest" in plan.stdout
    # --catalog applies after the variable, so the same entry from the flag wins.
    flag = tmp_path / "flag.yaml"
    flag.write_text(EXTRA_INSTANCE.replace("pricePerHour: 1.0", "pricePerHour: 2.0"))
    both = run("--catalog", str(flag), "catalog", "instances", "-o", "json", env=env)
    prices = {i["name"]: i.get("pricePerHour") for i in json.loads(both.stdout)["instances"]}
    assert prices["x9.envtest"] == 2.0


def test_catalog_path_variable_names_a_missing_file() -> None:
    proc = run("catalog", "instances", env={"KUBEMOE_CATALOG_PATH": "/nonexistent/catalog.yaml"})
    assert_clean_failure(proc, "/nonexistent/catalog.yaml: no such catalog file or directory")


def test_plan_reads_stdin_once() -> None:
    # A model and a pipeline in one stream: both planned from the one read of stdin.
    samples = ROOT / "manifests" / "samples"
    text = (
        (samples / "mixtral-8x7b-p4de.yaml").read_text()
        + "\n---\n"
        + (samples / "moa-pipeline.yaml").read_text()
    )
    proc = run("plan", "-f", "-", stdin=text)
    assert proc.returncode == 0, proc.stderr
    assert "moa-chat: Mixture-of-Agents pipeline" in proc.stdout
    assert "mixtral-8x7b: mistralai/Mixtral-8x7B-Instruct-v0.1" in proc.stdout


def test_help_describes_what_exists() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    words = " ".join(proc.stdout.split())
    assert "come later" not in words
    assert "run the operator or the MoA router" in words


def test_render_of_a_decentralised_pipeline_shows_its_peers_not_a_router() -> None:
    """`kubemoe render` shows exactly what the operator applies: for `topology.mode: decentralised`, one peer
    Deployment per member, the headless peers Service and the client Service, and no router."""
    doc = decentralised_pipeline()
    proc = run("render", "-f", "-", stdin=yaml.safe_dump(doc))
    assert proc.returncode == 0, proc.stderr
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
    name = doc["metadata"]["name"]
    members = [a["name"] for layer in doc["spec"]["layers"] for a in layer["agents"]]
    deployments = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "Deployment")
    assert deployments == sorted(f"{name}-peer-{m}" for m in members)
    for d in (o for o in objects if o["kind"] == "Deployment"):
        assert d["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["kubemoe", "peer"]
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    assert f"{name}-router" in services  # the one Service clients use, spread over every peer
    assert f"{name}-peers" in services
    assert services[f"{name}-peers"]["spec"]["clusterIP"] == "None"
