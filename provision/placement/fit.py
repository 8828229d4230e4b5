"""Does one model fit this rig, and how: one GPU, a split, partial CPU offload, or not at all.

Pure. docs/ARCHITECTURE.md §5 rules 1-3 for a single model: keep a model that fits one GPU
on one GPU; otherwise split it over the fewest, fastest GPUs (an NVLink pair preferred);
otherwise offload the first layers to the CPU; and when it does not fit entirely on GPUs, say
what would.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from itertools import combinations

from provision.hardware.classify import gpu_label, nvlink_pairs
from provision.hardware.rig import Gpu, Rig, Vendor
from provision.models import catalog
from provision.models.estimate import (
    DeviceFootprint,
    KvType,
    RunSettings,
    Runtime,
    assign_layers,
    compute_bytes,
    device_footprint,
    device_overhead_bytes,
    host_weight_bytes,
    kv_bytes,
    projector_footprint_bytes,
)
from provision.models.spec import ModelSpec
from provision.placement.ollama_scheduler import flash_attention_supported
from provision.units import MIB, gib

# Headroom per GPU beyond the estimate: fragmentation, a driver update, a second small process.
SAFETY_MARGIN_BYTES = 512 * MIB
# Memory bandwidth ratio GPU : CPU used to express the partial-offload slowdown (e.g. ~900 GB/s
# GDDR6X against ~60 GB/s dual-channel DDR5); generation speed is bandwidth-bound.
GPU_TO_CPU_BANDWIDTH = 15.0
_REBALANCE_STEPS = 40


class Verdict(StrEnum):
    SINGLE_GPU = "single-gpu"
    SPLIT = "split"
    PARTIAL_OFFLOAD = "partial-offload"
    NO_FIT = "no-fit"


@dataclass(frozen=True)
class GpuShare:
    gpu: Gpu
    free_bytes: int
    footprint: DeviceFootprint

    @property
    def fits(self) -> bool:
        return self.footprint.total_bytes <= self.free_bytes


@dataclass(frozen=True)
class FitResult:
    model: ModelSpec
    settings: RunSettings
    verdict: Verdict
    shares: tuple[GpuShare, ...]  # GPUs that run layers, in split order (first layers first)
    cpu_layers: tuple[int, ...]
    cpu_bytes: int
    reason: str
    suggestions: tuple[str, ...] = ()

    @property
    def gpu_total_bytes(self) -> int:
        return sum(s.footprint.total_bytes for s in self.shares)


def resident_bytes(results: Iterable[FitResult]) -> dict[int, int]:
    """GPU index -> bytes the placed models' footprints hold on it together."""
    used: dict[int, int] = {}
    for result in results:
        for share in result.shares:
            used[share.gpu.index] = used.get(share.gpu.index, 0) + share.footprint.total_bytes
    return used


def usable_free_bytes(gpu: Gpu) -> int:
    """Total minus what is in use now (a display's desktop included) minus a safety margin."""
    used = gpu.memory_used_bytes or 0
    return max(gpu.memory_total_bytes - used - SAFETY_MARGIN_BYTES, 0)


def _speed_key(gpu: Gpu) -> tuple[tuple[int, int], bool, int]:
    """Fastest first: higher compute capability, not driving a display, more free memory."""
    cc = gpu.compute_capability_tuple or (0, 0)
    return (cc, not gpu.display_active, usable_free_bytes(gpu))


def by_speed(gpus: Sequence[Gpu]) -> list[Gpu]:
    return sorted(gpus, key=lambda g: (_speed_key(g), -g.index), reverse=True)


class _Fitter:
    def __init__(self, rig: Rig, spec: ModelSpec, settings: RunSettings, legacy: bool) -> None:
        self.rig, self.spec, self.settings, self.legacy = rig, spec, settings, legacy

    def share(
        self,
        gpu: Gpu,
        layers: Sequence[int],
        holds_output: bool,
        pipeline: bool = False,
        host_bytes: int = 0,
        first: bool = True,
    ) -> GpuShare:
        footprint = device_footprint(
            self.spec,
            self.settings,
            layers,
            holds_output,
            gpu.compute_capability_tuple,
            self.legacy,
            pipeline,
            rocm=gpu.vendor == Vendor.AMD,
            host_weight_bytes=host_bytes,
            holds_projector=first,
        )
        return GpuShare(gpu, usable_free_bytes(gpu), footprint)

    def single(self, gpu: Gpu) -> GpuShare:
        return self.share(gpu, range(self.spec.n_layer), True)

    def layer_capacity(
        self, gpu: Gpu, holds_output: bool, pipeline: bool, first: bool = False
    ) -> float:
        """Bytes left for layers (weights + KV) once the fixed costs are paid."""
        cc = gpu.compute_capability_tuple
        fixed = compute_bytes(self.spec, self.settings, holds_output, cc, pipeline)
        fixed += projector_footprint_bytes(self.spec) if first else 0
        fixed += device_overhead_bytes(self.settings, self.legacy, gpu.vendor == Vendor.AMD)
        fixed += self.spec.output_bytes if holds_output else 0
        return max(usable_free_bytes(gpu) - fixed, 0)

    def split(self, gpus: Sequence[Gpu], n_gpu_layers: int | None = None) -> list[GpuShare]:
        """Layers over `gpus` in order, proportional to room for layers, then rebalanced."""
        pipeline = _pipelined(gpus, n_gpu_layers)
        proportions = [
            self.layer_capacity(g, i == len(gpus) - 1, pipeline, i == 0) + 1.0
            for i, g in enumerate(gpus)
        ]
        shares = self.assign(gpus, proportions, n_gpu_layers)
        for _ in range(_REBALANCE_STEPS):
            over = [i for i, s in enumerate(shares) if not s.fits]
            if not over or len(over) == len(shares):
                break
            for i in over:
                proportions[i] *= 0.9
            shares = self.assign(gpus, proportions, n_gpu_layers)
        return shares

    def assign(
        self, gpus: Sequence[Gpu], proportions: Sequence[float], n_gpu_layers: int | None
    ) -> list[GpuShare]:
        layers, output_device = assign_layers(self.spec.n_layer, proportions, n_gpu_layers)
        pipeline = _pipelined(gpus, n_gpu_layers)
        # Partial offload: the first GPU also runs the host blocks' matrix products.
        host = host_weight_bytes(self.spec, layers, output_device) if n_gpu_layers else 0
        return [
            self.share(g, layers[i], output_device == i, pipeline, host if i == 0 else 0, i == 0)
            for i, g in enumerate(gpus)
        ]


def _pipelined(gpus: Sequence[Gpu], n_gpu_layers: int | None) -> bool:
    """llama.cpp pipelines micro-batches when several GPUs hold every layer and the output."""
    return len(gpus) > 1 and n_gpu_layers is None


def _subset_key(rig: Rig, gpus: Sequence[Gpu]) -> tuple[int, tuple[tuple[int, int], ...], int]:
    pairs = nvlink_pairs(rig)
    indices = [g.index for g in gpus]
    linked = all((a, b) in pairs for a, b in combinations(sorted(indices), 2))
    speeds = tuple(sorted((g.compute_capability_tuple or (0, 0) for g in gpus), reverse=True))
    return (int(linked), speeds, sum(usable_free_bytes(g) for g in gpus))


def _fits(shares: Sequence[GpuShare]) -> bool:
    return all(s.fits for s in shares)


def _try_split(fitter: _Fitter, rig: Rig) -> list[GpuShare] | None:
    ordered = by_speed(rig.gpus)
    for size in range(2, len(ordered) + 1):
        # One vendor per split: llama.cpp and Ollama never pool CUDA and ROCm devices.
        candidates = [list(c) for c in combinations(ordered, size) if _one_vendor(c)]
        candidates.sort(key=lambda c: _subset_key(rig, c), reverse=True)
        for subset in candidates:
            shares = fitter.split(subset)
            if _fits(shares):
                return shares
    return None


def _one_vendor(gpus: Sequence[Gpu]) -> bool:
    return len({g.vendor for g in gpus}) == 1


def _single_gpu(fitter: _Fitter, rig: Rig) -> GpuShare | None:
    return next((s for g in by_speed(rig.gpus) if (s := fitter.single(g)).fits), None)


def _whole_fit(fitter: _Fitter, rig: Rig) -> list[GpuShare] | None:
    single = _single_gpu(fitter, rig)
    return [single] if single is not None else _try_split(fitter, rig)


def _partial(fitter: _Fitter, rig: Rig) -> tuple[list[GpuShare], tuple[int, ...]] | None:
    """The most layers all GPUs can hold; the first layers stay on the CPU. On a box with both
    vendors, the vendor whose cards have the most free memory together holds them."""
    groups: dict[Vendor, list[Gpu]] = {}
    for gpu in by_speed(rig.gpus):
        groups.setdefault(gpu.vendor, []).append(gpu)
    if not groups:
        return None
    ordered = max(groups.values(), key=lambda gs: sum(usable_free_bytes(g) for g in gs))
    spec, total_free = fitter.spec, sum(usable_free_bytes(g) for g in ordered)
    for n_gpu_layers in range(spec.n_layer, 0, -1):
        # The blocks and output head offloaded need at least their weights and KV on the GPUs
        # together: where that alone exceeds all free memory, no split can fit (and it is cheap
        # to know, while a split is 40 rebalancing rounds).
        blocks = range(max(spec.n_layer + 1 - n_gpu_layers, 0), spec.n_layer)
        least = sum(spec.layer_weight_bytes[il] for il in blocks) + spec.output_bytes
        if least + kv_bytes(spec, fitter.settings, blocks) > total_free:
            continue
        shares = (
            fitter.split(ordered, n_gpu_layers)
            if len(ordered) > 1
            else [fitter.assign(ordered, [1.0], n_gpu_layers)[0]]
        )
        if _fits(shares):
            on_gpu = {il for s in shares for il in s.footprint.layers}
            cpu = tuple(il for il in range(fitter.spec.n_layer) if il not in on_gpu)
            return [s for s in shares if s.footprint.layers or s.footprint.holds_output], cpu
    return None


def fit_model(
    rig: Rig, spec: ModelSpec, settings: RunSettings, legacy_ollama: bool = False
) -> FitResult:
    fitter = _Fitter(rig, spec, settings, legacy_ollama)
    whole = _whole_result(fitter, rig)
    return whole if whole is not None else _not_whole(fitter, rig, _need(fitter, rig))


def whole_fit(
    rig: Rig, spec: ModelSpec, settings: RunSettings, legacy_ollama: bool = False
) -> FitResult | None:
    """fit_model's verdict when it is single-gpu or split; None (cheaply) for anything less."""
    return _whole_result(_Fitter(rig, spec, settings, legacy_ollama), rig)


def _need(fitter: _Fitter, rig: Rig) -> int:
    return fitter.single(by_speed(rig.gpus)[0]).footprint.total_bytes if rig.gpus else 0


def _whole_result(fitter: _Fitter, rig: Rig) -> FitResult | None:
    spec, settings = fitter.spec, fitter.settings
    need = _need(fitter, rig)
    single = _single_gpu(fitter, rig)
    if single is not None:
        reason = (
            f"fits on {gpu_label(single.gpu)}: needs {gib(single.footprint.total_bytes)} of "
            f"{gib(single.free_bytes)} usable; kept on one GPU because splitting a model that "
            "fits only adds inter-GPU latency"
        )
        return FitResult(spec, settings, Verdict.SINGLE_GPU, (single,), (), 0, reason)
    split = _try_split(fitter, rig)
    if split is not None:
        largest = max(usable_free_bytes(g) for g in rig.gpus)
        names = ",".join(str(s.gpu.index) for s in split)
        reason = (
            f"split across {names} because {gib(need)} > {gib(largest)} usable on one card; "
            + _split_reason(split)
        )
        return FitResult(spec, settings, Verdict.SPLIT, tuple(split), (), 0, reason)
    return None


def _split_reason(shares: Sequence[GpuShare]) -> str:
    parts = ", ".join(
        f"{len(s.footprint.layers)} layers{' + output' if s.footprint.holds_output else ''} "
        f"on GPU {s.gpu.index}"
        for s in shares
    )
    return f"{parts} (proportional to the room each card has, faster card first)"


def _not_whole(fitter: _Fitter, rig: Rig, need: int) -> FitResult:
    spec, settings = fitter.spec, fitter.settings
    total_free = sum(usable_free_bytes(g) for g in rig.gpus)
    partial = _partial(fitter, rig)
    suggestions = tuple(suggest(rig, spec, settings, fitter.legacy))
    if partial is not None:
        shares, cpu_layers = partial
        cpu_bytes = sum(spec.layer_weight_bytes[il] for il in cpu_layers) + kv_bytes(
            spec, settings, cpu_layers
        )
        ram = rig.host.ram_bytes
        if ram is None or cpu_bytes + spec.input_bytes <= ram:
            slowdown = _offload_slowdown(spec, cpu_layers)
            reason = (
                f"does not fit on GPUs: needs about {gib(need)} on one card and "
                f"{gib(total_free)} are usable on all; {len(cpu_layers)} of {spec.n_layer} "
                f"layers ({gib(cpu_bytes)}) run on the CPU, expect generation about "
                f"{slowdown:.1f}x slower than all on GPU"
            )
            return FitResult(
                spec,
                settings,
                Verdict.PARTIAL_OFFLOAD,
                tuple(shares),
                cpu_layers,
                cpu_bytes,
                reason,
                suggestions,
            )
    reason = f"does not fit: needs about {gib(need)}, {gib(total_free)} usable on all GPUs" + (
        f" and {gib(rig.host.ram_bytes)} RAM" if rig.host.ram_bytes else ""
    )
    return FitResult(spec, settings, Verdict.NO_FIT, (), (), 0, reason, suggestions)


def _offload_slowdown(spec: ModelSpec, cpu_layers: Sequence[int]) -> float:
    total = sum(spec.layer_weight_bytes) or 1
    on_cpu = sum(spec.layer_weight_bytes[il] for il in cpu_layers)
    on_gpu = total - on_cpu
    return (on_gpu + on_cpu * GPU_TO_CPU_BANDWIDTH) / total


def fits_entirely(rig: Rig, spec: ModelSpec, settings: RunSettings, legacy: bool) -> bool:
    return _whole_fit(_Fitter(rig, spec, settings, legacy), rig) is not None


def largest_fitting_context(
    rig: Rig, spec: ModelSpec, settings: RunSettings, legacy: bool
) -> int | None:
    """Binary search over multiples of 256 tokens below the requested context."""
    low, high, best = 1, settings.ctx_tokens // 256, None
    while low <= high:
        middle = (low + high) // 2
        if fits_entirely(rig, spec, replace(settings, ctx_tokens=middle * 256), legacy):
            best, low = middle * 256, middle + 1
        else:
            high = middle - 1
    return best


def suggest(rig: Rig, spec: ModelSpec, settings: RunSettings, legacy: bool) -> list[str]:
    """What would fit entirely on GPUs: a shorter context, a q8_0 or q4_0 KV cache, a smaller
    quant. Never a context above the model's trained length."""
    found: list[str] = []
    if spec.ctx_train and settings.ctx_tokens > spec.ctx_train:
        settings = replace(settings, ctx_tokens=spec.ctx_train)
    ctx = largest_fitting_context(rig, spec, settings, legacy)
    if ctx is not None:
        found.append(f"context {ctx} tokens fits (asked for {settings.ctx_tokens})")
    else:
        found.append("no context length fits: the weights alone are too large")
    found += _kv_suggestions(rig, spec, settings, legacy)
    smaller = _largest_fitting_quant(rig, spec, settings, legacy)
    if smaller:
        found.append(smaller)
    return found


def ollama_enables_flash_attention(rig: Rig, version: str | None) -> bool:
    """Ollama's own rule for these GPUs, server-wide (ml/device.go, as
    placement/ollama_scheduler.py models it): ROCm devices always qualify, so only the CUDA
    cards count."""
    ccs = [g.compute_capability_tuple for g in rig.gpus if g.vendor == Vendor.NVIDIA]
    return flash_attention_supported(ccs, version)


def _flash_attention_possible(rig: Rig, settings: RunSettings) -> bool:
    """llama-server gets `-fa on` from us; Ollama turns it on by its own rule for the cards."""
    if settings.flash_attention or settings.runtime != Runtime.OLLAMA:
        return True
    return ollama_enables_flash_attention(rig, rig.host.runtimes.get("ollama"))


def _kv_suggestions(rig: Rig, spec: ModelSpec, settings: RunSettings, legacy: bool) -> list[str]:
    """The smaller KV caches, larger first: the first that fits, or that none does."""
    now = settings.kv_type.bytes_per_element
    smaller = [k for k in (KvType.Q8_0, KvType.Q4_0) if k.bytes_per_element < now]
    if smaller and not _flash_attention_possible(rig, settings):
        # A quantized cache needs flash attention; Ollama refuses it on these cards.
        return []
    for kv in smaller:
        if fits_entirely(rig, spec, replace(settings, kv_type=kv, flash_attention=True), legacy):
            return [f"a {kv} KV cache fits (needs flash attention, which it turns on)"]
    return (
        [f"a {' or '.join(map(str, smaller))} KV cache is not enough on its own"] if smaller else []
    )


def _largest_fitting_quant(
    rig: Rig, spec: ModelSpec, settings: RunSettings, legacy: bool
) -> str | None:
    base = catalog.base_name(spec.name)
    if base is None:
        return None
    for variant in reversed(catalog.variants(base)):
        if spec.quant and variant.quant.lower() == spec.quant.lower():
            continue
        candidate = catalog.lookup(f"{base}@{variant.quant}")
        if candidate is not None and fits_entirely(rig, candidate, settings, legacy):
            return f"quant {variant.quant} ({base.split(':')[0]}:{variant.tag}) fits"
    return f"no quant of {base} in the catalog fits entirely on the GPUs"
