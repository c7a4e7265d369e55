"""The shipped catalog tables: they load, hold what the planner relies on, and the override path works."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubemoe.catalog.loader import Catalog, CatalogError, load_catalog
from kubemoe.catalog.schema import InstanceEntry, ModelEntry

REQUIRED_MODELS = [
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "mistralai/Mixtral-8x22B-Instruct-v0.1",
    "deepseek-ai/DeepSeek-V3",
    "deepseek-ai/DeepSeek-R1",
    "deepseek-ai/DeepSeek-V2-Lite",
    "Qwen/Qwen3-30B-A3B",
    "Qwen/Qwen3-235B-A22B",
    "Qwen/Qwen1.5-MoE-A2.7B",
    "databricks/dbrx-instruct",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-120b",
    "meta-llama/Llama-4-Scout-17B-16E-Instruct",
    "meta-llama/Llama-4-Maverick-17B-128E-Instruct",
    "allenai/OLMoE-1B-7B-0924",
    "microsoft/Phi-3.5-MoE-instruct",
    "moonshotai/Kimi-K2-Instruct",
    "meta-llama/Meta-Llama-3-70B-Instruct",
    "Qwen/Qwen1.5-72B-Chat",
]

REQUIRED_INSTANCES = [
    "p4d.24xlarge",
    "p4de.24xlarge",
    "p5.48xlarge",
    "p5e.48xlarge",
    "p5en.48xlarge",
    "p6-b200.48xlarge",
    "g5.12xlarge",
    "g5.48xlarge",
    "g6e.12xlarge",
    "g6e.48xlarge",
    "trn1.32xlarge",
    "trn2.48xlarge",
    "inf2.48xlarge",
]

MLA_FAMILIES = {"deepseek_v2", "deepseek_v3", "kimi_k2"}


def _models(catalog: Catalog) -> list[ModelEntry]:
    return list(catalog.models.values())


def _instances(catalog: Catalog) -> list[InstanceEntry]:
    return list(catalog.instances.values())


# --------------------------------------------------------------------------------------------- presence


@pytest.mark.parametrize("model_id", REQUIRED_MODELS)
def test_required_model_present(catalog: Catalog, model_id: str) -> None:
    entry = catalog.find_model(model_id)
    assert entry is not None, model_id
    assert entry.id == model_id


def test_instance_table_is_exactly_the_required_set(catalog: Catalog) -> None:
    assert sorted(catalog.instances) == sorted(REQUIRED_INSTANCES)


@pytest.mark.parametrize(
    ("alias", "model_id"),
    [
        ("mixtral-8x22b-instruct", "mistralai/Mixtral-8x22B-Instruct-v0.1"),
        ("MIXTRAL-8X7B-INSTRUCT", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
        ("mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
        ("deepseek-v3", "deepseek-ai/DeepSeek-V3"),
        ("deepseek-r1", "deepseek-ai/DeepSeek-R1"),
        ("gpt-oss-120b", "openai/gpt-oss-120b"),
        ("kimi-k2", "moonshotai/Kimi-K2-Instruct"),
        ("qwen/qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B"),
    ],
)
def test_find_model_by_alias(catalog: Catalog, alias: str, model_id: str) -> None:
    entry = catalog.find_model(alias)
    assert entry is not None
    assert entry.id == model_id


def test_unknown_model_is_none(catalog: Catalog) -> None:
    assert catalog.find_model("nobody/NoSuchModel") is None


# --------------------------------------------------------------------------------------- model figures


@pytest.mark.parametrize(
    ("model_id", "field", "expected"),
    [
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "num_layers", 32),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "num_kv_heads", 8),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "num_experts", 8),
        ("mistralai/Mixtral-8x22B-Instruct-v0.1", "num_layers", 56),
        ("mistralai/Mixtral-8x22B-Instruct-v0.1", "max_context", 65536),
        ("deepseek-ai/DeepSeek-V3", "total_params_b", 671),
        ("deepseek-ai/DeepSeek-V3", "kv_lora_rank", 512),
        ("deepseek-ai/DeepSeek-V3", "qk_rope_head_dim", 64),
        ("deepseek-ai/DeepSeek-V3", "num_experts", 256),
        ("deepseek-ai/DeepSeek-V3", "native_dtype", "fp8"),
        ("deepseek-ai/DeepSeek-R1", "native_dtype", "fp8"),
        ("moonshotai/Kimi-K2-Instruct", "native_dtype", "fp8"),
        ("moonshotai/Kimi-K2-Instruct", "num_experts", 384),
        ("Qwen/Qwen3-30B-A3B", "max_context", 40960),
        ("Qwen/Qwen3-235B-A22B", "num_kv_heads", 4),
        ("Qwen/Qwen3-235B-A22B", "num_layers", 94),
        ("openai/gpt-oss-20b", "native_dtype", "mxfp4"),
        ("openai/gpt-oss-120b", "native_dtype", "mxfp4"),
        ("openai/gpt-oss-120b", "total_params_b", 116.8),
        ("openai/gpt-oss-120b", "sliding_window", 128),
        ("openai/gpt-oss-120b", "sliding_window_layers", 18),
        ("openai/gpt-oss-20b", "sliding_window_layers", 12),
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "sliding_window", 8192),
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "sliding_window_layers", 36),
        ("meta-llama/Meta-Llama-3-70B-Instruct", "num_experts", 0),
        ("Qwen/Qwen1.5-72B-Chat", "num_kv_heads", 64),
    ],
)
def test_model_figure(catalog: Catalog, model_id: str, field: str, expected: object) -> None:
    entry = catalog.find_model(model_id)
    assert entry is not None
    assert getattr(entry.architecture, field) == expected


@pytest.mark.parametrize(
    ("model_id", "vram_gb", "quantization"),
    [
        ("deepseek-ai/DeepSeek-V3", 805, "fp8"),
        ("deepseek-ai/DeepSeek-R1", 805, "fp8"),
        ("Qwen/Qwen3-235B-A22B", 564, "bf16"),
        ("Qwen/Qwen3-30B-A3B", 74, "bf16"),
        ("moonshotai/Kimi-K2-Instruct", 1200, "fp8"),
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", 262, "bf16"),
        ("openai/gpt-oss-120b", 96, "mxfp4"),
        ("openai/gpt-oss-20b", 16, "mxfp4"),
    ],
)
def test_recipe_figure(catalog: Catalog, model_id: str, vram_gb: float, quantization: str) -> None:
    entry = catalog.find_model(model_id)
    assert entry is not None
    assert entry.recipe is not None
    assert entry.recipe.vram_minimum_gb == vram_gb
    assert entry.recipe.quantization == quantization
    assert "vllm-project/recipes" in entry.recipe.source


@pytest.mark.parametrize(
    ("model_id", "neuron"),
    [
        ("openai/gpt-oss-20b", "vllm-neuron"),
        ("openai/gpt-oss-120b", "vllm-neuron"),
        ("meta-llama/Meta-Llama-3-70B-Instruct", "vllm-neuron"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "nxdi"),
        ("databricks/dbrx-instruct", "nxdi"),
        ("Qwen/Qwen3-235B-A22B", "nxdi"),
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "nxdi"),
        ("deepseek-ai/DeepSeek-V3", "none"),
        ("moonshotai/Kimi-K2-Instruct", "none"),
    ],
)
def test_neuron_support(catalog: Catalog, model_id: str, neuron: str) -> None:
    entry = catalog.find_model(model_id)
    assert entry is not None
    assert entry.neuron == neuron


@pytest.mark.parametrize(
    "model_id", ["deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-R1", "moonshotai/Kimi-K2-Instruct"]
)
def test_trust_remote_code_where_recipes_need_it(catalog: Catalog, model_id: str) -> None:
    entry = catalog.find_model(model_id)
    assert entry is not None
    assert entry.trust_remote_code


# ---------------------------------------------------------------------------- model table consistency


def test_every_model_is_sourced_and_consistent(catalog: Catalog) -> None:
    problems: list[str] = []
    field_names = set(ModelEntry.model_fields) | set(type(_models(catalog)[0].architecture).model_fields)
    for m in _models(catalog):
        a = m.architecture
        if len(m.source.strip()) < 20:
            problems.append(f"{m.id}: source too thin")
        if a.num_attention_heads % a.num_kv_heads:
            problems.append(f"{m.id}: heads not a multiple of KV heads")
        active = a.active_params_b or a.total_params_b
        if not 0 < active <= a.total_params_b:
            problems.append(f"{m.id}: active {active} vs total {a.total_params_b}")
        # q projection width within a factor of 2 of the hidden size (gpt-oss: 64 x 64 = 4096 vs 2880).
        q_width = a.resolved_head_dim * a.num_attention_heads
        if not 0.5 <= q_width / a.hidden_size <= 2.5:
            problems.append(f"{m.id}: headDim x heads = {q_width} vs hidden {a.hidden_size}")
        if a.is_moe:
            if not 0 < a.experts_per_token <= a.num_experts:
                problems.append(f"{m.id}: top-k {a.experts_per_token} of {a.num_experts}")
            if a.moe_intermediate_size is None:
                problems.append(f"{m.id}: MoE without moeIntermediateSize")
            if active >= a.total_params_b:
                problems.append(f"{m.id}: MoE with active == total")
        elif a.active_params_b not in (None, a.total_params_b):
            problems.append(f"{m.id}: dense model with active != total")
        if a.is_mla != (m.family in MLA_FAMILIES):
            problems.append(f"{m.id}: MLA fields on family {m.family}")
        if a.sliding_window_layers and a.sliding_window_layers >= a.num_layers:
            problems.append(f"{m.id}: every layer windowed")
        if m.recipe is not None and not m.recipe.source:
            problems.append(f"{m.id}: recipe without source")
        unknown = {f for f in m.unverified if _snake(f) not in field_names}
        if unknown:
            problems.append(f"{m.id}: unverified names unknown fields {sorted(unknown)}")
    assert not problems, "\n".join(problems)


def test_model_weights_size_plausibly(catalog: Catalog) -> None:
    # totalParamsB sizes the weights: a recipe's minimum memory must at least hold params x bytes, within
    # a mixed-precision allowance for MXFP4 (experts 4-bit, the rest bf16).
    bytes_per_param = {"bf16": 2.0, "fp8": 1.0, "mxfp4": 0.5}
    for m in _models(catalog):
        if m.recipe is None or m.recipe.quantization not in bytes_per_param:
            continue
        weights_gb = m.architecture.total_params_b * bytes_per_param[m.recipe.quantization]
        assert m.recipe.vram_minimum_gb >= 0.95 * weights_gb, m.id


def test_aliases_unique_across_table(catalog: Catalog) -> None:
    seen: dict[str, str] = {}
    for m in _models(catalog):
        for name in [m.id, *m.aliases]:
            key = name.lower()
            assert key not in seen or seen[key] == m.id, f"{name} names {seen.get(key)} and {m.id}"
            seen[key] = m.id
        assert len({a.lower() for a in m.aliases}) == len(m.aliases), f"{m.id}: duplicate alias"


# ------------------------------------------------------------------------------------ instance figures


@pytest.mark.parametrize(
    ("name", "mib"),
    [
        ("p4d.24xlarge", 40536),
        ("p4de.24xlarge", 81920),
        ("p5.48xlarge", 81559),
        ("p5e.48xlarge", 143771),
        ("p5en.48xlarge", 143771),
        ("p6-b200.48xlarge", 183359),
        ("g5.12xlarge", 23028),
        ("g5.48xlarge", 23028),
        ("g6e.12xlarge", 46068),
        ("g6e.48xlarge", 46068),
        ("trn1.32xlarge", 32768),
        ("trn2.48xlarge", 98304),
        ("inf2.48xlarge", 32768),
    ],
)
def test_instance_memory(catalog: Catalog, name: str, mib: int) -> None:
    entry = catalog.find_instance(name)
    assert entry is not None
    assert entry.memory_per_device_mib == mib


@pytest.mark.parametrize(
    ("name", "ranks", "devices"),
    [
        ("trn2.48xlarge", 64, 16),
        ("trn1.32xlarge", 32, 16),
        ("inf2.48xlarge", 24, 12),
        ("p5.48xlarge", 8, 8),
        ("g5.12xlarge", 4, 4),
        ("g6e.12xlarge", 4, 4),
    ],
)
def test_ranks_per_node(catalog: Catalog, name: str, ranks: int, devices: int) -> None:
    entry = catalog.find_instance(name)
    assert entry is not None
    assert entry.ranks_per_node == ranks
    assert entry.devices_per_node == devices


def test_trn2_rank_owns_a_quarter_chip(catalog: Catalog) -> None:
    trn2 = catalog.find_instance("trn2.48xlarge")
    assert trn2 is not None
    assert trn2.memory_per_rank_mib == 98304 / 4


@pytest.mark.parametrize(
    ("name", "fp8"),
    [
        ("p4d.24xlarge", False),
        ("p4de.24xlarge", False),
        ("p5.48xlarge", True),
        ("p5e.48xlarge", True),
        ("p6-b200.48xlarge", True),
        ("g5.48xlarge", False),
        ("g6e.48xlarge", True),
        ("trn1.32xlarge", False),
        ("trn2.48xlarge", True),
        ("inf2.48xlarge", False),
    ],
)
def test_instance_fp8(catalog: Catalog, name: str, fp8: bool) -> None:
    entry = catalog.find_instance(name)
    assert entry is not None
    assert entry.fp8 is fp8


def test_unlisted_prices_explain_themselves(catalog: Catalog) -> None:
    for i in _instances(catalog):
        assert i.price_source.strip(), i.name
        if i.price_per_hour is None:
            assert len(i.price_source) > 40, f"{i.name}: a null price needs a reason"
        else:
            assert i.price_per_hour > 0, i.name
    p5 = catalog.find_instance("p5.48xlarge")
    assert p5 is not None
    assert p5.price_per_hour == 55.04


def test_every_instance_is_sourced_and_consistent(catalog: Catalog) -> None:
    field_names = set(InstanceEntry.model_fields)
    for i in _instances(catalog):
        assert len(i.source.strip()) >= 20, i.name
        assert {_snake(f) for f in i.unverified} <= field_names, i.name
        if i.accelerator_kind == "neuron":
            assert i.resource_name == "aws.amazon.com/neuron"
            assert i.core_resource_name == "aws.amazon.com/neuroncore"
            assert i.cores_per_device >= 2
        else:
            assert i.resource_name == "nvidia.com/gpu"
            assert i.core_resource_name is None
            assert i.cores_per_device == 1
            # nvidia-smi MiB, a plausible range for the GPUs AWS offers (A10G 23028 .. B200 183359).
            assert 20_000 <= i.memory_per_device_mib <= 200_000, i.name


# ---------------------------------------------------------------------------------------- overrides

OVERRIDE = """\
instances:
- name: p5.48xlarge
  acceleratorKind: gpu
  acceleratorModel: H100-80GB
  devicesPerNode: 8
  memoryPerDeviceMib: 81559
  memoryBandwidthGbps: 3350
  interconnect: NVSwitch
  efa: true
  networkGbps: 3200
  vcpus: 192
  hostMemoryGib: 2048
  pricePerHour: 12.5
  priceSource: "our negotiated rate"
  resourceName: nvidia.com/gpu
  fp8: true
  bf16Tflops: 989
  fp8Tflops: 1979
  performanceSource: test override
  source: test override
- name: x9.test
  acceleratorKind: gpu
  acceleratorModel: H100-80GB
  devicesPerNode: 2
  memoryPerDeviceMib: 81559
  memoryBandwidthGbps: 3350
  interconnect: PCIe
  efa: false
  networkGbps: 100
  vcpus: 32
  hostMemoryGib: 256
  priceSource: unlisted
  resourceName: nvidia.com/gpu
  bf16Tflops: 500
  performanceSource: test override
  source: test override
models:
- id: acme/Tiny-MoE
  aliases: [tiny-moe]
  family: mixtral
  architecture:
    totalParamsB: 1.2
    activeParamsB: 0.4
    numLayers: 4
    hiddenSize: 512
    numAttentionHeads: 8
    numKvHeads: 2
    numExperts: 4
    expertsPerToken: 2
    moeIntermediateSize: 1024
  source: test override
"""


def _check_override(catalog: Catalog) -> None:
    p5 = catalog.find_instance("p5.48xlarge")
    assert p5 is not None
    assert p5.price_per_hour == 12.5
    assert p5.price_source == "our negotiated rate"
    new = catalog.find_instance("x9.test")
    assert new is not None
    assert new.ranks_per_node == 2
    assert new.price_per_hour is None
    model = catalog.find_model("tiny-moe")
    assert model is not None
    assert model.id == "acme/Tiny-MoE"
    assert model.architecture.resolved_head_dim == 64
    # The rest of the shipped tables is still there.
    assert catalog.find_instance("trn2.48xlarge") is not None
    assert catalog.find_model("deepseek-v3") is not None
    assert len(catalog.instances) == len(REQUIRED_INSTANCES) + 1


def test_override_file(tmp_path: Path) -> None:
    path = tmp_path / "extra.yaml"
    path.write_text(OVERRIDE)
    _check_override(load_catalog([path]))
    _check_override(load_catalog([str(path)]))


def test_override_does_not_touch_the_shipped_tables(tmp_path: Path) -> None:
    path = tmp_path / "extra.yaml"
    path.write_text(OVERRIDE)
    load_catalog([path])
    shipped = load_catalog()
    p5 = shipped.find_instance("p5.48xlarge")
    assert p5 is not None
    assert p5.price_per_hour == 55.04
    assert shipped.find_model("acme/Tiny-MoE") is None


def test_override_directory_like_a_configmap(tmp_path: Path) -> None:
    # A mounted ConfigMap: keys link through `..data` into a `..<timestamp>` dir; dot-entries are ignored.
    stamp = tmp_path / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir()
    (stamp / "extra.yaml").write_text(OVERRIDE)
    (stamp / "notes.txt").write_text("not a catalog file")
    (tmp_path / "..data").symlink_to(stamp.name)
    (tmp_path / "extra.yaml").symlink_to(Path("..data") / "extra.yaml")
    (tmp_path / ".hidden.yaml").write_text("this: [is not, a catalog")
    (tmp_path / "README").write_text("ignored: no yaml suffix")
    _check_override(load_catalog([tmp_path]))


def test_later_override_wins(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text(OVERRIDE)
    second = tmp_path / "b.yaml"
    second.write_text(OVERRIDE.replace("pricePerHour: 12.5", "pricePerHour: 7.0"))
    catalog = load_catalog([first, second])
    p5 = catalog.find_instance("p5.48xlarge")
    assert p5 is not None
    assert p5.price_per_hour == 7.0


def test_empty_override_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert sorted(load_catalog([path]).instances) == sorted(REQUIRED_INSTANCES)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("instances: [name: p5.48xlarge\n  bad", "not valid YAML"),
        ("- just\n- a list\n", "mapping"),
        ("gpus: []\n", "mapping"),
        (OVERRIDE.replace("  fp8: true\n", "  fp8: true\n  colour: blue\n", 1), "colour"),
        (OVERRIDE.replace("devicesPerNode: 8", "devicesPerNode: eight", 1), "devicesPerNode"),
        (OVERRIDE.replace("numLayers: 4", "numLayers: [4]", 1), "numLayers"),
        (OVERRIDE.replace("  source: test override\n", "\n", 1), "source"),
    ],
    ids=[
        "bad-yaml",
        "not-a-mapping",
        "unknown-top-level",
        "unknown-field",
        "wrong-type",
        "wrong-type-nested",
        "missing",
    ],
)
def test_malformed_override_names_the_file(tmp_path: Path, text: str, hint: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=r"broken\.yaml") as info:
        load_catalog([path])
    assert hint in str(info.value)


def test_missing_override_path(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="nope"):
        load_catalog([tmp_path / "nope.yaml"])


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def test_catalog_path_variable_applies_before_explicit_overrides(tmp_path: Path) -> None:
    # The operator (`kubemoe run`, controller.runtime) and the CLI both call load_catalog, which reads it.
    first = tmp_path / "env.yaml"
    first.write_text(OVERRIDE)
    second = tmp_path / "flag.yaml"
    second.write_text(OVERRIDE.replace("pricePerHour: 12.5", "pricePerHour: 7.5"))
    env = {"KUBEMOE_CATALOG_PATH": f"{first}{os.pathsep}"}
    _check_override(load_catalog(environ=env))
    p5 = load_catalog([second], environ=env).find_instance("p5.48xlarge")
    assert p5 is not None
    assert p5.price_per_hour == 7.5
    assert load_catalog(environ={}).find_instance("x9.test") is None


# ------------------------------------------------------------------ performance figures and capabilities

#: (instance, HBM GB/s, dense BF16 TFLOPS, dense FP8 TFLOPS or None) per device, from the datasheets.
PERFORMANCE = [
    ("p4d.24xlarge", 1555, 312, None),
    ("p4de.24xlarge", 2039, 312, None),
    ("p5.48xlarge", 3350, 989, 1979),
    ("p5en.48xlarge", 4800, 989, 1979),
    ("p6-b200.48xlarge", 8000, 2250, 4500),
    ("g6e.48xlarge", 864, 362, 733),
    ("trn2.48xlarge", 2900, 667, 1299),
    ("inf2.48xlarge", 820, 190, None),
]


@pytest.mark.parametrize(("name", "hbm", "bf16", "fp8"), PERFORMANCE)
def test_instance_performance_figures(
    catalog: Catalog, name: str, hbm: float, bf16: float, fp8: float | None
) -> None:
    entry = catalog.find_instance(name)
    assert entry is not None
    assert (entry.memory_bandwidth_gbps, entry.bf16_tflops, entry.fp8_tflops) == (hbm, bf16, fp8)


def test_every_instance_has_sourced_performance_figures(catalog: Catalog) -> None:
    for i in _instances(catalog):
        assert len(i.performance_source) > 40, i.name
        assert i.interconnect_gbps is not None, i.name
        assert i.interconnect_gbps > 0, i.name
        assert (i.fp8_tflops is not None) is i.fp8, i.name


def test_every_accelerator_has_a_sourced_capability_entry(catalog: Catalog) -> None:
    for i in _instances(catalog):
        cap = catalog.capability(i)
        assert cap is not None, i.accelerator_model
        assert cap.fp8_compute is i.fp8, i.name
        assert len(cap.source) > 20
        assert (i.accelerator_kind == "neuron") == bool(cap.neuron_families), i.name


@pytest.mark.parametrize(
    ("accelerator", "fp8_checkpoint", "mxfp4"),
    [
        ("A100-80GB", "upcast", "weight-only"),
        ("A10G", "upcast", "weight-only"),
        ("H100-80GB", "native", "weight-only"),
        ("L40S", "native", "weight-only"),
        ("B200", "native", "native"),
        ("Trainium2", "native", "weight-only"),
        ("Inferentia2", "upcast", "none"),
    ],
)
def test_accelerator_capabilities(
    catalog: Catalog, accelerator: str, fp8_checkpoint: str, mxfp4: str
) -> None:
    cap = catalog.accelerators[accelerator]
    assert (cap.fp8_checkpoint, cap.mxfp4) == (fp8_checkpoint, mxfp4)


def test_neuron_families_cover_every_catalog_model_that_claims_neuron(catalog: Catalog) -> None:
    """A model whose entry says vllm-neuron or nxdi is implemented by that path on at least one chip."""
    neuron = [a for a in catalog.accelerators.values() if a.neuron_families]
    for m in _models(catalog):
        if m.neuron == "none":
            continue
        assert any(m.family in a.neuron_families.get(m.neuron, []) for a in neuron), m.id


def test_a_capability_entry_that_contradicts_itself_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "accelerators:\n- model: X1\n  fp8Compute: false\n  fp8Checkpoint: native\n  mxfp4: none\n"
        "  kvDtypes: [auto]\n  source: test\n"
    )
    with pytest.raises(CatalogError, match="fp8Checkpoint native"):
        load_catalog([bad])
