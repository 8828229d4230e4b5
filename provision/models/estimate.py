"""How many bytes a model needs, per device and per component, for one runtime's settings.

Pure. Mirrors what llama.cpp allocates (src/llama-context.cpp, llama-kv-cache*.cpp,
llama-model.cpp load_tensors): the weights of the layers a device holds, the KV cache of those
layers, a compute buffer, and a per-GPU footprint (CUDA context, cuBLAS workspace). Validated
against real llama.cpp loads in bench/estimate_accuracy.py.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from provision.models.spec import ModelSpec
from provision.units import MIB

# llama.cpp pads the context (and every SWA cache) to a multiple of 256 cells.
CTX_PAD = 256
# CUDA context + cuBLAS workspace per GPU (not yet measured on real hardware: see ACCURACY.md).
CUDA_FOOTPRINT_BYTES = 400 * MIB
# HIP context + rocBLAS state per AMD GPU: rocblas_initialize() took 498 MiB on a 7900 XTX
# (llama.cpp PR #11080) and Ollama reserves 457 MiB per ROCm GPU (ml/device.go MinimumMemory).
# Taken as 512 MiB until measured on a real AMD card.
ROCM_FOOTPRINT_BYTES = 512 * MIB
# Ollama <= 0.12 reserved at least this much per GPU in its own estimate (llm/memory.go).
OLLAMA_LEGACY_MIN_PER_GPU = 457 * MIB
# Kepler (CC 3.x) compute graphs measured 15-20% smaller than the generic estimate.
KEPLER_COMPUTE_FACTOR = 0.85
# ggml's scheduler keeps this many copies of the graph inputs when it pipelines micro-batches
# over several devices (GGML_SCHED_MAX_COPIES).
PIPELINE_COPIES = 4


class Runtime(StrEnum):
    OLLAMA = "ollama"
    LLAMA_SERVER = "llama-server"


class KvType(StrEnum):
    F16 = "f16"
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"

    @property
    def bytes_per_element(self) -> float:
        # ggml block layouts: q8_0 stores 32 values in 34 bytes, q4_0 in 18.
        return {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}[self.value]


@dataclass(frozen=True)
class RunSettings:
    ctx_tokens: int
    parallel: int = 1
    kv_type: KvType = KvType.F16
    runtime: Runtime = Runtime.LLAMA_SERVER
    flash_attention: bool = True
    batch: int = 2048
    ubatch: int = 512
    # llama-server as we render it: one KV pool shared by all slots.
    kv_unified: bool = True
    # The worst-case graph is reserved with a logits row for every token of the micro-batch
    # (llama-context.cpp sched_reserve: graph_reserve(n_tokens, n_seqs, n_tokens)). llama.cpp
    # after PR #23861 (2026-05) lets llama-server cap that at its slots (n_outputs_max); every
    # older build, and Ollama's vendored one, reserves them all. Unknown build: assume all.
    logits_all: bool = True

    def __post_init__(self) -> None:
        if self.ctx_tokens <= 0:
            raise ValueError(f"context must be positive, got {self.ctx_tokens}")
        if self.parallel <= 0:
            raise ValueError(f"parallel must be positive, got {self.parallel}")
        if self.kv_type != KvType.F16 and not self.flash_attention:
            raise ValueError(f"a {self.kv_type} KV cache needs flash attention")


@dataclass(frozen=True)
class DeviceFootprint:
    """Bytes one device holds; `layers` are the block indices it runs."""

    layers: tuple[int, ...]
    holds_output: bool
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    # The vision tower/projector weights and its compute graph (the first GPU only).
    projector_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.kv_bytes
            + self.compute_bytes
            + self.overhead_bytes
            + self.projector_bytes
        )


def _pad(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


@dataclass(frozen=True)
class KvCells:
    """Cells per stream of the full-attention and sliding-window caches, and the streams."""

    full_per_stream: int
    swa_per_stream: int
    streams: int = 1

    @property
    def full(self) -> int:
        return self.full_per_stream * self.streams

    @property
    def swa(self) -> int:
        return self.swa_per_stream * self.streams


def kv_cells(spec: ModelSpec, settings: RunSettings) -> KvCells:
    """Cells per layer, as llama.cpp sizes them for this runtime."""
    if settings.runtime == Runtime.OLLAMA:
        # Ollama asks llama.cpp for num_ctx x num_parallel cells in one unified cache.
        n_ctx, streams, unified = settings.ctx_tokens * settings.parallel, 1, True
    else:
        n_ctx, streams, unified = settings.ctx_tokens, 1, settings.kv_unified
    n_ctx = _pad(n_ctx, CTX_PAD)
    per_stream = n_ctx
    if not unified and settings.parallel > 1:
        streams = settings.parallel
        per_stream = _pad(n_ctx // settings.parallel, CTX_PAD)
    swa_per_stream = per_stream
    if spec.sliding_window:
        window_cells = spec.sliding_window * (settings.parallel if unified else 1)
        swa_per_stream = _pad(min(per_stream, window_cells + settings.ubatch), CTX_PAD)
    return KvCells(per_stream, swa_per_stream, streams)


def kv_layer_bytes(spec: ModelSpec, settings: RunSettings, layer: int) -> int:
    cells = kv_cells(spec, settings)
    n_cells = cells.swa if spec.swa_layers[layer] else cells.full
    per_cell = (spec.n_embd_k_gqa + spec.n_embd_v_gqa) * settings.kv_type.bytes_per_element
    return int(n_cells * per_cell)


def kv_bytes(spec: ModelSpec, settings: RunSettings, layers: Sequence[int]) -> int:
    # Placement calls this for every candidate split: size the two caches once, then count.
    cells = kv_cells(spec, settings)
    per_cell = (spec.n_embd_k_gqa + spec.n_embd_v_gqa) * settings.kv_type.bytes_per_element
    n_swa = sum(1 for il in layers if spec.swa_layers[il])
    full = int(cells.full * per_cell) * (len(layers) - n_swa)
    return full + int(cells.swa * per_cell) * n_swa


def compute_bytes(
    spec: ModelSpec,
    settings: RunSettings,
    holds_output: bool,
    compute_capability: tuple[int, int] | None = None,
    pipeline: bool = False,
    host_weight_bytes: int = 0,
) -> int:
    """The compute buffer llama.cpp reserves on a device that runs layers.

    Fitted to real llama.cpp loads (bench/ACCURACY.md), exact to a few KiB on every measured
    model: the worst-case micro-batch keeps 4 activations of width n_embd and 3 of the FFN
    width (x experts used) alive, plus the f16 attention masks over the cells one stream sees.
    With several devices and every layer offloaded, llama.cpp pipelines micro-batches (4 graph
    copies): each device then holds 4 masks and extra input copies, 12 n_embd-wide ones where
    the output head is not and 3 where it is. Without flash attention the f32 attention scores
    (micro-batch x cells x heads) come on top (an upper bound: real CUDA loads without flash
    attention stay under it, bench/ACCURACY.md). On the device holding the output head, a
    build that reserves logits for every micro-batch token (`logits_all`) peaks at those
    logits instead where they are larger, as they are for every 128k-250k vocabulary.

    `host_weight_bytes`: with layers left in host memory, ggml's scheduler runs their matrix
    products on the first GPU for prompt-sized batches and copies their weights into its
    compute buffer to do so (ggml-backend.cpp ggml_backend_sched_backend_id_from_cur, the
    op_offload loop takes the first backend that accepts); counted on top, an upper bound.
    """
    ubatch = min(settings.ubatch, settings.batch)
    cells = kv_cells(spec, settings)
    n_ff = spec.n_ff or 4 * spec.n_embd
    if spec.n_expert_used:
        n_ff *= spec.n_expert_used
    total = ubatch * 4 * (4 * spec.n_embd + 3 * n_ff)
    stream_cells = cells.full_per_stream + (cells.swa_per_stream if spec.sliding_window else 0)
    mask = ubatch * 2 * stream_cells
    if pipeline:
        total += PIPELINE_COPIES * mask + ubatch * 4 * spec.n_embd * (3 if holds_output else 12)
    else:
        total += mask
    if not settings.flash_attention:
        total += ubatch * cells.full_per_stream * spec.n_head * 4
    if holds_output and settings.logits_all:
        # The output head's peak: the f32 logits of every micro-batch token and the normed
        # input they are computed from, live together after the layers' tensors are freed
        # (real CUDA loads match this to 0.01 MiB: bench/real_logs.yaml).
        total = max(total, ubatch * 4 * (spec.n_vocab + spec.n_embd))
    if compute_capability is not None and compute_capability < (5, 0):
        total = int(total * KEPLER_COMPUTE_FACTOR)
    return total + host_weight_bytes


def device_overhead_bytes(
    settings: RunSettings, legacy_ollama: bool = False, rocm: bool = False
) -> int:
    """The runtime's fixed cost per GPU it runs on (`rocm`: an AMD card through HIP)."""
    own = ROCM_FOOTPRINT_BYTES if rocm else CUDA_FOOTPRINT_BYTES
    if settings.runtime == Runtime.OLLAMA and legacy_ollama:
        return max(own, OLLAMA_LEGACY_MIN_PER_GPU)
    return own


def _float32(value: float) -> float:
    return array("f", [value])[0]


def assign_layers(
    n_layer: int, proportions: Sequence[float], n_gpu_layers: int | None = None
) -> tuple[list[list[int]], int | None]:
    """llama.cpp's layer split (llama-model.cpp load_tensors), for `-ts` proportions.

    Returns the block indices per device and the device index of the output head (None: CPU).
    The output head counts as layer n_layer; offloading starts from the last layers.
    """
    n_devices = len(proportions)
    offload = n_layer + 1 if n_gpu_layers is None else n_gpu_layers
    split_sum = 0.0
    cumulative: list[float] = []
    for share in proportions:
        split_sum = _float32(split_sum + share)
        cumulative.append(split_sum)
    cumulative = [_float32(c / split_sum) for c in cumulative]
    first_gpu_layer = max(n_layer + 1 - offload, 0)
    active = min(offload, n_layer + 1)

    def device_of(il: int) -> int | None:
        if il < first_gpu_layer or il - first_gpu_layer >= active:
            return None
        position = _float32((il - first_gpu_layer) / active)
        return next((d for d, c in enumerate(cumulative) if position < c), n_devices - 1)

    layers: list[list[int]] = [[] for _ in range(n_devices)]
    for il in range(n_layer):
        device = device_of(il)
        if device is not None:
            layers[device].append(il)
    return layers, device_of(n_layer)


def host_weight_bytes(
    spec: ModelSpec, device_layers: Sequence[Sequence[int]], output_device: int | None
) -> int:
    """The largest weights left in host memory that the first GPU copies in to run them: one
    host block (its matrices run one block at a time), or the output head when it stayed."""
    on_gpu = {il for layers in device_layers for il in layers}
    host = [spec.layer_weight_bytes[il] for il in range(spec.n_layer) if il not in on_gpu]
    return max([*host, spec.output_bytes if output_device is None else 0, 0])


def device_footprint(
    spec: ModelSpec,
    settings: RunSettings,
    layers: Sequence[int],
    holds_output: bool,
    compute_capability: tuple[int, int] | None = None,
    legacy_ollama: bool = False,
    pipeline: bool = False,
    rocm: bool = False,
    host_weight_bytes: int = 0,
    holds_projector: bool = False,
) -> DeviceFootprint:
    """`holds_projector`: this is the first GPU of a multimodal model. llama.cpp's mtmd loads
    the projector on the first GPU backend (tools/mtmd/clip.cpp, the clip_ctx constructor:
    ggml_backend_init_by_type(GPU)), and Ollama's <= 0.12 estimator charges it to the first
    GPU (llm/memory.go estimateGPULayers, gpuZeroOverhead)."""
    weights = sum(spec.layer_weight_bytes[il] for il in layers)
    if holds_output:
        weights += spec.output_bytes
    runs_something = bool(layers) or holds_output
    return DeviceFootprint(
        layers=tuple(layers),
        holds_output=holds_output,
        weights_bytes=weights,
        kv_bytes=kv_bytes(spec, settings, layers),
        compute_bytes=(
            compute_bytes(
                spec, settings, holds_output, compute_capability, pipeline, host_weight_bytes
            )
            if runs_something
            else 0
        ),
        overhead_bytes=(
            device_overhead_bytes(settings, legacy_ollama, rocm) if runs_something else 0
        ),
        projector_bytes=projector_footprint_bytes(spec) if holds_projector else 0,
    )


def projector_footprint_bytes(spec: ModelSpec) -> int:
    """The projector's weights and compute graph, where the model has one."""
    return spec.projector_bytes + spec.projector_graph_bytes if spec.multimodal else 0
