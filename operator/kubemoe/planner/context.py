"""What every candidate of one planning request shares: the model, its resolved context, the allowed instances.

`build_context` resolves the architecture (catalog entry or `spec.model.architecture`), the served context
length and the weight split once; `allowed_instances` applies the placement's instance and accelerator
filters (and Neuron's model support) before any layout is tried.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubemoe.api.moemodel import Architecture, MoEModelSpec
from kubemoe.catalog.loader import Catalog
from kubemoe.catalog.schema import AcceleratorEntry, InstanceEntry, ModelEntry
from kubemoe.planner import memory as mem
from kubemoe.planner.errors import PlanningError
from kubemoe.planner.settings import PlannerSettings
from kubemoe.planner.types import PlanReason


@dataclass(frozen=True)
class Context:
    """What every candidate of one request shares."""

    spec: MoEModelSpec
    entry: ModelEntry | None
    arch: Architecture
    settings: PlannerSettings
    max_model_len: int
    kv_dtype_bytes: int
    split: mem.WeightSplit
    catalog: Catalog

    def capability(self, instance: InstanceEntry) -> AcceleratorEntry | None:
        return self.catalog.capability(instance)

    def native_fp8_checkpoint(self) -> bool:
        """An FP8 checkpoint served as it is (no serving.quantization asking for another format)."""
        return self.spec.serving.quantization is None and self.arch.native_dtype == "fp8"

    def upcast(self, instance: InstanceEntry) -> bool:
        """Whether this instance runs the native-FP8 checkpoint as BF16 (no FP8 tensor cores)."""
        cap = self.capability(instance)
        return self.native_fp8_checkpoint() and cap is not None and cap.fp8_checkpoint == "upcast"

    def split_for(self, instance: InstanceEntry) -> mem.WeightSplit:
        """The weight bytes on this instance: the checkpoint's, or BF16 where an FP8 checkpoint is upcast."""
        if self.upcast(instance):
            return mem.weight_split(self.arch.model_copy(update={"native_dtype": "bfloat16"}), None)
        return self.split

    def fp8_compute(self, instance: InstanceEntry) -> bool:
        cap = self.capability(instance)
        return cap.fp8_compute if cap is not None else instance.fp8


def resolve_architecture(spec: MoEModelSpec, catalog: Catalog) -> tuple[ModelEntry | None, Architecture]:
    entry = catalog.find_model(spec.model.name)
    if spec.model.architecture is not None:
        return entry, spec.model.architecture
    if entry is None:
        raise PlanningError(
            PlanReason.UNKNOWN_MODEL,
            f"model {spec.model.name!r} is not in the catalog: set spec.model.architecture (totalParamsB, "
            "numLayers, hiddenSize, numAttentionHeads, numKvHeads, ...) or add it with a catalog override; "
            "`kubemoe catalog models` lists the catalog",
        )
    return entry, entry.architecture


def engine_for(instance: InstanceEntry) -> str:
    return "vllm" if instance.accelerator_kind == "gpu" else "neuronx"


def neuron_problem(entry: ModelEntry | None, instance: InstanceEntry, catalog: Catalog) -> str | None:
    """Why this model cannot run on this Neuron instance, or None (the capability table's families)."""
    path = entry.neuron if entry is not None else "none"
    if entry is None or path == "none":
        return "no Neuron support known for this model (vLLM Neuron plugin or NxD Inference)"
    cap = catalog.capability(instance)
    families = cap.neuron_families.get(path, []) if cap is not None else []
    if entry.family not in families:
        if path == "vllm-neuron":
            return (
                f"the vLLM Neuron plugin does not run {entry.family} models on {instance.accelerator_model}"
            )
        return f"NxD Inference does not implement {entry.family} models on {instance.accelerator_model}"
    return None


def capability_problem(ctx: Context, instance: InstanceEntry) -> str | None:
    """Why this instance's accelerator cannot run the weights or KV cache asked for, or None."""
    cap = ctx.capability(instance)
    if cap is None:
        return None
    if ctx.native_fp8_checkpoint() and cap.fp8_checkpoint == "refuse":
        return f"{instance.accelerator_model} cannot run the FP8 checkpoint (capability table: refuse)"
    weights = ctx.spec.serving.quantization or ctx.arch.native_dtype
    if weights == "mxfp4" and cap.mxfp4 == "none":
        return f"{instance.accelerator_model} cannot run MXFP4 weights"
    if ctx.spec.serving.kv_cache_dtype not in cap.kv_dtypes:
        return f"{instance.accelerator_model} has no {ctx.spec.serving.kv_cache_dtype} KV cache"
    return None


def allowed_instances(spec: MoEModelSpec, entry: ModelEntry | None, catalog: Catalog) -> list[InstanceEntry]:
    """Instances the placement allows, with the reason when none is left."""
    placement = spec.placement
    names = placement.instance_types or sorted(catalog.instances)
    unknown = [n for n in names if catalog.find_instance(n) is None]
    if unknown:
        raise PlanningError(
            PlanReason.UNKNOWN_INSTANCE_TYPE,
            f"unknown instance type(s) {', '.join(unknown)} in spec.placement.instanceTypes; known: "
            f"{', '.join(sorted(catalog.instances))} (add others with a catalog override)",
        )
    wanted_kind = placement.accelerator
    if spec.engine.kind is not None:
        wanted_kind = "gpu" if spec.engine.kind == "vllm" else "neuron"
    kept: list[InstanceEntry] = []
    dropped: list[str] = []
    for name in names:
        inst = catalog.instances[name]
        if wanted_kind not in ("any", inst.accelerator_kind):
            dropped.append(f"{name} ({inst.accelerator_kind}, not {wanted_kind})")
            continue
        if inst.accelerator_kind == "neuron":
            problem = neuron_problem(entry, inst, catalog)
            if problem:
                dropped.append(f"{name} ({problem})")
                continue
        kept.append(inst)
    if not kept:
        raise PlanningError(
            PlanReason.NO_MATCHING_INSTANCE,
            "no instance type matches the placement: "
            + "; ".join(dropped)
            + ". Widen spec.placement.instanceTypes or spec.placement.accelerator",
        )
    return kept


def build_context(spec: MoEModelSpec, catalog: Catalog, settings: PlannerSettings) -> Context:
    entry, arch = resolve_architecture(spec, catalog)
    max_len = spec.serving.max_model_len or min(arch.max_context, settings.default_max_model_len_cap)
    if max_len > arch.max_context:
        raise PlanningError(
            PlanReason.INVALID_SERVING,
            f"spec.serving.maxModelLen {max_len} exceeds the model's context of {arch.max_context} tokens; "
            f"lower it to at most {arch.max_context}",
        )
    if spec.placement.expert_parallel and not arch.is_moe:
        raise PlanningError(
            PlanReason.INVALID_PARALLELISM,
            "spec.placement.expertParallel is true but the model has no experts; remove it",
        )
    return Context(
        spec=spec,
        entry=entry,
        arch=arch,
        settings=settings,
        max_model_len=max_len,
        kv_dtype_bytes=1 if spec.serving.kv_cache_dtype == "fp8" else 2,
        split=mem.weight_split(arch, spec.serving.quantization),
        catalog=catalog,
    )


def batch_defaults(instance: InstanceEntry) -> tuple[int, int]:
    """vLLM 0.33's per-hardware defaults of (max_num_batched_tokens, max_num_seqs) for `vllm serve`."""
    gib = instance.memory_per_device_mib / 1024
    if instance.accelerator_kind == "gpu" and gib >= 160:
        return 16384, 1024
    if instance.accelerator_kind == "gpu" and gib >= 70 and not instance.accelerator_model.startswith("A100"):
        return 8192, 1024
    return 2048, 256


def batching(ctx: Context, instance: InstanceEntry) -> tuple[int, int]:
    tokens, seqs = batch_defaults(instance)
    return (
        ctx.spec.serving.max_num_batched_tokens or tokens,
        ctx.spec.serving.max_num_seqs or seqs,
    )
