"""Engine command lines: vLLM 0.33 on GPUs, vLLM with the Neuron plugin on Trainium.

Every planned figure is passed explicitly (TP, max-model-len, memory utilization, batch sizes), so the
server sizes its KV cache exactly as the plan did instead of falling back to per-hardware defaults.
Flags follow vLLM 0.33 (`vllm/engine/arg_utils.py` in its PyPI wheel): `--speculative-config` JSON (the old
`--speculative-model` is gone) and `--no-enable-*` to turn off what now defaults on.
"""

from __future__ import annotations

import json
import shlex

from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.planner.types import Plan

VLLM_PORT = 8000
DEFAULT_VLLM_VERSION = "0.33.0"
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai"
# The vLLM Neuron plugin (Trn2) ships in the Neuron Deep Learning Container (Neuron SDK 2.32, vLLM 0.24).
# Models it does not implement (Mixtral, DBRX, Qwen3-MoE, Llama 4) and Inf2/Trn1 need the legacy NxD
# Inference path, whose last image is vLLM 0.16 on SDK 2.31.1 (no longer published from SDK 2.32 on).
DEFAULT_NEURON_IMAGE = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx"
_NEURON_TAGS = {
    "vllm-neuron": ("0.24.0", "0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04"),
    "nxdi": ("0.16.0", "0.16.0-neuronx-py312-sdk2.31.1-ubuntu24.04"),
}
# Where the vLLM image keeps the Ray bootstrap script the LeaderWorkerSet example uses.
RAY_BOOTSTRAP = "/vllm-workspace/examples/online_serving/multi-node-serving.sh"
#: The oldest vLLM whose flag dialect this renderer speaks (`--speculative-config`, V1-only flags).
OLDEST_VLLM = (0, 10)
#: vLLM's default --data-parallel-rpc-port (tech-facts §1: arg_utils.py, `-dpp`, 29550), written out so
#: the leader and its followers agree on it.
DP_RPC_PORT = 29550


class EngineDialectError(ValueError):
    """The requested engine version speaks a command-line dialect the renderer does not."""


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def engine_version(spec: MoEModelSpec, plan: Plan) -> str:
    if spec.engine.version:
        return spec.engine.version
    if plan.engine == "vllm":
        return DEFAULT_VLLM_VERSION
    return _NEURON_TAGS.get(plan.neuron_path, _NEURON_TAGS["vllm-neuron"])[0]


def engine_image(spec: MoEModelSpec, plan: Plan) -> str:
    if spec.engine.image:
        return spec.engine.image
    version = engine_version(spec, plan)
    if plan.engine == "vllm":
        return f"{DEFAULT_VLLM_IMAGE}:v{version}"
    default_version, tag = _NEURON_TAGS.get(plan.neuron_path, _NEURON_TAGS["vllm-neuron"])
    return f"{DEFAULT_NEURON_IMAGE}:{tag if version == default_version else version}"


def served_model_name(spec: MoEModelSpec, cr_name: str) -> str:
    return spec.model.served_model_name or cr_name


def serve_args(spec: MoEModelSpec, plan: Plan, *, cr_name: str) -> list[str]:
    """`vllm serve MODEL ...` for this plan, without the multi-node bootstrap."""
    version = engine_version(spec, plan)
    if plan.engine == "vllm" and _version_tuple(version) < OLDEST_VLLM:
        raise EngineDialectError(
            f"spec.engine.version {version} is older than vLLM {OLDEST_VLLM[0]}.{OLDEST_VLLM[1]}, the oldest "
            "command-line dialect kubemoe renders (e.g. --speculative-config); use a newer engine"
        )
    serving = spec.serving
    args = [
        "vllm",
        "serve",
        spec.model.name,
        "--host=0.0.0.0",
        f"--port={VLLM_PORT}",
        f"--served-model-name={served_model_name(spec, cr_name)}",
        f"--tensor-parallel-size={plan.tensor_parallel_size}",
    ]
    if plan.pipeline_parallel_size > 1:
        args.append(f"--pipeline-parallel-size={plan.pipeline_parallel_size}")
    if plan.data_parallel_size > 1:
        args.append(f"--data-parallel-size={plan.data_parallel_size}")
        if plan.multi_node:
            # Multi-node DP (vLLM's multi_node_dep strategy): every node runs `vllm serve` with its local
            # DP ranks; followers add --headless and their start rank (worker_dp_command). The leader's
            # address comes from the LeaderWorkerSet's env (kubelet expands $(VAR) in args).
            args += [
                f"--data-parallel-size-local={plan.data_parallel_size_local}",
                "--data-parallel-address=$(LWS_LEADER_ADDRESS)",
                f"--data-parallel-rpc-port={DP_RPC_PORT}",
            ]
    if plan.expert_parallel and plan.neuron_path != "nxdi":
        args.append("--enable-expert-parallel")
    if plan.enable_eplb and plan.engine == "vllm":
        args.append("--enable-eplb")
    args += [
        f"--max-model-len={plan.max_model_len}",
        f"--max-num-seqs={plan.max_num_seqs}",
        f"--max-num-batched-tokens={plan.max_num_batched_tokens}",
    ]
    if plan.engine == "vllm":
        args.append(f"--gpu-memory-utilization={plan.gpu_memory_utilization}")
        if plan.kv_cache_dtype != "auto":
            args.append(f"--kv-cache-dtype={plan.kv_cache_dtype}")
        if plan.quantization:
            args.append(f"--quantization={plan.quantization}")
    else:
        args.append(f"--additional-config={json.dumps(_neuron_config(plan), separators=(',', ':'))}")
    if spec.model.revision:
        args.append(f"--revision={spec.model.revision}")
    if plan.trust_remote_code:
        args.append("--trust-remote-code")
    if not serving.enable_prefix_caching:
        args.append("--no-enable-prefix-caching")
    if not serving.enable_chunked_prefill:
        args.append("--no-enable-chunked-prefill")
    if serving.speculative is not None:
        sc = serving.speculative
        config: dict[str, object] = {"method": sc.method, "num_speculative_tokens": sc.num_speculative_tokens}
        if sc.model:
            config["model"] = sc.model
        if sc.draft_tensor_parallel_size:
            config["draft_tensor_parallel_size"] = sc.draft_tensor_parallel_size
        args.append(f"--speculative-config={json.dumps(config, separators=(',', ':'), sort_keys=True)}")
    if plan.multi_node and plan.engine == "vllm" and plan.data_parallel_size == 1:
        args.append("--distributed-executor-backend=ray")
    return args + list(spec.engine.extra_args)


def _neuron_config(plan: Plan) -> dict[str, object]:
    """Neuron settings: the plugin reads `neuron_config`; the legacy NxD Inference path `override_neuron_config`.

    Bucket shapes are compiled ahead of time, so they are pinned to the planned batch sizes.
    """
    if plan.neuron_path == "nxdi":
        # NxD Inference shards experts itself: EP ranks take whole experts, the rest of TP splits each one.
        ep = plan.expert_parallel_size or 1
        return {
            "override_neuron_config": {
                "tp_degree": plan.tensor_parallel_size,
                "moe_ep_degree": ep,
                "moe_tp_degree": plan.tensor_parallel_size // ep,
                "max_context_length": plan.max_model_len,
                "seq_len": plan.max_model_len,
                "batch_size": plan.max_num_seqs,
            }
        }
    return {
        "neuron_config": {
            "num_batched_tokens_buckets": [plan.max_num_batched_tokens],
            "num_seqs_buckets": [plan.max_num_seqs],
        }
    }


def leader_command(serve: list[str]) -> list[str]:
    """Leader of a multi-node group: start the Ray head, wait for every worker, then serve."""
    script = f'bash {RAY_BOOTSTRAP} leader --ray_cluster_size="$LWS_GROUP_SIZE" && exec ' + " ".join(
        shlex.quote(a) for a in serve
    )
    return ["/bin/sh", "-c", script]


def worker_command() -> list[str]:
    """Worker of a multi-node group: join the leader's Ray cluster and hold its GPUs for it."""
    return ["/bin/sh", "-c", f'exec bash {RAY_BOOTSTRAP} worker --ray_address="$LWS_LEADER_ADDRESS"']


def multi_node_dp(plan: Plan) -> bool:
    """A replica of DP ranks across nodes: no Ray, one `vllm serve` per node (leader + headless followers)."""
    return plan.multi_node and plan.data_parallel_size > 1


def worker_dp_command(serve: list[str], plan: Plan) -> list[str]:
    """A follower of multi-node DP: the leader's command, headless, starting at its node's first DP rank."""
    start = f'--data-parallel-start-rank="$((LWS_WORKER_INDEX * {plan.data_parallel_size_local}))"'
    # $(LWS_LEADER_ADDRESS) is kubelet syntax; under the shell the same value is $LWS_LEADER_ADDRESS.
    quoted = [shlex.quote(a).replace("$(LWS_LEADER_ADDRESS)", "'\"$LWS_LEADER_ADDRESS\"'") for a in serve]
    return ["/bin/sh", "-c", "exec " + " ".join([*quoted, "--headless", start])]
