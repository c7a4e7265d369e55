"""Catalog entries: the model table and the instance table, validated when loaded.

The tables are data (`catalog/data/*.yaml`), never code: nothing in them may be hard-coded elsewhere. A file
or a ConfigMap in the same format extends or overrides them at run time (see `catalog.loader`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kubemoe.api.moemodel import Architecture, Dtype


class CatalogModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Recipe(CatalogModel):
    """A published vLLM recipe's sizing, used to calibrate the planner (tech-facts §7.3)."""

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
    neuron: Literal["vllm-neuron", "nxdi", "none"] = Field(
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
    accelerator_kind: Literal["gpu", "neuron"]
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
    source: str = Field(description="Where the figures come from.")
    unverified: list[str] = Field(default_factory=list, description="Fields whose figure is not confirmed.")

    @model_validator(mode="after")
    def _check_kind(self) -> InstanceEntry:
        neuron = self.accelerator_kind == "neuron"
        if neuron != (self.resource_name == "aws.amazon.com/neuron"):
            raise ValueError(f"{self.name}: resource_name does not match accelerator_kind")
        if not neuron and self.cores_per_device != 1:
            raise ValueError(f"{self.name}: GPUs have one tensor-parallel rank per device")
        return self

    @property
    def ranks_per_node(self) -> int:
        """Tensor-parallel ranks one node offers: GPUs, or logical NeuronCores."""
        return self.devices_per_node * self.cores_per_device

    @property
    def memory_per_rank_mib(self) -> float:
        """Memory one tensor-parallel rank owns: a GPU's, or a NeuronCore's share of its chip's HBM."""
        return self.memory_per_device_mib / self.cores_per_device


class ModelTable(CatalogModel):
    models: list[ModelEntry]


class InstanceTable(CatalogModel):
    instances: list[InstanceEntry]


__all__ = ["CatalogModel", "Dtype", "InstanceEntry", "InstanceTable", "ModelEntry", "ModelTable", "Recipe"]
