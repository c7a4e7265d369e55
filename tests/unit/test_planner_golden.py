"""Golden plans: catalog model + constraints -> the exact layout, each recomputed by hand beside its case.

Conventions of the arithmetic comments (the formulas of `planner.memory`, the figures of the catalog):

* GB = 1e9 bytes, GiB = 2**30 bytes. usable = device MiB x 2**20 x gpuMemoryUtilization (0.90 default);
  a NeuronCore owns its chip's HBM / coresPerDevice (Trn2: 96 GiB / 4 = 24 GiB; Trn1/Inf2: 32 / 2 = 16 GiB).
* experts (B params) = MoE layers x E x 3 x hidden x moeIntermediate; others = total - experts.
  weights/rank = (experts x bpp / (TP x DP) + others x bpp / TP) / PP: experts split over all TP x DP ranks,
  whole under EP (on by default for MoE and TP x DP > 1), TP-sliced without it (vLLM's MoE TP = DP x TP).
* KV/token/layer = 2 x max(1, kvHeads // TP) x headDim x bytes (MLA: (512 + 64) x bytes on every rank);
  one sequence = that x (full layers x len + windowed layers x min(len, window)) / PP.
* overhead/GPU = 0.3 context + 0.5 CUDA graphs (+1.0 NCCL when ranks > 1); 1.0 GiB per NeuronCore.
* activation = 1.5 x tokens x 2 x (4 x hidden + k x (3 x inter / EP + hidden)) + seqs x vocab x 4 (DP without
  EP: the MoE term for the DP ranks' gathered tokens, see the MoE TP cases), with
  (tokens, seqs) = (2048, 256) on A100/A10G/L40S/Neuron, (8192, 1024) on H100/H200, (16384, 1024) on B200.
  It is under 3 GiB in the other cases below, so it is quoted rounded.
* concurrent sequences = floor((usable - weights - activation - overhead) / KV of one sequence).
* cost = $/h of the node x devices used / devices of the node (x nodes).

The memory table below holds the memory model: each case runs on its instance type and asks for the
smallest layout that fits (the "why not the smaller one" of each comment). Which layout and instance the
planner *chooses* under its objective ($ per million tokens within the SLO) is held by the objective table
in test_planner_objective.py, with its own arithmetic. Some comments below still say why a case was the
old $/hour choice; their memory arithmetic is what the assertions check.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubemoe.api.moemodel import MoEModelSpec
from kubemoe.catalog.loader import Catalog
from kubemoe.planner import Plan, PlannerSettings, PlanningError, PlanReason, plan_placement

MIXTRAL_8X7B = "mistralai/Mixtral-8x7B-Instruct-v0.1"
MIXTRAL_8X22B = "mistralai/Mixtral-8x22B-Instruct-v0.1"
DEEPSEEK_V3 = "deepseek-ai/DeepSeek-V3"
QWEN3_235B = "Qwen/Qwen3-235B-A22B"
QWEN3_30B = "Qwen/Qwen3-30B-A3B"
GPT_OSS_20B = "openai/gpt-oss-20b"
GPT_OSS_120B = "openai/gpt-oss-120b"
SCOUT = "meta-llama/Llama-4-Scout-17B-16E-Instruct"
KIMI_K2 = "moonshotai/Kimi-K2-Instruct"
LLAMA3_70B = "meta-llama/Meta-Llama-3-70B-Instruct"
QWEN15_72B = "Qwen/Qwen1.5-72B-Chat"

#: A MoE model that is not in the catalog: 24 layers x 16 experts x 3 x 2048 x 4096 = 9.66B expert params.
CUSTOM_ARCHITECTURE: dict[str, Any] = {
    "totalParamsB": 16.0,
    "activeParamsB": 4.0,
    "numLayers": 24,
    "hiddenSize": 2048,
    "numAttentionHeads": 16,
    "numKvHeads": 4,
    "headDim": 128,
    "numExperts": 16,
    "expertsPerToken": 2,
    "moeIntermediateSize": 4096,
}


def make_spec(
    model: str,
    serving: dict[str, Any] | None = None,
    placement: dict[str, Any] | None = None,
    architecture: dict[str, Any] | None = None,
) -> MoEModelSpec:
    source: dict[str, Any] = {"name": model}
    if architecture is not None:
        source["architecture"] = architecture
    return MoEModelSpec.model_validate(
        {"model": source, "serving": serving or {}, "placement": placement or {}}
    )


def its(**kw: Any) -> dict[str, Any]:
    return kw


GOLDEN = [
    pytest.param(
        MIXTRAL_8X7B,
        {},
        {},
        its(
            instance="inf2.48xlarge",
            tp=8,
            pp=1,
            dp=1,
            ep=0,
            nodes=1,
            devices=4,
            engine="neuronx",
            seqs=4,
            cost=4.3271,
            weights_gib=10.87,
        ),
        # Mixtral-8x7B: experts 32 x 8 x 3 x 4096 x 14336 = 45.10B, others 46.7 - 45.10 = 1.60B; bf16 -> 93.40 GB.
        # Cheapest: inf2 (nxdi allowed on Inf2), 16 GiB per NeuronCore, usable 14.40 GiB. TP 8 = 8 cores =
        # 4 chips: 93.40 / 8 = 11.68 GB = 10.87 GiB/core; 14.40 - 10.87 - 0.23 act - 1.0 = 2.29 GiB KV;
        # KV/seq = 32 x 2 x 1 (8 kv heads / 8) x 128 x 2 x 32768 = 0.5 GiB -> 4 sequences.
        # Cost 12.98127 x 4 / 12 = $4.33/h. Cheaper layouts fail: inf2 TP 4 (2 chips, $2.16) needs
        # 21.75 GiB/core > 14.40; every GPU layout that fits costs more (p4de TP 2 $6.86, p4d TP 4 $10.98).
        # ep 0, MoE TP 8 (was TP 8 + EP 8): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 8 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="mixtral-8x7b-on-inf2-is-tp8-on-four-neuron-chips",
    ),
    pytest.param(
        MIXTRAL_8X7B,
        {},
        {"instanceTypes": ["p4d.24xlarge"]},
        its(instance="p4d.24xlarge", tp=4, pp=1, dp=1, ep=0, nodes=1, devices=4, seqs=11, weights_gib=21.75),
        # A100-40GB: 40536 MiB = 39.59 GiB, usable 35.63 GiB. TP 2: 93.40 / 2 = 46.70 GB = 43.49 GiB > 35.63.
        # TP 4: 23.35 GB = 21.75 GiB; 35.63 - 21.75 - 0.29 act - 1.8 overhead = 11.79 GiB KV;
        # KV/seq = 32 x 2 x 2 (8/4 heads) x 128 x 2 x 32768 = 1 GiB -> 11 sequences; 4 of 8 GPUs ($10.98/h).
        # ep 0, MoE TP 4 (was TP 4 + EP 4): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 4 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="mixtral-8x7b-on-p4d-only-needs-tp4-because-tp2-weights-exceed-an-a100-40gb",
    ),
    pytest.param(
        MIXTRAL_8X22B,
        {"maxModelLen": 65536},
        # DP 1: the TP memory arithmetic below; at the same eight GPUs DP 8 (MoE TP 8) now ranks first by
        # $/M tokens (it holds fewer 64k sequences but more of the 2500-token workload per second).
        {"instanceTypes": ["p5.48xlarge"], "dataParallelSize": 1},
        its(instance="p5.48xlarge", tp=8, pp=1, dp=1, ep=0, nodes=1, devices=8, seqs=20, kv_token=28672),
        # Mixtral-8x22B: experts 56 x 8 x 3 x 6144 x 16384 = 135.29B, others 5.31B; bf16 281.20 GB.
        # H100: 81559 MiB = 79.65 GiB, usable 71.68 GiB. TP 4: 70.30 GB = 65.47 GiB + 1.53 act + 1.8 =
        # 68.80 -> 2.88 GiB left, but one 64k sequence needs 56 x 2 x 2 x 128 x 2 x 65536 = 3.5 GiB: no fit.
        # TP 8: 35.15 GB = 32.74 GiB; 71.68 - 32.74 - 1.25 - 1.8 = 35.90 GiB; KV/token/rank =
        # 56 x 2 x 1 x 128 x 2 = 28672 B; a 64k sequence 1.75 GiB -> floor(20.5) = 20 sequences.
        # ep 0, MoE TP 8 (was TP 8 + EP 8): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 8 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="mixtral-8x22b-at-64k-on-p5-needs-tp8-because-tp4-leaves-no-room-for-one-sequence",
    ),
    pytest.param(
        DEEPSEEK_V3,
        {},
        {"tensorParallelSize": 1, "dataParallelSize": 16},
        its(
            instance="p5.48xlarge",
            tp=1,
            pp=1,
            dp=16,
            ep=16,
            nodes=2,
            devices=8,
            kv_token=70272,
            weights_gib=53.98,
        ),
        # DeepSeek-V3: native FP8, 1 B/param. Experts 58 x 256 x 3 x 7168 x 2048 = 653.91B, others 17.09B.
        # One H100 node holds no layout (TP 8: 83.88 GB = 78.11 GiB > 71.68 usable), and 61 layers allow
        # no even pipeline, so DP attention spans two nodes: each of 16 ranks keeps the 17.09 GB of attention
        # and dense weights and 653.91 / 16 = 40.87 GB of experts: 57.96 GB = 53.98 GiB. MLA KV: one latent of
        # 512 + 64 = 576 x 2 B per layer on every rank: 61 x 1152 = 70272 B/token/rank.
        id="deepseek-v3-on-p5-spans-two-nodes-as-dp16-ep16-because-61-layers-allow-no-even-pipeline",
    ),
    pytest.param(
        MIXTRAL_8X7B,
        {},
        {"instanceTypes": ["p5.48xlarge"], "dataParallelSize": 8, "expertParallel": False},
        its(
            instance="p5.48xlarge",
            tp=1,
            pp=1,
            dp=8,
            ep=0,
            nodes=1,
            devices=8,
            seqs=104,
            kv_token=131072,
            weights_gib=13.49,
            activation_gib=2.02,
            expert_parallel=False,
        ),
        # DP 8 without --enable-expert-parallel: vLLM shards every expert tensor-parallel over all 8 ranks
        # (MoE TP = DP x TP = 8). Experts 45.10B x 2 B = 90.19 GB / 8 = 11.27 GB; the others 1.60B x 2 =
        # 3.21 GB whole on each DP rank (TP 1): 14.48 GB = 13.49 GiB, the same as DP 8 + EP 8.
        # Activation: each rank's MoE layers run all 8 DP ranks' 8192 tokens, gathered, capped at the
        # fused-MoE chunk of 16384: 1.5 x 2 x (8192 x 4 x 4096 + 16384 x 2 x (3 x 14336 / 8 + 4096) +
        # 8192 x 7 x 4096) = 2.04 GB, + 1024 x 32000 x 4 logits = 2.17 GB = 2.02 GiB (EP: 0.93 GiB).
        # KV per rank: 32 x 2 x 8 x 128 x 2 = 131072 B/token, 4 GiB per 32768-token sequence;
        # 71.68 - 13.49 - 2.02 - 1.8 = 54.38 GiB -> 13 per DP rank x 8 = 104.
        id="mixtral-8x7b-dp8-without-ep-holds-experts-as-moe-tp8-slices",
    ),
    pytest.param(
        DEEPSEEK_V3,
        {},
        {"instanceTypes": ["p5en.48xlarge"], "dataParallelSize": 8, "expertParallel": False},
        its(
            instance="p5en.48xlarge",
            tp=1,
            pp=1,
            dp=8,
            ep=0,
            nodes=1,
            devices=8,
            seqs=96,
            kv_token=70272,
            weights_gib=92.04,
            activation_gib=5.2,
            expert_parallel=False,
        ),
        # DeepSeek-V3 FP8: others 17.09 GB on every DP rank + experts 653.91 / 8 = 81.74 GB = 98.83 GB =
        # 92.04 GiB (as with EP 8). Activation with the gathered tokens: 1.5 x 2 x (8192 x 4 x 7168 +
        # 16384 x 8 x (3 x 2048 / 8 + 7168) + 8192 x 7 x 7168) = 5.06 GB + 1024 x 129280 x 4 = 0.53 GB
        # -> 5.20 GiB (EP: 2.60). 126.36 - 92.04 - 5.20 - 1.8 = 27.31 GiB over 2.14 GiB per 32k sequence
        # (61 x 1152 B x 32768) -> 12 per DP rank x 8 = 96, where DP 8 + EP 8 holds 13 x 8 = 104.
        id="deepseek-v3-dp8-moe-tp8-holds-fewer-sequences-than-ep8-for-its-gathered-activations",
    ),
    pytest.param(
        DEEPSEEK_V3,
        {},
        {"tensorParallelSize": 2, "dataParallelSize": 12},
        its(instance="p4de.24xlarge", tp=2, pp=1, dp=12, ep=24, nodes=3, devices=8, weights_gib=66.67),
        # A100 has no FP8 tensor cores (capability table: fp8Checkpoint upcast), so the FP8 checkpoint is
        # counted as BF16: 1342 GB. TP 2 x DP 12 over three p4de nodes: others 34.18 / 2 = 17.09 GB plus
        # experts 1307.82 / 24 = 54.49 GB = 71.58 GB = 66.67 GiB of the 72.00 usable per A100-80GB.
        id="deepseek-v3-fp8-on-a100-is-counted-at-its-bf16-cost-three-p4de-nodes",
    ),
    pytest.param(
        DEEPSEEK_V3,
        {},
        {"instanceTypes": ["p5en.48xlarge"], "tensorParallelSize": 8},
        its(instance="p5en.48xlarge", tp=8, pp=1, dp=1, ep=0, nodes=1, devices=8, seqs=20, kv_token=70272),
        # H200: 143771 MiB = 140.40 GiB, usable 126.36 GiB. TP 4: 167.75 GB = 156.23 GiB > usable.
        # TP 8: 78.11 GiB; 126.36 - 78.11 - 2.60 act (8192 tokens) - 1.8 = 43.84 GiB; KV/token/rank =
        # 61 x 1152 = 70272 B at TP 8 (MLA: same at any TP); a 32768-token sequence 2.14 GiB -> 20.
        # ep 0, MoE TP 8 (was TP 8 + EP 8): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 8 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="deepseek-v3-fits-a-single-h200-node-at-tp8",
    ),
    pytest.param(
        DEEPSEEK_V3,
        {},
        {"strategy": "lowest-latency", "tensorParallelSize": 8},
        its(instance="p6-b200.48xlarge", tp=8, pp=1, dp=1, ep=0, nodes=1, devices=8, seqs=35),
        # lowest-latency ranks nodes first, then active bytes / bandwidth: single-node fits are p5e/p5en TP 8
        # (4800 GB/s) and B200 TP 8 (8000 GB/s) -> B200. 179.06 GiB x 0.9 = 161.16 usable - 78.11 - 4.71 act
        # (16384 tokens) - 1.8 = 76.53 GiB / 2.14 GiB per sequence -> 35. (B200 TP 4: 156.23 + 4.99 + 1.8 >
        # 161.16.)
        # ep 0, MoE TP 8 (was TP 8 + EP 8): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 8 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="deepseek-v3-tp8-on-one-b200-node",
    ),
    pytest.param(
        QWEN3_235B,
        {},
        {"tensorParallelSize": 8},
        its(instance="p4de.24xlarge", tp=8, pp=1, dp=1, ep=0, nodes=1, devices=8, seqs=10, kv_token=48128),
        # Qwen3-235B: experts 94 x 128 x 3 x 4096 x 1536 = 227.10B, others 8.00B; bf16 470.20 GB.
        # p4de TP 4: 117.55 GB = 109.48 GiB > 72. TP 8: 58.77 GB = 54.74 GiB; 72 - 54.74 - 0.45 - 1.8 =
        # 15.01 GiB; 4 KV heads / TP 8 -> max(1, 0) = 1 head per rank: 94 x 2 x 1 x 128 x 2 = 48128 B/token;
        # a sequence 1.47 GiB -> 10. $27.45/h beats p4d TP 8 x PP 2 ($43.92) and p5en TP 4 ($31.65).
        # ep 0, MoE TP 8 (was TP 8 + EP 8): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 8 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="qwen3-235b-on-p4de-at-tp8-has-one-kv-head-per-rank",
    ),
    pytest.param(
        QWEN3_30B,
        {},
        {},
        its(instance="p4de.24xlarge", tp=1, pp=1, dp=1, ep=0, nodes=1, devices=1, seqs=4, cost=3.4309),
        # Qwen3-30B-A3B: 30.5B bf16 = 61.00 GB = 56.81 GiB on one A100-80GB (usable 72): 72 - 56.81 - 0.39
        # - 0.8 (no NCCL at one rank) = 14.00 GiB; KV/seq = 48 x 2 x 4 x 128 x 2 x 32768 = 3 GiB -> 4.
        # One of 8 GPUs: 27.44705 / 8 = $3.43/h. Cheaper single GPUs fail (p4d 35.63, g6e 40.49 usable);
        # next cheapest fits are inf2 TP 8 ($4.33) and g6e.12xlarge TP 2 ($5.25). TP 1 -> expert parallel off.
        id="qwen3-30b-fits-one-a100-80gb-with-expert-parallel-off",
    ),
    pytest.param(
        GPT_OSS_20B,
        {},
        {},
        its(
            instance="g5.12xlarge",
            tp=1,
            pp=1,
            dp=1,
            ep=0,
            nodes=1,
            devices=1,
            seqs=8,
            weights_total_gb=13.73,
        ),
        # gpt-oss-20b: experts 24 x 32 x 3 x 2880 x 2880 = 19.11B x 4.25/8 (MXFP4) = 10.15 GB; the other
        # 1.79B stay bf16 = 3.58 GB; 13.73 GB = 12.79 GiB on one A10G (23028 MiB, usable 20.24):
        # 20.24 - 12.79 - 0.52 - 0.8 = 6.13 GiB. Windowed KV: 12 full layers x 32768 + 12 layers x 128 tokens,
        # x 2 x 8 x 64 x 2 B = 0.75 GiB -> 8. $5.672 / 4 = $1.42/h. Neuron (vllm-neuron) is Trn2 only and
        # Trn2 has no price, so the cheaper inf2 TP 2 ($1.08) is not allowed.
        id="gpt-oss-20b-mxfp4-experts-plus-bf16-rest-fits-one-a10g",
    ),
    pytest.param(
        GPT_OSS_120B,
        {},
        {},
        its(
            instance="p4de.24xlarge",
            tp=1,
            pp=1,
            dp=1,
            ep=0,
            nodes=1,
            devices=1,
            seqs=8,
            weights_total_gb=65.19,
        ),
        # gpt-oss-120b: experts 36 x 128 x 3 x 2880 x 2880 = 114.66B x 0.53125 = 60.91 GB, others 2.14B x 2
        # = 4.28 GB; 65.19 GB = 60.71 GiB on one A100-80GB: 72 - 60.71 - 0.52 - 0.8 = 9.97 GiB; KV/seq =
        # (18 x 32768 + 18 x 128) x 2 x 8 x 64 x 2 = 1.13 GiB -> 8; $3.43/h. (g6e TP 2 $5.25, p4d TP 2 $5.49.)
        id="gpt-oss-120b-fits-one-a100-80gb-as-its-recipe-says",
    ),
    pytest.param(
        GPT_OSS_120B,
        {},
        {"accelerator": "neuron"},
        its(instance="trn2.48xlarge", tp=4, pp=1, dp=1, ep=0, nodes=1, devices=1, engine="neuronx", seqs=17),
        # vllm-neuron runs on Trn2 only. 24 GiB per NeuronCore, usable 21.60. TP 2: 32.60 GB = 30.36 GiB,
        # no. TP 4 (4 cores = 1 chip): 16.30 GB = 15.18 GiB; 21.60 - 15.18 - 0.37 - 1.0 = 5.05 GiB;
        # KV/seq = (18 x 32768 + 18 x 128) x 2 x 2 (8/4) x 64 x 2 = 0.28 GiB -> 17.
        # ep 0, MoE TP 4 (was TP 4 + EP 4): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 4 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="gpt-oss-120b-on-neuron-is-trn2-tp4-counting-neuroncores-one-chip",
    ),
    pytest.param(
        SCOUT,
        {"kvCacheDtype": "fp8"},
        {"accelerator": "gpu"},
        its(instance="p4de.24xlarge", tp=4, pp=1, dp=1, ep=0, nodes=1, devices=4, seqs=58, kv_token=24576),
        # Scout: experts 48 x 16 x 3 x 5120 x 8192 = 96.64B, others 12.36B; bf16 218 GB. p4de TP 4:
        # 54.50 GB = 50.76 GiB; 72 - 50.76 - 0.37 - 1.8 = 19.07 GiB. fp8 KV, 1 B: 2 x 2 x 128 x 1 = 512 B
        # per layer -> 48 x 512 = 24576 B/token/rank; a sequence: 12 global layers x 32768 + 36 chunked
        # layers x 8192 = 688128 token-layers x 512 = 0.33 GiB -> 58. $13.72/h; TP 2 needs 101.51 GiB;
        # p5en TP 2 costs $15.82, p4d TP 8 $21.96.
        # ep 0, MoE TP 4 (was TP 4 + EP 4): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 4 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="llama-4-scout-with-fp8-kv-cache-holds-58-sequences-on-half-a-p4de",
    ),
    pytest.param(
        SCOUT,
        {},
        {"accelerator": "gpu"},
        its(instance="p4de.24xlarge", tp=4, pp=1, dp=1, ep=0, nodes=1, devices=4, seqs=29, kv_token=49152),
        # Same layout with bf16 KV: 1024 B per layer, 0.66 GiB per sequence -> floor(19.07 / 0.656) = 29,
        # half the fp8 count.
        # ep 0, MoE TP 4 (was TP 4 + EP 4): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 4 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="llama-4-scout-with-auto-kv-cache-holds-half-as-many-sequences",
    ),
    pytest.param(
        KIMI_K2,
        {},
        {"tensorParallelSize": 4, "dataParallelSize": 8},
        its(instance="p4de.24xlarge", tp=4, pp=1, dp=8, ep=32, nodes=4, devices=8, weights_gib=64.42),
        # Kimi-K2: native FP8 1026.2B params, upcast to BF16 on A100: 2052.4 GB. Experts 60 x 384 x 3 x 7168
        # x 2048 = 1014.69B, others 11.51B. TP 4 x DP 8 (four nodes): 23.02 / 4 + 2029.37 / 32 = 5.76 + 63.42
        # = 69.17 GB = 64.42 GiB per GPU.
        id="kimi-k2-fp8-on-a100-at-bf16-cost-needs-four-p4de-nodes",
    ),
    pytest.param(
        LLAMA3_70B,
        {},
        {},
        its(
            instance="p4de.24xlarge",
            tp=2,
            pp=1,
            dp=1,
            ep=0,
            nodes=1,
            devices=2,
            seqs=3,
            expert_parallel=False,
        ),
        # Dense 70.6B bf16 = 141.2 GB; maxModelLen = context 8192. p4de TP 2: 70.60 GB = 65.75 GiB;
        # 72 - 65.75 - 0.64 - 1.8 = 3.81 GiB; KV/seq = 80 x 2 x 4 x 128 x 2 x 8192 = 1.25 GiB -> 3.
        # $6.86/h. (g6e.12xlarge TP 4 $10.49; p4d TP 4 leaves 0.45 GiB < 0.625 GiB per sequence.)
        # No experts: expert parallel off, size 0.
        id="llama-3-70b-dense-has-expert-parallel-off-and-size-zero",
    ),
    pytest.param(
        QWEN15_72B,
        {},
        {},
        its(instance="p4de.24xlarge", tp=4, pp=1, dp=1, ep=0, nodes=1, devices=4, seqs=1, kv_token=655360),
        # Full MHA, 64 KV heads: KV/token/rank at TP 4 = 80 x 2 x 16 x 128 x 2 = 655360 B (640 KiB); one
        # 32768-token sequence 20 GiB. TP 2: 67.33 GiB weights leave 2.20 GiB < 40 GiB for a sequence.
        # TP 4: 36.15 GB = 33.67 GiB; 72 - 33.67 - 0.52 - 1.8 = 36.01 GiB -> 1 sequence. $13.72/h.
        id="qwen1.5-72b-mha-kv-cache-is-so-large-only-one-sequence-fits",
    ),
    pytest.param(
        LLAMA3_70B,
        {},
        {"accelerator": "neuron"},
        its(
            instance="trn2.48xlarge",
            tp=8,
            pp=1,
            dp=1,
            ep=0,
            nodes=1,
            devices=2,
            engine="neuronx",
            seqs=11,
            cost=None,
        ),
        # vllm-neuron: Trn2 only. TP 4: 35.30 GB = 32.88 GiB > 21.60 usable per core. TP 8 = 8 NeuronCores
        # = 2 chips: 17.65 GB = 16.44 GiB; 21.60 - 16.44 - 0.43 - 1.0 = 3.74 GiB; KV/seq = 80 x 2 x 1 x 128
        # x 2 x 8192 = 0.3125 GiB -> 11. No on-demand price.
        id="llama-3-70b-on-neuron-is-trn2-tp8-on-two-chips-with-neuronx",
    ),
    pytest.param(
        MIXTRAL_8X7B,
        {},
        {"instanceTypes": ["trn2.48xlarge"]},
        its(instance="trn2.48xlarge", tp=8, pp=1, dp=1, ep=0, nodes=1, devices=2, engine="neuronx", seqs=18),
        # TP 4 (one chip): 23.35 GB = 21.75 GiB > 21.60 usable. TP 8 = 2 chips: 10.87 GiB;
        # 21.60 - 10.87 - 0.23 - 1.0 = 9.49 GiB / 0.5 GiB per sequence -> 18.
        # ep 0, MoE TP 8 (was TP 8 + EP 8): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 8 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="mixtral-8x7b-on-trn2-takes-eight-neuroncores-on-two-chips",
    ),
    pytest.param(
        MIXTRAL_8X7B,
        {},
        {"strategy": "fewest-accelerators"},
        its(instance="p5en.48xlarge", tp=1, pp=1, dp=1, ep=0, nodes=1, devices=1, seqs=8),
        # One GPU holds 93.40 GB = 86.99 GiB only with >= 96.7 GiB usable: H200 (126.36) or B200 (161.16).
        # Among 1-device plans the cost breaks the tie: p5en $63.296 / 8 = $7.91 < B200 $14.24 < p5e (no
        # price). H200: 126.36 - 86.99 - 2.65 - 0.8 = 35.92 GiB / 4 GiB per sequence -> 8.
        id="mixtral-8x7b-fewest-accelerators-is-one-h200",
    ),
    pytest.param(
        MIXTRAL_8X7B,
        {},
        {"strategy": "lowest-latency", "tensorParallelSize": 8},
        its(instance="p6-b200.48xlarge", tp=8, pp=1, dp=1, ep=0, nodes=1, devices=8),
        # Every layout is one node; the fastest streams the fewest active bytes per bandwidth:
        # B200 TP 8: (3.21 / 8 + 90.19 x 2/8 / 8) GB / 8000 GB/s beats every H100/H200/Trn2 layout.
        # ep 0, MoE TP 8 (was TP 8 + EP 8): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 8 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="mixtral-8x7b-tp8-on-b200",
    ),
    pytest.param(
        MIXTRAL_8X7B,
        {},
        {"instanceTypes": ["p5e.48xlarge", "trn2.48xlarge"]},
        its(instance="p5e.48xlarge", tp=1, pp=1, dp=1, ep=0, nodes=1, devices=1, cost=None),
        # Neither has an on-demand price: `cheapest` ties and falls to fewer accelerators: p5e TP 1 (1 H200)
        # beats trn2 TP 8 (2 chips; TP 4 on 1 chip needs 21.75 GiB > 21.60).
        id="cheapest-ties-between-unpriced-instances-go-to-fewer-accelerators",
    ),
    pytest.param(
        MIXTRAL_8X7B,
        {"quantization": "fp8"},
        {"instanceTypes": ["p4d.24xlarge"]},
        its(
            instance="p4d.24xlarge", tp=2, pp=1, dp=1, ep=0, nodes=1, devices=2, seqs=5, weights_total_gb=46.7
        ),
        # fp8 halves the bf16 weights: 46.70 GB. TP 1: 43.49 GiB > 35.63. TP 2: 21.75 GiB;
        # 35.63 - 21.75 - 0.42 - 1.8 = 11.66 GiB / 2 GiB per sequence (TP 2: 4 KV heads) -> 5.
        # ep 0, MoE TP 2 (was TP 2 + EP 2): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 2 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="mixtral-8x7b-quantized-to-fp8-fits-the-guides-tp2-on-p4d",
    ),
    pytest.param(
        MIXTRAL_8X7B,
        {"quantization": "awq"},
        {"instanceTypes": ["g5.12xlarge"]},
        its(
            instance="g5.12xlarge", tp=2, pp=1, dp=1, ep=0, nodes=1, devices=2, seqs=3, weights_total_gb=23.35
        ),
        # awq: 0.5 B/param -> 23.35 GB. TP 1: 21.75 GiB > 20.24 usable on an A10G. TP 2: 10.87 GiB;
        # 20.24 - 10.87 - 0.42 - 1.8 = 7.15 GiB / 2 GiB -> 3; $5.672 / 2 = $2.84/h.
        # ep 0, MoE TP 2 (was TP 2 + EP 2): DP 1 now tries both expert modes; they hold the same bytes
        # per rank (experts / 2 either way) and MoE TP, vLLM's default, has no EP load imbalance.
        id="mixtral-8x7b-awq-fits-two-a10g",
    ),
    pytest.param(
        "acme/moe-16x2b",
        {},
        {},
        its(
            instance="g6e.12xlarge", tp=1, pp=1, dp=1, ep=0, nodes=1, devices=1, seqs=6, weights_total_gb=32.0
        ),
        # Custom architecture (not in the catalog; Neuron support "none"): 16B bf16 = 32 GB = 29.80 GiB.
        # Single GPUs: g5 (20.24 usable) too small; L40S 40.49 - 29.80 - 0.24 - 0.8 = 9.65 GiB / (24 x 2 x 4
        # x 128 x 2 x 32768 = 1.5 GiB) -> 6 at $10.49264 / 4 = $2.62/h; p4d TP 1 $2.74, g5 TP 2 $2.84.
        id="a-custom-architecture-not-in-the-catalog-plans-fine",
    ),
]


#: The memory table checks the memory model, not the objective: each case runs on its instance type with
#: the strategy `fewest-accelerators` (the smallest layout that fits, which is what each case's arithmetic
#: argues), a latency target no layout misses and a minimum concurrency of one full-length sequence.
MEMORY_ONLY_SLO = {"slo": {"timePerOutputTokenMs": 60000, "timeToFirstTokenP95Seconds": 3600}}
MEMORY_ONLY_SETTINGS = PlannerSettings(min_concurrency=1)


@pytest.mark.parametrize(("model", "serving", "placement", "expected"), GOLDEN)
def test_golden_memory_of_the_smallest_fitting_layout(
    catalog: Catalog,
    model: str,
    serving: dict[str, Any],
    placement: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    architecture = CUSTOM_ARCHITECTURE if catalog.find_model(model) is None else None
    placement = {"instanceTypes": [expected["instance"]], **placement, "strategy": "fewest-accelerators"}
    spec = make_spec(model, {**serving, **MEMORY_ONLY_SLO}, placement, architecture)
    plan = plan_placement(spec, catalog, MEMORY_ONLY_SETTINGS)
    got = {
        "instance": plan.instance_type,
        "tp": plan.tensor_parallel_size,
        "pp": plan.pipeline_parallel_size,
        "dp": plan.data_parallel_size,
        "ep": plan.expert_parallel_size,
        "nodes": plan.nodes,
        "devices": plan.devices_per_node,
    }
    want = {k: expected[k] for k in got}
    assert got == want
    assert plan.engine == expected.get("engine", "vllm")
    if "seqs" in expected:
        assert plan.concurrent_sequences == expected["seqs"]
    if "kv_token" in expected:
        assert plan.kv_bytes_per_token_per_rank == pytest.approx(expected["kv_token"])
    if "weights_gib" in expected:
        assert plan.memory.weights_gib == pytest.approx(expected["weights_gib"], abs=0.01)
    if "activation_gib" in expected:
        assert plan.memory.activation_gib == pytest.approx(expected["activation_gib"], abs=0.01)
    if "weights_total_gb" in expected:
        assert plan.weights_total_gb == pytest.approx(expected["weights_total_gb"], abs=0.01)
    if "cost" in expected:
        if expected["cost"] is None:
            assert plan.cost_per_hour is None
        else:
            assert plan.cost_per_hour == pytest.approx(expected["cost"], abs=1e-3)
    if "expert_parallel" in expected:
        assert plan.expert_parallel is expected["expert_parallel"]
    if architecture is not None:
        assert any("not in the catalog" in n for n in plan.notes)


# --- errors -------------------------------------------------------------------------------------------------

ERRORS = [
    pytest.param(
        MIXTRAL_8X7B,
        {},
        {"instanceTypes": ["p4d.24xlarge"], "tensorParallelSize": 2},
        PlanReason.INSUFFICIENT_MEMORY,
        ["46.7 GB", "A100-40GB", "TP 8 (MoE TP 8) on p4d.24xlarge"],
        # The widely-copied guide: 93.40 GB / 2 = 46.70 GB (43.49 GiB) per GPU > 35.63 GiB usable of a
        # 40536 MiB A100; the planner's own choice on p4d is TP 8 (MoE TP 8), vLLM's plain TP on all 8 GPUs
        # ($21.96/h): 10.87 GiB of weights and 22.72 GiB of KV per rank, 5219 tok/s at 256 sequences (A100's
        # maxNumSeqs) within TPOT 50 ms, $1.169/M tokens. TP 4 (MoE TP 4) on 4 GPUs ($10.98/h, 21.75 GiB of
        # weights and 11.79 of KV per rank) holds only 106 sequences within TPOT 50 ms, $1.431/M: A100's
        # 2048-token step budget gives a waiting prompt a 1942-token chunk, a compute-bound step that four
        # A100s take twice as long over as eight. TP 4 + EP 4 has TP 4's memory but its busiest EP rank takes
        # epExpertImbalance[4] = 1.77x the mean expert time: 68 sequences, $2.233/M.
        # (Before prompts were scheduled whole, TP 4 (MoE TP 4) won at $1.107/M; before DP 1 tried MoE TP
        # it planned TP 4 + EP 4 only, and DP 8 (MoE TP 8) won.)
        id="the-guides-mixtral-8x7b-bf16-tp2-on-p4d-is-insufficient-memory-and-names-the-choice",
    ),
    pytest.param(
        "nobody/unknown-moe",
        {},
        {},
        PlanReason.UNKNOWN_MODEL,
        ["not in the catalog", "architecture"],
        id="an-unknown-model-without-architecture-is-unknown-model",
    ),
    pytest.param(
        MIXTRAL_8X7B,
        {},
        {"instanceTypes": ["p9.96xlarge"]},
        PlanReason.UNKNOWN_INSTANCE_TYPE,
        ["p9.96xlarge", "unknown instance type"],
        id="an-unknown-instance-type-is-unknown-instance-type",
    ),
    pytest.param(
        MIXTRAL_8X7B,
        {"maxModelLen": 65536},
        {},
        PlanReason.INVALID_SERVING,
        ["65536", "32768"],
        id="max-model-len-above-the-models-context-is-invalid-serving",
    ),
    pytest.param(
        MIXTRAL_8X22B,
        {},
        {"instanceTypes": ["trn2.48xlarge"], "tensorParallelSize": 32},
        PlanReason.INVALID_PARALLELISM,
        ["TP 32 does not divide the 48 attention heads", "TP 16", "on trn2.48xlarge"],
        # 48 % 32 = 16; TP 16 divides 48 and fits: 281.2 / 16 = 17.58 GB = 16.37 GiB < 21.60 per core.
        id="a-tp-that-does-not-divide-the-attention-heads-is-invalid-parallelism",
    ),
    pytest.param(
        MIXTRAL_8X7B,
        {},
        {"instanceTypes": ["p4d.24xlarge"], "tensorParallelSize": 16},
        PlanReason.INVALID_PARALLELISM,
        ["exceeds the 8 GPUs", "TP 8 (MoE TP 8) on p4d.24xlarge"],  # the choice above (TP 8, MoE TP 8)
        id="a-tp-larger-than-a-node-is-invalid-parallelism",
    ),
    pytest.param(
        LLAMA3_70B,
        {},
        {"expertParallel": True},
        PlanReason.INVALID_PARALLELISM,
        ["expertParallel", "no experts"],
        id="expert-parallel-true-on-a-dense-model-is-invalid-parallelism",
    ),
    pytest.param(
        QWEN15_72B,
        {},
        {"accelerator": "neuron"},
        PlanReason.NO_MATCHING_INSTANCE,
        ["no Neuron support", "trn2.48xlarge"],
        id="a-model-without-neuron-support-asked-for-neuron-is-no-matching-instance",
    ),
    pytest.param(
        DEEPSEEK_V3,
        {},
        {"instanceTypes": ["g5.12xlarge"]},
        PlanReason.INSUFFICIENT_MEMORY,
        ["no layout", "A10G"],
        # 4 A10G per node x 4 nodes = 16 x 20.24 GiB = 324 GiB usable < 671 GB = 625 GiB of weights.
        id="deepseek-v3-on-four-a10g-nodes-is-insufficient-memory",
    ),
]


@pytest.mark.parametrize(("model", "serving", "placement", "reason", "words"), ERRORS)
def test_planning_error(
    catalog: Catalog,
    model: str,
    serving: dict[str, Any],
    placement: dict[str, Any],
    reason: PlanReason,
    words: list[str],
) -> None:
    with pytest.raises(PlanningError) as info:
        plan_placement(make_spec(model, serving, placement), catalog)
    assert info.value.reason == reason
    for word in words:
        assert word in info.value.message


def test_an_explicit_tp_that_fits_is_kept_not_replaced(catalog: Catalog) -> None:
    """The guide's layout is rejected, not silently changed; a fitting explicit TP is used as written."""
    plan: Plan = plan_placement(
        make_spec(MIXTRAL_8X7B, placement={"instanceTypes": ["p4d.24xlarge"], "tensorParallelSize": 8}),
        catalog,
    )
    assert (plan.tensor_parallel_size, plan.devices_per_node) == (8, 8)


def test_llama_4_scout_on_trn2_finds_the_in_node_pipeline_that_fits(catalog: Catalog) -> None:
    # TP 8 needs 218 / 8 = 27.25 GB = 25.38 GiB per NeuronCore > 21.60 usable; TP 16/32/64 do not divide
    # 40 heads. TP 8 x PP 2 (16 cores = 4 chips, one node): 12.69 GiB + 0.36 + 1.0 -> 7.55 GiB KV, fits.
    explicit = plan_placement(
        make_spec(
            SCOUT,
            placement={
                "instanceTypes": ["trn2.48xlarge"],
                "tensorParallelSize": 8,
                "pipelineParallelSize": 2,
            },
        ),
        catalog,
    )
    assert explicit.nodes == 1
    assert explicit.concurrent_sequences >= 1
    plan = plan_placement(make_spec(SCOUT, placement={"instanceTypes": ["trn2.48xlarge"]}), catalog)
    assert plan.nodes == 1


#: Phi-3-medium's shape (dense, 40 query heads, 10 KV heads), given as a custom architecture.
PHI3_MEDIUM: dict[str, Any] = {
    "totalParamsB": 14.0,
    "numLayers": 40,
    "hiddenSize": 5120,
    "numAttentionHeads": 40,
    "numKvHeads": 10,
    "headDim": 128,
    "maxContext": 4096,
}


def test_a_tp_that_neither_divides_nor_is_a_multiple_of_the_kv_heads_is_rejected(catalog: Catalog) -> None:
    spec = make_spec(
        "microsoft/Phi-3-medium-4k-instruct",
        placement={"instanceTypes": ["p4d.24xlarge"], "tensorParallelSize": 8},
        architecture=PHI3_MEDIUM,
    )
    with pytest.raises(PlanningError) as info:
        plan_placement(spec, catalog)
    assert info.value.reason == PlanReason.INVALID_PARALLELISM
    assert info.value.message == (
        "the explicit tensorParallelSize=8 does not fit: TP 8 neither divides nor is a multiple of the 10 KV "
        "heads; a plan that fits: TP 2 on p4d.24xlarge (remove the explicit parallelism to let the planner choose)"
    )
