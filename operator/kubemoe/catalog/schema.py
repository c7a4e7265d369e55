"""Catalog entries: the model table and the instance table, validated when loaded.

The tables are data (`catalog/data/*.yaml`), never code: nothing in them may be hard-coded elsewhere. A file
or a ConfigMap in the same format extends or overrides them at run time (see `catalog.loader`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubemoe.api.moemodel import AcceleratorKind, Architecture, Dtype, NeuronPath


class CatalogModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Recipe(CatalogModel):
    """A published vLLM recipe's sizing, used to calibrate the planner (github.com/vllm-project/recipes)."""

    vram_minimum_gb: float = Field(gt=0, description="The recipe's minimum total accelerator memory, in GB.")
    max_model_len: int | None = Field(
        default=None, description="Context length the figure assumes, if stated."
    )
    quantization: str | None = Field(
        default=None, description="Weight format the figure is for (fp8, mxfp4, ...)."
    )
    source: str = Field(description="Where the figure comes from.")


class ModelEntry(CatalogModel):
    """One model of the catalog."""

    id: str = Field(description="Hugging Face model id.")
    aliases: list[str] = Field(default_factory=list, description="Other ids that mean this model.")
    family: str = Field(description="Architecture family (HF model_type), e.g. mixtral, deepseek_v3.")
    architecture: Architecture
    trust_remote_code: bool = Field(default=False, description="Whether vLLM needs --trust-remote-code.")
    neuron: NeuronPath = Field(
        default="none",
        description="Neuron support: the vLLM Neuron plugin (Trn2), the legacy NxD Inference path, or none.",
    )
    recipe: Recipe | None = Field(default=None, description="Published vLLM recipe sizing, if any.")
    source: str = Field(description="Where the architecture figures come from.")
    unverified: list[str] = Field(default_factory=list, description="Fields whose figure is not confirmed.")


class InstanceEntry(CatalogModel):
    """One instance type of the catalog."""

    name: str = Field(
        description="Instance type, also the node label value of node.kubernetes.io/instance-type."
    )
    accelerator_kind: AcceleratorKind
    accelerator_model: str = Field(description="e.g. A100-40GB, H100, Trainium2.")
    devices_per_node: int = Field(ge=1, description="GPUs, or Neuron chips, per node.")
    cores_per_device: int = Field(
        default=1,
        ge=1,
        description="Tensor-parallel ranks per device: 1 for GPUs; logical NeuronCores per chip.",
    )
    memory_per_device_mib: int = Field(
        ge=1024,
        description="Memory of one device as the runtime reports it (nvidia-smi MiB; Neuron HBM per chip).",
    )
    memory_bandwidth_gbps: float = Field(
        gt=0, description="Memory bandwidth per device, GB/s (latency ranking)."
    )
    interconnect: str = Field(description="Intra-node interconnect, e.g. NVSwitch, PCIe, NeuronLink-v3.")
    interconnect_gbps: float | None = Field(
        default=None, description="Intra-node bandwidth per device, GB/s."
    )
    efa: bool = Field(description="Whether the instance has EFA for multi-node traffic.")
    network_gbps: float = Field(description="Network bandwidth of the node, Gbit/s.")
    vcpus: int = Field(ge=1)
    host_memory_gib: int = Field(ge=1)
    price_per_hour: float | None = Field(
        default=None, description="On-demand us-east-1 $/hour; null when unlisted."
    )
    price_source: str = Field(description="Where the price comes from, or why it is missing.")
    resource_name: Literal["nvidia.com/gpu", "aws.amazon.com/neuron"] = Field(
        description="Extended resource the device plugin advertises per device."
    )
    core_resource_name: Literal["aws.amazon.com/neuroncore"] | None = Field(
        default=None, description="Extended resource per NeuronCore (Neuron only)."
    )
    fp8: bool = Field(default=False, description="Native FP8 compute (Hopper, Ada, Blackwell, Trainium2).")
    bf16_tflops: float = Field(
        gt=0, description="Dense (no sparsity) BF16 tensor TFLOPS per device (performance model: prefill)."
    )
    fp8_tflops: float | None = Field(
        default=None, gt=0, description="Dense FP8 tensor TFLOPS per device; null without FP8 compute."
    )
    performance_source: str = Field(
        description="Where memoryBandwidthGbps, the TFLOPS, interconnectGbps and networkGbps come from."
    )
    source: str = Field(description="Where the figures come from.")
    unverified: list[str] = Field(default_factory=list, description="Fields whose figure is not confirmed.")

    @model_validator(mode="after")
    def _check_kind(self) -> InstanceEntry:
        neuron = self.accelerator_kind == "neuron"
        if neuron != (self.resource_name == "aws.amazon.com/neuron"):
            raise ValueError(f"{self.name}: resource_name does not match accelerator_kind")
        if not neuron and self.cores_per_device != 1:
            raise ValueError(f"{self.name}: GPUs have one tensor-parallel rank per device")
        if self.fp8 != (self.fp8_tflops is not None):
            raise ValueError(f"{self.name}: fp8 true needs fp8Tflops, and fp8Tflops needs fp8 true")
        return self

    @property
    def ranks_per_node(self) -> int:
        """Tensor-parallel ranks one node offers: GPUs, or logical NeuronCores."""
        return self.devices_per_node * self.cores_per_device

    @property
    def memory_per_rank_mib(self) -> float:
        """Memory one tensor-parallel rank owns: a GPU's, or a NeuronCore's share of its chip's HBM."""
        return self.memory_per_device_mib / self.cores_per_device


FP8Checkpoint = Literal["native", "upcast", "refuse"]


class AcceleratorEntry(CatalogModel):
    """What one accelerator model can run: weight and KV dtypes, and (Neuron) the model families per path."""

    model: str = Field(description="The instance table's acceleratorModel, e.g. H100-80GB, Trainium2.")
    fp8_compute: bool = Field(description="FP8 tensor cores/engines: FP8 weights run W8A8 at the FP8 rate.")
    fp8_checkpoint: FP8Checkpoint = Field(
        description="A native-FP8 checkpoint: native (1 B/param), upcast (planned as BF16: 2 B/param, BF16 "
        "FLOPs) or refuse."
    )
    mxfp4: Literal["native", "weight-only", "none"] = Field(
        description="MXFP4 weights: FP4 tensor cores, dequantized in the kernel, or not runnable."
    )
    kv_dtypes: list[Literal["auto", "fp8"]] = Field(description="KV-cache dtypes supported.")
    neuron_families: dict[Literal["vllm-neuron", "nxdi"], list[str]] = Field(
        default_factory=dict, description="Neuron only: HF model families each serving path implements here."
    )
    mla_head_tile: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Query heads vLLM's MLA decode kernel processes per tile on this chip: a rank with "
        "fewer heads (MLA under TP) still pays for the whole tile. None: no padding modelled.",
    )
    moe_gemm_efficiency: dict[Literal["bf16", "fp8", "mxfp4"], float] = Field(
        default_factory=dict,
        description="Share of the datasheet dense rate (BF16, FP8; MXFP4 weight-only runs at the BF16 rate) "
        "vLLM's fused-MoE kernels reach on this chip for wide, well-filled expert GEMMs, by weight dtype; "
        "PlannerSettings.moeGemmTokensHalf/ColumnsHalf scale it down for narrow or sparsely filled ones. "
        "Empty: expert GEMMs use the decode and prefill efficiencies like dense ones.",
    )
    moe_gemm_columns_knee: dict[Literal["bf16", "fp8", "mxfp4"], float] = Field(
        default_factory=dict,
        description="Expert-intermediate columns per rank above which this chip's fused-MoE kernel slows "
        "down, by weight dtype: the rate falls as (knee / columns) ^ PlannerSettings.moeGemmColumnsFall "
        "(Blackwell's FlashInfer TRT-LLM BF16 kernel on Mixtral's 14336-wide experts). Empty: no fall.",
    )
    source: str = Field(description="Where the figures come from.")

    @field_validator("moe_gemm_columns_knee")
    @classmethod
    def _check_knee(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if v <= 0}
        if bad:
            raise ValueError(f"moeGemmColumnsKnee must be positive: {bad}")
        return value

    @field_validator("moe_gemm_efficiency")
    @classmethod
    def _check_moe_gemm(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0 < v <= 1}
        if bad:
            raise ValueError(f"moeGemmEfficiency must be in (0, 1]: {bad}")
        return value

    @model_validator(mode="after")
    def _check_fp8(self) -> AcceleratorEntry:
        if self.fp8_compute != (self.fp8_checkpoint == "native"):
            raise ValueError(
                f"{self.model}: fp8Checkpoint native goes with fp8Compute true, and only with it"
            )
        return self


class AcceleratorTable(CatalogModel):
    accelerators: list[AcceleratorEntry]


class ModelTable(CatalogModel):
    models: list[ModelEntry]


class InstanceTable(CatalogModel):
    instances: list[InstanceEntry]


__all__ = [
    "AcceleratorEntry",
    "AcceleratorTable",
    "CatalogModel",
    "Dtype",
    "InstanceEntry",
    "InstanceTable",
    "ModelEntry",
    "ModelTable",
    "Recipe",
]
