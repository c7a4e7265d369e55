"""The memory model's formulas (`planner.memory`), checked against figures worked out by hand."""

from __future__ import annotations

import pytest

from kubemoe.api.moemodel import Architecture
from kubemoe.catalog.loader import Catalog
from kubemoe.planner import memory as mem

KIB = 1024
GIB = 1024**3


def arch(catalog: Catalog, model: str) -> Architecture:
    entry = catalog.find_model(model)
    assert entry is not None, model
    return entry.architecture


# --- KV cache --------------------------------------------------------------------------------------------


def test_mixtral_kv_is_128_kib_per_token_for_the_whole_model_in_bf16(catalog: Catalog) -> None:
    # 32 layers x 2 (K and V) x 8 KV heads x 128 head dim x 2 B = 131072 B = 128 KiB.
    a = arch(catalog, "mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert mem.kv_bytes_per_token_per_rank(a, tp=1, pp=1, kv_dtype_bytes=2) == 128 * KIB


def test_mixtral_kv_at_tp8_is_16_kib_per_token_per_rank(catalog: Catalog) -> None:
    # 8 KV heads / TP 8 = 1 head per rank: 32 x 2 x 1 x 128 x 2 = 16 KiB.
    a = arch(catalog, "mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert mem.kv_bytes_per_token_per_rank(a, tp=8, pp=1, kv_dtype_bytes=2) == 16 * KIB


def test_fp8_kv_cache_halves_the_bytes_per_token(catalog: Catalog) -> None:
    a = arch(catalog, "mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert mem.kv_bytes_per_token_per_rank(a, tp=2, pp=1, kv_dtype_bytes=1) == 32 * KIB


def test_qwen3_235b_at_tp8_keeps_one_kv_head_per_rank_not_zero(catalog: Catalog) -> None:
    # 4 KV heads cannot split 8 ways: vLLM replicates, so each rank holds 1 head (not 4 / 8 = 0.5).
    a = arch(catalog, "Qwen/Qwen3-235B-A22B")
    per_rank = mem.kv_bytes_per_token_per_rank(a, tp=8, pp=1, kv_dtype_bytes=2)
    assert per_rank == 94 * 2 * 1 * 128 * 2 == 48128
    assert per_rank == mem.kv_bytes_per_token_per_rank(a, tp=4, pp=1, kv_dtype_bytes=2)
    assert mem.kv_bytes_per_token_per_rank(a, tp=2, pp=1, kv_dtype_bytes=2) == 2 * per_rank


@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16, 32])
def test_deepseek_mla_kv_is_576_elements_per_layer_at_every_tp(catalog: Catalog, tp: int) -> None:
    # MLA caches one latent of kv_lora_rank 512 + qk_rope_head_dim 64 = 576 elements per layer per token,
    # replicated on every TP rank: 61 x 576 x 2 B = 70272 B whatever the TP.
    a = arch(catalog, "deepseek-ai/DeepSeek-V3")
    assert mem.kv_bytes_per_token_per_rank(a, tp=tp, pp=1, kv_dtype_bytes=2) == 61 * 576 * 2 == 70272
    assert mem.kv_bytes_per_token_per_rank(a, tp=tp, pp=1, kv_dtype_bytes=1) == 61 * 576


def test_gpt_oss_windowed_layers_are_capped_at_the_128_token_window(catalog: Catalog) -> None:
    # gpt-oss-120b: 36 layers, 18 with a 128-token sliding window; 2 x 8 x 64 x 2 = 2048 B per layer-token.
    a = arch(catalog, "openai/gpt-oss-120b")
    per_layer = 2 * 8 * 64 * 2
    for tokens in (100, 128, 4096, 131072):
        expected = per_layer * (18 * tokens + 18 * min(tokens, 128))
        got = mem.kv_bytes_per_sequence_per_rank(a, tokens=tokens, tp=1, pp=1, kv_dtype_bytes=2)
        assert got == expected
    # Past the window only the 18 full layers grow.
    grow = mem.kv_bytes_per_sequence_per_rank(
        a, tokens=2000, tp=1, pp=1, kv_dtype_bytes=2
    ) - mem.kv_bytes_per_sequence_per_rank(a, tokens=1000, tp=1, pp=1, kv_dtype_bytes=2)
    assert grow == per_layer * 18 * 1000


def test_llama_4_chunked_layers_are_capped_at_8192_tokens(catalog: Catalog) -> None:
    # Scout: 12 global layers + 36 chunked (8192) layers; at TP 4 2 x 2 x 128 x 2 = 1024 B per layer-token.
    a = arch(catalog, "meta-llama/Llama-4-Scout-17B-16E-Instruct")
    got = mem.kv_bytes_per_sequence_per_rank(a, tokens=32768, tp=4, pp=1, kv_dtype_bytes=2)
    assert got == 1024 * (12 * 32768 + 36 * 8192)
    assert got == pytest.approx(0.65625 * GIB)


def test_a_model_without_windows_holds_tokens_times_the_per_token_kv(catalog: Catalog) -> None:
    a = arch(catalog, "Qwen/Qwen1.5-72B-Chat")
    per_token = mem.kv_bytes_per_token_per_rank(a, tp=4, pp=1, kv_dtype_bytes=2)
    assert per_token == 80 * 2 * 16 * 128 * 2 == 640 * KIB
    seq = mem.kv_bytes_per_sequence_per_rank(a, tokens=32768, tp=4, pp=1, kv_dtype_bytes=2)
    assert seq == per_token * 32768 == 20 * GIB


def test_pipeline_stages_split_the_kv_of_an_even_layer_count(catalog: Catalog) -> None:
    a = arch(catalog, "mistralai/Mixtral-8x7B-Instruct-v0.1")  # 32 layers: 16 per stage
    assert mem.kv_bytes_per_token_per_rank(a, tp=8, pp=2, kv_dtype_bytes=2) == 8 * KIB
    assert mem.kv_bytes_per_sequence_per_rank(a, tokens=1000, tp=8, pp=2, kv_dtype_bytes=2) == 8 * KIB * 1000


def test_pipeline_kv_of_one_sequence_is_the_heaviest_stages(catalog: Catalog) -> None:
    a = arch(catalog, "deepseek-ai/DeepSeek-V3")
    tokens = 32768
    per_token = mem.kv_bytes_per_token_per_rank(a, tp=8, pp=2, kv_dtype_bytes=2)
    assert per_token == 31 * 1152
    assert mem.kv_bytes_per_sequence_per_rank(a, tokens=tokens, tp=8, pp=2, kv_dtype_bytes=2) == (
        per_token * tokens
    )


# --- weights ---------------------------------------------------------------------------------------------


def test_mixtral_expert_params_come_from_the_shapes(catalog: Catalog) -> None:
    a = arch(catalog, "mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert mem.expert_params_b(a) == pytest.approx(32 * 8 * 3 * 4096 * 14336 / 1e9)  # 45.10B
    split = mem.weight_split(a, None)
    assert split.total_bytes == pytest.approx(46.7e9 * 2)
    assert split.expert_bytes == pytest.approx(45.0972e9 * 2, rel=1e-4)


def test_gpt_oss_120b_checkpoint_is_about_65_gb_mxfp4_experts_plus_bf16_rest(catalog: Catalog) -> None:
    # Experts 36 x 128 x 3 x 2880 x 2880 = 114.66B params x 4.25 bits = 60.91 GB; the other 2.14B in bf16
    # = 4.28 GB: 65.2 GB, the size of the published checkpoint (not 116.8B x 0.5 B = 58 GB).
    a = arch(catalog, "openai/gpt-oss-120b")
    split = mem.weight_split(a, None)
    experts = 36 * 128 * 3 * 2880 * 2880
    assert split.expert_bytes == pytest.approx(experts * 4.25 / 8)
    assert split.other_bytes == pytest.approx((116.8e9 - experts) * 2)
    assert split.total_bytes / 1e9 == pytest.approx(65.19, abs=0.01)
    assert 63e9 < split.total_bytes < 67e9


def test_gpt_oss_20b_checkpoint_is_about_14_gb(catalog: Catalog) -> None:
    a = arch(catalog, "openai/gpt-oss-20b")
    assert mem.weight_split(a, None).total_bytes / 1e9 == pytest.approx(13.73, abs=0.01)


def test_deepseek_native_fp8_weights_are_about_671_gb(catalog: Catalog) -> None:
    a = arch(catalog, "deepseek-ai/DeepSeek-V3")
    split = mem.weight_split(a, None)
    assert split.total_bytes == pytest.approx(671e9)
    # (61 - 3 dense) x 256 x 3 x 7168 x 2048 = 653.91B routed-expert params, 1 B each.
    assert split.expert_bytes == pytest.approx(58 * 256 * 3 * 7168 * 2048)


def test_kimi_k2_native_fp8_weights_are_its_1026_b_params(catalog: Catalog) -> None:
    assert mem.weight_split(arch(catalog, "moonshotai/Kimi-K2-Instruct"), None).total_bytes == pytest.approx(
        1026.2e9
    )


def test_fp8_quantization_halves_bf16_weights(catalog: Catalog) -> None:
    a = arch(catalog, "mistralai/Mixtral-8x7B-Instruct-v0.1")
    bf16 = mem.weight_split(a, None)
    fp8 = mem.weight_split(a, "fp8")
    assert fp8.expert_bytes == pytest.approx(bf16.expert_bytes / 2)
    assert fp8.other_bytes == pytest.approx(bf16.other_bytes / 2)


def test_awq_halves_fp8_and_quarters_bf16(catalog: Catalog) -> None:
    mixtral = arch(catalog, "mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert mem.weight_split(mixtral, "awq").total_bytes == pytest.approx(
        mem.weight_split(mixtral, "fp8").total_bytes / 2
    )
    assert mem.weight_split(mixtral, "awq").total_bytes == pytest.approx(46.7e9 * 0.5)
    deepseek = arch(catalog, "deepseek-ai/DeepSeek-V3")  # native fp8: awq halves it
    assert mem.weight_split(deepseek, "awq").total_bytes == pytest.approx(671e9 / 2)


@pytest.mark.parametrize("quantization", ["gptq", "bitsandbytes"])
def test_4_bit_quantizations_are_half_a_byte_per_param(catalog: Catalog, quantization: str) -> None:
    a = arch(catalog, "Qwen/Qwen3-30B-A3B")
    assert mem.weight_split(a, quantization).total_bytes == pytest.approx(30.5e9 * 0.5)


def test_experts_only_quantizations_leave_the_rest_in_bf16(catalog: Catalog) -> None:
    a = arch(catalog, "mistralai/Mixtral-8x7B-Instruct-v0.1")
    bf16 = mem.weight_split(a, None)
    int8 = mem.weight_split(a, "experts_int8")
    mx = mem.weight_split(a, "mxfp4")
    assert int8.expert_bytes == pytest.approx(bf16.expert_bytes / 2)
    assert mx.expert_bytes == pytest.approx(bf16.expert_bytes * 4.25 / 16)
    assert int8.other_bytes == mx.other_bytes == bf16.other_bytes


def test_compressed_tensors_keeps_the_native_dtype(catalog: Catalog) -> None:
    a = arch(catalog, "deepseek-ai/DeepSeek-V3")
    assert mem.weight_split(a, "compressed-tensors") == mem.weight_split(a, None)


def test_dense_models_have_no_expert_bytes(catalog: Catalog) -> None:
    a = arch(catalog, "meta-llama/Meta-Llama-3-70B-Instruct")
    split = mem.weight_split(a, None)
    assert split.expert_bytes == 0
    assert split.other_bytes == pytest.approx(141.2e9)


def test_weights_per_rank_split_experts_over_ep_and_the_rest_over_tp() -> None:
    split = mem.WeightSplit(expert_bytes=800.0, other_bytes=80.0)
    assert mem.weights_per_rank(split, tp=8, pp=1, expert_split=8) == 110.0
    assert mem.weights_per_rank(split, tp=2, pp=1, expert_split=8) == 140.0  # TP 2 x DP 4 with EP
    assert mem.weights_per_rank(split, tp=8, pp=2, expert_split=8) == 55.0


def test_expert_params_fall_back_to_totals_when_shapes_are_missing() -> None:
    # total = shared + E x e, active = shared + k x e: e = (47 - 13) / (8 - 2) = 5.667B, experts 45.33B.
    a = Architecture.model_validate(
        {
            "totalParamsB": 47,
            "activeParamsB": 13,
            "numLayers": 32,
            "hiddenSize": 4096,
            "numAttentionHeads": 32,
            "numKvHeads": 8,
            "numExperts": 8,
            "expertsPerToken": 2,
        }
    )
    assert mem.expert_params_b(a) == pytest.approx(34 / 6 * 8)


# --- activations -----------------------------------------------------------------------------------------


def _act(a: Architecture, *, tokens: int = 2048, seqs: int = 256, tp: int = 8, split: int = 8) -> float:
    return mem.activation_bytes_per_rank(
        a, batched_tokens=tokens, max_num_seqs=seqs, tp=tp, expert_split=split, dtype_bytes=2
    )


def test_mixtral_activation_peak_by_hand(catalog: Catalog) -> None:
    # 1.5 x 2048 x 2 x (4 x 4096 + 2 x (3 x 14336 / 8 + 4096)) + 256 x 32000 x 4
    a = arch(catalog, "mistralai/Mixtral-8x7B-Instruct-v0.1")
    forward = 2048 * 2 * (4 * 4096 + 2 * (3 * 14336 / 8 + 4096))
    assert _act(a) == pytest.approx(1.5 * forward + 256 * 32000 * 4)
    assert _act(a) / GIB == pytest.approx(0.233, abs=0.001)


def test_activation_grows_with_max_num_batched_tokens(catalog: Catalog) -> None:
    a = arch(catalog, "Qwen/Qwen3-235B-A22B")
    values = [_act(a, tokens=t) for t in (512, 2048, 8192, 16384)]
    assert values == sorted(values)
    assert len(set(values)) == 4
    # The forward part is linear in tokens: doubling tokens doubles (value - logits).
    logits = 256 * a.vocab_size * 4
    assert _act(a, tokens=4096) - logits == pytest.approx(2 * (_act(a, tokens=2048) - logits))


def test_activation_grows_with_hidden_size_and_moe_intermediate(catalog: Catalog) -> None:
    base = arch(catalog, "mistralai/Mixtral-8x7B-Instruct-v0.1")
    wider = base.model_copy(update={"hidden_size": 2 * base.hidden_size})
    fatter = base.model_copy(update={"moe_intermediate_size": 2 * (base.moe_intermediate_size or 0)})
    assert _act(wider) > _act(base)
    assert _act(fatter) > _act(base)


def test_activation_shrinks_with_the_expert_split_and_grows_with_max_num_seqs(catalog: Catalog) -> None:
    a = arch(catalog, "mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert _act(a, tp=1, split=1) > _act(a, tp=2, split=2) > _act(a, tp=8, split=8)
    # fp32 logits: each extra sequence adds vocab x 4 bytes.
    assert _act(a, seqs=257) - _act(a, seqs=256) == pytest.approx(32000 * 4)


def test_dense_activation_uses_four_times_hidden_split_over_tp(catalog: Catalog) -> None:
    a = arch(catalog, "meta-llama/Meta-Llama-3-70B-Instruct")
    h = 8192
    forward = 2048 * 2 * (4 * h + 1 * (3 * 4 * h / 2 + h))
    got = mem.activation_bytes_per_rank(
        a, batched_tokens=2048, max_num_seqs=256, tp=2, expert_split=2, dtype_bytes=2
    )
    assert got == pytest.approx(1.5 * forward + 256 * 128256 * 4)
