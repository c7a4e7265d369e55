"""The renderer turns a spec and its plan into exactly the manifests the operator applies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubemoe.api import MoAPipeline, MoEModel
from kubemoe.api.moemodel import Engine
from kubemoe.catalog import load_catalog
from kubemoe.documents import load_documents
from kubemoe.planner import plan_placement
from kubemoe.render import EngineDialectError, render_moemodel
from kubemoe.render.all import render_documents
from kubemoe.render.moapipeline import render_moapipeline
from kubemoe.router.config import RouterConfig

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def _model(spec: dict[str, Any], name: str = "m", uid: str | None = "uid-1") -> MoEModel:
    meta: dict[str, Any] = {"name": name, "namespace": "ml"}
    if uid:
        meta["uid"] = uid
    return MoEModel.model_validate({"metadata": meta, "spec": spec})


def _render(spec: dict[str, Any], **kw: Any) -> dict[str, dict[str, Any]]:
    model = _model(spec, **kw)
    objs = render_moemodel(model, plan_placement(model.spec, load_catalog()))
    return {o["kind"]: o for o in objs}


MIXTRAL = {
    "model": {"name": "mistralai/Mixtral-8x7B-Instruct-v0.1"},
    "placement": {"instanceTypes": ["p4de.24xlarge"], "tensorParallelSize": 2},
}


def _container(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    return container


def test_single_node_model_renders_deployment_service_rules_and_monitor_owned_by_the_cr() -> None:
    objs = _render(MIXTRAL)
    assert sorted(objs) == ["Deployment", "PrometheusRule", "Service", "ServiceMonitor"]
    for obj in objs.values():
        owner = obj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "MoEModel",
            "m",
            "uid-1",
            True,
        )
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubemoe"


def test_vllm_command_line_carries_every_planned_figure() -> None:
    args = _container(_render(MIXTRAL))["command"]
    assert args[:3] == ["vllm", "serve", "mistralai/Mixtral-8x7B-Instruct-v0.1"]
    for flag in (
        "--tensor-parallel-size=2",
        "--max-model-len=32768",
        "--gpu-memory-utilization=0.9",
        "--max-num-seqs=256",
        "--max-num-batched-tokens=2048",
        "--served-model-name=m",
        "--port=8000",
    ):
        assert flag in args
    assert not any(a.startswith("--speculative-model") for a in args)
    # TP 2 at DP 1 is planned as vLLM's plain TP, the experts sharded over both ranks (MoE TP 2): it ranks
    # above TP 2 + EP 2, whose busiest EP rank takes epExpertImbalance[2] = 1.26x the mean expert time.
    assert "--enable-expert-parallel" not in args


def test_dp1_tp4_moe_tp_renders_plain_tp_and_expert_parallel_true_still_forces_ep() -> None:
    """DP 1, TP 4 on a MoE model: unpinned, MoE TP 4 wins (no --enable-expert-parallel, vLLM's default at
    DP 1); `expertParallel: true` keeps the user's TP 4 + EP 4."""
    placement = {"instanceTypes": ["p4d.24xlarge"], "tensorParallelSize": 4}
    plain = _render({"model": MIXTRAL["model"], "placement": placement})
    args = _container(plain)["command"]
    assert "--tensor-parallel-size=4" in args
    assert not any(a.startswith("--data-parallel-size") for a in args)
    assert "--enable-expert-parallel" not in args
    forced = _render({"model": MIXTRAL["model"], "placement": {**placement, "expertParallel": True}})
    assert "--tensor-parallel-size=4" in _container(forced)["command"]
    assert "--enable-expert-parallel" in _container(forced)["command"]


def test_pod_requests_plan_accelerators_on_the_instance_type_with_taint_tolerations() -> None:
    objs = _render(MIXTRAL)
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "p4de.24xlarge"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["enableServiceLinks"] is False
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_probes_hit_health_and_startup_allows_for_loading_the_weights() -> None:
    container = _container(_render(MIXTRAL))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_hugging_face_token_is_referenced_never_inlined() -> None:
    objs = _render({**MIXTRAL, "credentials": {"huggingFaceToken": {"name": "hf", "key": "tok"}}})
    env = {e["name"]: e for e in _container(objs)["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "tok"}},
    }


def test_serving_options_become_vllm_033_flags() -> None:
    spec = {
        **MIXTRAL,
        "serving": {
            "kvCacheDtype": "fp8",
            "enablePrefixCaching": False,
            "speculative": {"method": "ngram", "numSpeculativeTokens": 5},
        },
        "engine": {"extraArgs": ["--enforce-eager"]},
    }
    args = _container(_render(spec))["command"]
    assert "--kv-cache-dtype=fp8" in args
    assert "--no-enable-prefix-caching" in args
    spec_config = next(a for a in args if a.startswith("--speculative-config="))
    assert json.loads(spec_config.split("=", 1)[1]) == {"method": "ngram", "num_speculative_tokens": 5}
    assert args[-1] == "--enforce-eager"


def test_multi_node_plan_renders_a_leaderworkerset_with_ray_and_a_leader_only_service() -> None:
    objs = _render(
        {
            "model": {"name": "meta-llama/Llama-4-Maverick-17B-128E-Instruct"},
            "placement": {
                "instanceTypes": ["p5.48xlarge"],
                "tensorParallelSize": 8,
                "pipelineParallelSize": 2,
            },
        }
    )
    assert "Deployment" not in objs
    lws = objs["LeaderWorkerSet"]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert lws["metadata"]["name"] == "m-lws"
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2
    leader = template["leaderTemplate"]["spec"]["containers"][0]
    worker = template["workerTemplate"]["spec"]["containers"][0]
    assert "--distributed-executor-backend=ray" in leader["command"][2]
    assert "--pipeline-parallel-size=2" in leader["command"][2]
    assert "worker" in worker["command"][2]
    assert "readinessProbe" in leader
    assert "readinessProbe" not in worker
    assert objs["Service"]["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"


def test_multi_node_dp_renders_headless_followers_without_ray() -> None:
    """DeepSeek-V3 on H100 needs two nodes; with expertParallel the plan spreads DP attention + EP over them
    (vLLM's multi_node_dep recipe; unpinned the planner now prefers MoE TP 16, whose rendering is the next
    test): every node serves its 8 local DP ranks, the followers --headless from rank 8 on."""
    objs = _render(
        {
            "model": {"name": "deepseek-ai/DeepSeek-V3"},
            "placement": {
                "instanceTypes": ["p5.48xlarge"],
                "tensorParallelSize": 1,
                "dataParallelSize": 16,
                "expertParallel": True,
            },
        }
    )
    lws = objs["LeaderWorkerSet"]
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2
    leader = template["leaderTemplate"]["spec"]["containers"][0]["command"]
    worker = template["workerTemplate"]["spec"]["containers"][0]["command"]
    assert leader[:2] == ["vllm", "serve"]
    for flag in (
        "--data-parallel-size=16",
        "--data-parallel-size-local=8",
        "--data-parallel-address=$(LWS_LEADER_ADDRESS)",
        "--data-parallel-rpc-port=29550",
        "--enable-expert-parallel",
        "--enable-eplb",
        "--trust-remote-code",
    ):
        assert flag in leader
    assert not any("ray" in a for a in leader)
    assert worker[:2] == ["/bin/sh", "-c"]
    assert "--headless" in worker[2]
    assert '--data-parallel-start-rank="$((LWS_WORKER_INDEX * 8))"' in worker[2]
    assert '"$LWS_LEADER_ADDRESS"' in worker[2]


def test_dp_without_expert_parallel_renders_data_parallel_flags_and_no_expert_parallel() -> None:
    """`expertParallel: false` with DP 8: vLLM's DP attention with the experts TP-sharded over all 8 ranks
    (MoE TP 8), i.e. `--data-parallel-size=8 --tensor-parallel-size=1` and no `--enable-expert-parallel`."""
    objs = _render(
        {
            "model": {"name": "mistralai/Mixtral-8x7B-Instruct-v0.1"},
            "placement": {"instanceTypes": ["p5.48xlarge"], "dataParallelSize": 8, "expertParallel": False},
        }
    )
    command = _container(objs)["command"]
    assert command[:2] == ["vllm", "serve"]
    assert "--tensor-parallel-size=1" in command
    assert "--data-parallel-size=8" in command
    assert "--enable-expert-parallel" not in command
    assert "--enable-eplb" not in command
    assert not any(a.startswith("--data-parallel-size-local") for a in command)  # one node: no local size
    assert _container(objs)["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_multi_node_dp_without_expert_parallel_keeps_the_multi_node_dp_flags() -> None:
    """DP 16 (MoE TP 16) over two H100 nodes: the same leader/headless-follower DP flags as DP + EP, but no
    --enable-expert-parallel and so no --enable-eplb (EPLB balances whole experts between EP ranks)."""
    objs = _render(
        {
            "model": {"name": "deepseek-ai/DeepSeek-V3"},
            "placement": {
                "instanceTypes": ["p5.48xlarge"],
                "tensorParallelSize": 1,
                "dataParallelSize": 16,
                "expertParallel": False,
            },
        }
    )
    template = objs["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2
    leader = template["leaderTemplate"]["spec"]["containers"][0]["command"]
    worker = template["workerTemplate"]["spec"]["containers"][0]["command"]
    for flag in (
        "--data-parallel-size=16",
        "--data-parallel-size-local=8",
        "--data-parallel-address=$(LWS_LEADER_ADDRESS)",
        "--data-parallel-rpc-port=29550",
    ):
        assert flag in leader
    assert "--enable-expert-parallel" not in leader
    assert "--enable-eplb" not in leader
    assert "--headless" in worker[2]
    assert "--enable-expert-parallel" not in worker[2]


def test_a_target_sets_the_replicas_when_spec_replicas_is_unset() -> None:
    target = {"serving": {"target": {"requestsPerSecond": 50}}}
    plan = plan_placement(_model({**MIXTRAL, **target}).spec, load_catalog())
    assert plan.target_replicas is not None
    assert plan.target_replicas > 1
    assert _render({**MIXTRAL, **target})["Deployment"]["spec"]["replicas"] == plan.target_replicas
    assert _render({**MIXTRAL, **target, "replicas": 1})["Deployment"]["spec"]["replicas"] == 1
    assert "replicas" not in _render(MIXTRAL)["Deployment"]["spec"]


def test_neuron_plan_requests_neuron_devices_and_uses_the_neuron_image() -> None:
    objs = _render({"model": {"name": "openai/gpt-oss-20b"}, "placement": {"accelerator": "neuron"}})
    container = _container(objs)
    assert "aws.amazon.com/neuron" in container["resources"]["requests"]
    assert "pytorch-inference-vllm-neuronx" in container["image"]
    assert any(a.startswith("--additional-config=") for a in container["command"])
    assert not any(a.startswith("--gpu-memory-utilization") for a in container["command"])
    tolerations = objs["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    assert tolerations[0]["key"] == "aws.amazon.com/neuron"


def test_routing_renders_an_httproute_that_rewrites_the_prefix_to_v1() -> None:
    objs = _render(
        {**MIXTRAL, "routing": {"parentRefs": [{"name": "gw", "namespace": "infra"}], "hostnames": ["a.b"]}}
    )
    route = objs["HTTPRoute"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    rule = route["spec"]["rules"][0]
    assert rule["matches"][0]["path"] == {"type": "PathPrefix", "value": "/v1/m"}
    assert rule["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"] == "/v1"
    assert rule["backendRefs"] == [{"name": "m", "port": 8000}]
    assert route["spec"]["parentRefs"][0]["namespace"] == "infra"


def test_alerts_use_vllm_033_metric_names_and_the_spec_thresholds() -> None:
    spec = {
        **MIXTRAL,
        "monitoring": {"alerts": {"p95LatencySeconds": 12, "kvCacheUsagePercent": 80, "waitingRequests": 7}},
    }
    rules = {r["alert"]: r for r in _render(spec)["PrometheusRule"]["spec"]["groups"][0]["rules"]}
    assert "vllm:e2e_request_latency_seconds_bucket" in rules["KubeMoEHighP95Latency"]["expr"]
    assert rules["KubeMoEHighP95Latency"]["expr"].endswith("> 12")
    assert rules["KubeMoEHighP95Latency"]["for"] == "5m"
    assert "vllm:kv_cache_usage_perc" in rules["KubeMoEKVCacheNearlyFull"]["expr"]
    assert rules["KubeMoEKVCacheNearlyFull"]["expr"].endswith("> 0.8")
    assert rules["KubeMoEManyWaitingRequests"]["expr"].endswith("> 7")
    assert "vllm:time_to_first_token_seconds_bucket" in rules["KubeMoEHighTimeToFirstToken"]["expr"]
    assert "KubeMoEModelServerDown" in rules
    assert all("gpu_cache_usage_perc" not in r["expr"] for r in rules.values())


def test_monitoring_switches_drop_their_objects() -> None:
    spec = {**MIXTRAL, "monitoring": {"alerts": {"enabled": False}, "serviceMonitor": {"enabled": False}}}
    assert sorted(_render(spec)) == ["Deployment", "Service"]


def test_unset_replicas_leave_the_count_to_an_autoscaler_and_set_replicas_are_rendered() -> None:
    assert "replicas" not in _render(MIXTRAL)["Deployment"]["spec"]
    assert _render({**MIXTRAL, "replicas": 3})["Deployment"]["spec"]["replicas"] == 3


def test_offline_render_without_uid_has_no_owner_references() -> None:
    objs = _render(MIXTRAL, uid=None)
    assert all("ownerReferences" not in o["metadata"] for o in objs.values())


def test_render_is_deterministic_across_processes() -> None:
    # Same input, different string-hash seeds: set or dict ordering that leaks into the manifests (and so
    # into the drift comparison) would differ between two operator processes.
    text = "\n---\n".join(p.read_text() for p in sorted(SAMPLES.glob("*.yaml")))
    outputs = {
        subprocess.run(
            [str(Path(sys.executable).parent / "kubemoe"), "render", "-f", "-"],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("0", "1", "4242")
    }
    assert len(outputs) == 1
    assert "kind: Deployment" in outputs.pop()


def test_engine_version_older_than_the_rendered_dialect_is_refused() -> None:
    # The API model refuses it first (the CRD's CEL twin); the renderer's own guard still holds for a spec
    # that bypassed validation.
    with pytest.raises(ValidationError, match=r"engine\.version must be a 0\.x release from 0\.10 on"):
        _model({**MIXTRAL, "engine": {"version": "0.6.3"}})
    model = _model(MIXTRAL)
    old = model.model_copy(
        update={"spec": model.spec.model_copy(update={"engine": Engine.model_construct(version="0.6.3")})}
    )
    with pytest.raises(EngineDialectError, match=r"0\.6\.3"):
        render_moemodel(old, plan_placement(old.spec, load_catalog()))


PIPELINE = {
    "metadata": {"name": "moa", "namespace": "ml", "uid": "p-1"},
    "spec": {
        "layers": [
            {
                "agents": [
                    {"name": "a", "moeModelRef": {"name": "mixtral"}},
                    {
                        "name": "b",
                        "endpoint": {
                            "url": "https://x.example/v1",
                            "model": "gpt",
                            "apiKeySecretRef": {"name": "keys", "key": "openai"},
                        },
                    },
                ]
            }
        ],
        "aggregator": {"moeModelRef": {"name": "mixtral"}},
        "routing": {"parentRefs": [{"name": "gw"}]},
        "capacity": {"targetRequestsPerSecond": 2},
    },
}


def test_pipeline_renders_router_configmap_deployment_service_route_rules_and_monitor() -> None:
    objs = {o["kind"]: o for o in render_moapipeline(MoAPipeline.model_validate(PIPELINE))}
    assert sorted(objs) == [
        "ConfigMap",
        "Deployment",
        "HTTPRoute",
        "PrometheusRule",
        "Service",
        "ServiceMonitor",
    ]
    assert objs["HTTPRoute"]["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/v1/moa"
    assert objs["Service"]["metadata"]["name"] == "moa-router"


def test_router_config_resolves_model_refs_and_keeps_api_keys_in_mounted_secrets() -> None:
    objs = {o["kind"]: o for o in render_moapipeline(MoAPipeline.model_validate(PIPELINE))}
    text = objs["ConfigMap"]["data"]["router.yaml"]
    config = RouterConfig.model_validate(yaml.safe_load(text))
    a, b = config.layers[0].agents
    assert a.url == "http://mixtral.ml.svc.cluster.local:8000/v1"
    assert a.model == "mixtral"
    assert b.api_key_file == "/var/run/secrets/kubemoe/keys/openai"
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert {"name": "key-keys", "secret": {"secretName": "keys", "defaultMode": 0o440}} in pod["volumes"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    assert config.limits.max_concurrent_requests >= 1


def test_a_changed_pipeline_changes_the_router_pod_template() -> None:
    first = {o["kind"]: o for o in render_moapipeline(MoAPipeline.model_validate(PIPELINE))}
    changed = json.loads(json.dumps(PIPELINE))
    changed["spec"]["layers"][0]["agents"][0]["temperature"] = 0.1
    second = {o["kind"]: o for o in render_moapipeline(MoAPipeline.model_validate(changed))}
    key = "kubemoe.io/config-hash"
    assert (
        first["Deployment"]["spec"]["template"]["metadata"]["annotations"][key]
        != second["Deployment"]["spec"]["template"]["metadata"]["annotations"][key]
    )


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_sample_renders(sample: Path) -> None:
    docs = load_documents(sample.read_text(), sample.name)
    objects = render_documents(docs, load_catalog())
    assert objects
    assert all({"apiVersion", "kind", "metadata"} <= set(o) for o in objects)


def test_the_router_caps_in_flight_requests_at_its_share_of_the_target_rate() -> None:
    from kubemoe.render.moapipeline import default_limits

    doc = json.loads(json.dumps(PIPELINE))
    doc["spec"]["capacity"] = {"targetRequestsPerSecond": 2}
    doc["spec"]["policy"] = {"layerTimeoutSeconds": 10}
    # One layer + the aggregator: at most 2 x 10 s in the system; 2 req/s x 20 s = 40 in flight in all.
    assert default_limits(MoAPipeline.model_validate(doc)).max_concurrent_requests == 40
    doc["spec"]["replicas"] = 4
    assert default_limits(MoAPipeline.model_validate(doc)).max_concurrent_requests == 10


def test_router_pods_can_read_their_mounted_keys_as_a_non_root_user() -> None:
    """Secret volumes are root-owned 0440: the router (uid 65532) reads its client and upstream keys only
    through the pod's fsGroup (without it the real node's router logged PermissionError and never got
    Ready)."""
    objs = {o["kind"]: o for o in render_moapipeline(MoAPipeline.model_validate(PIPELINE))}
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    modes = [v["secret"]["defaultMode"] for v in pod["volumes"] if "secret" in v]
    assert modes
    assert all(m & 0o040 for m in modes)  # group-readable
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"] == 65532
