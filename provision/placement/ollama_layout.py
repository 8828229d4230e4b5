"""Where Ollama v0.11.5-v0.25 puts a model's layers: the new-engine layout of llm/server.go. Pure.

From v0.11.5 the models of Ollama's own engine, and from v0.12.11 every model, are laid out by
createLayout / buildLayout / assignLayers / findBestFit / greedyFit: per library, the fewest GPUs
(most free first) that take every layer, the layers balanced over them by the smallest capacity
factor that still fits as many. Read at v0.11.5, v0.12.10, v0.12.11 and v0.24.0; the variants
are `LayoutVariant`. Names follow Ollama's; tests/test_ollama_layout.py replays llm/server_test.go
TestLLMServerFitGPU (v0.24.0 and v0.12.10) against them.

For Ollama's engine the sizes per layer are what its runner reports after trying to allocate;
the plan has no runner, so it hands in its own estimate of the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

from provision.placement.ollama_memory_estimate import (
    ModelSizes,
    by_free_memory_desc,
    float32,
    minimum_memory_bytes,
)
from provision.placement.ollama_scheduler import SchedGpu, by_library

SEARCH_PRECISION = float32(1e-6)  # findBestFit: the binary search stops within this
FORCED_CAPACITY = 1000.0  # findBestFit: "almost infinite VRAM" when num_gpu must be met


class LayoutVariant(IntEnum):
    """The three versions of assignLayers/findBestFit, oldest first."""

    V0_11_5 = 1  # requireFull ignored when forcing num_gpu
    V0_12_6 = 2  # requireFull honoured (forceRequest only when the model may load partially)
    V0_12_11 = 3  # iGPUs after dGPUs (ml.ByPerformance); num_gpu/spread treat them alike


def layout_variant(version: tuple[int, ...]) -> LayoutVariant:
    if version[:3] >= (0, 12, 11):
        return LayoutVariant.V0_12_11
    if version[:3] >= (0, 12, 6):
        return LayoutVariant.V0_12_6
    return LayoutVariant.V0_11_5


@dataclass(frozen=True)
class GpuLayers:
    """ml.GPULayers: one device and the layer indices it holds (n_layer: the output layer)."""

    gpu: SchedGpu
    layers: tuple[int, ...] = ()


def layer_sum(gpu_layers: Sequence[GpuLayers]) -> int:
    return sum(len(g.layers) for g in gpu_layers)


class RequireFullError(Exception):
    """ErrLoadRequiredFull: the model does not fit whole, so Ollama evicts another one first."""


def greedy_fit(
    layers: Sequence[int], gpus: Sequence[SchedGpu], capacity: float, requested: int
) -> list[GpuLayers]:
    """greedyFit: from the last layer down, onto the last GPU until it is full, then the one
    before it; each GPU's room is its free memory x capacity (float32)."""
    device = len(gpus) - 1
    result = [GpuLayers(gpus[device])]
    free = int(float32(float32(gpus[device].free_bytes) * capacity))
    for i in range(len(layers) - 1, -1, -1):
        if requested >= 0 and len(layers) - 1 - i >= requested:
            break
        while True:
            if layers[i] <= free:
                result[0] = replace(result[0], layers=(i, *result[0].layers))
                free -= layers[i]
                break
            device -= 1
            if device < 0:
                return result
            result.insert(0, GpuLayers(gpus[device]))
            free = int(float32(float32(gpus[device].free_bytes) * capacity))
    return result


def by_performance(gpus: Sequence[SchedGpu]) -> list[list[SchedGpu]]:
    """ml.ByPerformance: groups of like devices (discrete or integrated), in first-seen order."""
    groups: dict[bool, list[SchedGpu]] = {}
    for gpu in gpus:
        groups.setdefault(gpu.integrated, []).append(gpu)
    return list(groups.values())


def find_best_fit(
    layers: Sequence[int],
    gpus: Sequence[SchedGpu],
    requested: int,
    force_request: bool,
    variant: LayoutVariant,
) -> list[GpuLayers]:
    """findBestFit: the smallest capacity factor that still places as many layers (so the layers
    spread evenly); from v0.12.11 per performance group, the faster group taking the last."""
    groups = by_performance(gpus) if variant >= LayoutVariant.V0_12_11 else [list(gpus)]
    result: list[GpuLayers] = []
    remaining = list(layers)
    for group in groups:
        high = FORCED_CAPACITY if requested >= 0 and force_request else 1.0
        low = 0.0
        best = greedy_fit(remaining, group, high, requested)
        most = layer_sum(best)
        if most == 0 and variant < LayoutVariant.V0_12_11:
            return best
        while float32(high - low) > SEARCH_PRECISION:
            mid = float32(float32(low + high) / 2)
            assignments = greedy_fit(remaining, group, mid, requested)
            if layer_sum(assignments) == most:
                high, best = mid, assignments
            else:
                low = mid
        remaining = remaining[: len(remaining) - layer_sum(best)]
        requested -= layer_sum(best)
        result = best + result
    return result


def assign_layers(
    layers: Sequence[int],
    gpus: Sequence[SchedGpu],
    require_full: bool,
    requested: int,
    last_used_gpu: int,
    variant: LayoutVariant,
    spread: bool = False,
) -> list[GpuLayers]:
    """assignLayers: the fewest GPUs (from the last one already used) that take every layer;
    failing that, the same without the output layer."""
    if variant >= LayoutVariant.V0_12_11 and (requested >= 0 or spread):
        gpus = [replace(g, integrated=False) for g in gpus]  # split by VRAM alone
    force_partial = variant == LayoutVariant.V0_11_5 or not require_full
    remaining = list(layers)
    result: list[GpuLayers] = []
    for _ in range(2):
        requested = min(len(remaining), requested)
        if not spread:
            for i in range(last_used_gpu, len(gpus)):
                force = i == len(gpus) - 1 and force_partial
                result = find_best_fit(remaining, gpus[: i + 1], requested, force, variant)
                if layer_sum(result) in (len(remaining), requested):
                    break
        else:
            result = find_best_fit(remaining, gpus, requested, force_partial, variant)
        if layer_sum(result) == len(remaining):
            return result
        remaining = remaining[:-1]
    return result


def build_layout(
    gpus: Sequence[SchedGpu],
    layers: Sequence[int],
    graph_bytes: Mapping[str, int],
    require_full: bool,
    num_gpu: int,
    variant: LayoutVariant,
    spread: bool = False,
    gpu_overhead: int = 0,
    backoff: float = 0.0,
) -> list[GpuLayers]:
    """buildLayout: per library, each GPU's free memory less backoff, the minimum, the overhead
    and the graph already placed on it; the library that takes the most layers wins."""
    best: list[GpuLayers] = []
    for group in by_library(by_free_memory_desc(gpus)):
        last_used = 0
        room = []
        for i, gpu in enumerate(group):
            graph = graph_bytes.get(gpu.id, 0)
            if graph:
                last_used = i
            reserved = int(float32(float32(gpu.free_bytes) * backoff))
            reserved += minimum_memory_bytes(gpu) + gpu_overhead + graph
            room.append(replace(gpu, free_bytes=max(gpu.free_bytes - reserved, 0)))
        assigned = assign_layers(layers, room, require_full, num_gpu, last_used, variant, spread)
        if layer_sum(assigned) > layer_sum(best):
            best = assigned
    # The devices as given, not with the room left on them.
    by_id = {g.id: g for g in gpus}
    return [replace(g, gpu=by_id[g.gpu.id]) for g in best]


def verify_layout(
    gpus: Sequence[SchedGpu],
    layers: Sequence[int],
    gpu_layers: Sequence[GpuLayers],
    require_full: bool,
    num_gpu: int,
    system_free: int | None = None,
    system_swap_free: int = 0,
) -> None:
    """verifyLayout's checks: a model that must load whole and does not (or whose CPU part
    exceeds free system memory) raises RequireFullError; one that exceeds free memory and swap
    fails to load, which is RequireFullError too for the plan (the model cannot stay)."""
    on_gpu = {i for g in gpu_layers for i in g.layers}
    cpu = sum(size for i, size in enumerate(layers) if i not in on_gpu)
    placed = layer_sum(gpu_layers)
    if require_full:
        if gpus and placed < len(layers) and (num_gpu < 0 or placed < num_gpu):
            raise RequireFullError("model requires more gpu memory than is currently available")
        if system_free is not None and cpu > system_free:
            raise RequireFullError("model requires more system memory than is available")
    if system_free is not None and cpu > system_free + system_swap_free:
        raise RequireFullError("model request too large for system")


def create_layout(
    gpus: Sequence[SchedGpu],
    layers: Sequence[int],
    graph_bytes: Mapping[str, int],
    require_full: bool,
    num_gpu: int,
    variant: LayoutVariant,
    spread: bool = False,
    system_free: int | None = None,
    system_swap_free: int = 0,
) -> list[GpuLayers]:
    """createLayout: buildLayout, then verifyLayout."""
    gpu_layers = build_layout(gpus, layers, graph_bytes, require_full, num_gpu, variant, spread)
    verify_layout(gpus, layers, gpu_layers, require_full, num_gpu, system_free, system_swap_free)
    return gpu_layers


def converge_layout(
    gpus: Sequence[SchedGpu],
    layers: Sequence[int],
    graph_bytes: int,
    require_full: bool,
    num_gpu: int,
    variant: LayoutVariant,
    spread: bool = False,
) -> list[GpuLayers]:
    """The loop of llamaServer.Load (v0.12.11+): lay out, put the graph on every GPU used, and
    lay out again until no more GPUs are used. Ollama's engine (ollamaServer.Load) iterates the
    same way on the sizes its runner reports, which `layers`/`graph_bytes` stand in for."""
    graphs: dict[str, int] = {}
    previous: list[GpuLayers] = []
    while True:
        current = create_layout(gpus, layers, graphs, require_full, num_gpu, variant, spread)
        if len(current) <= len(previous):
            return current
        for g in current:
            graphs[g.gpu.id] = graph_bytes
        previous = current


def llama_engine_layers(
    gpus: Sequence[SchedGpu], sizes: ModelSizes
) -> tuple[list[SchedGpu], list[int], int]:
    """llamaServer.Load (v0.12.11+) before the layout: one layer's worth held back on each GPU,
    the projector taken from the first discrete GPU, and the sizes to place (blocks with their
    KV, then the output layer); returns (GPUs, layer sizes, graph bytes)."""
    buffer = sizes.block_bytes[0] + sizes.kv_bytes[0] if sizes.n_layer else 0
    room = [replace(g, free_bytes=max(g.free_bytes - buffer, 0)) for g in gpus]
    if room:
        first = next((i for i, g in enumerate(room) if not g.integrated), 0)
        g = room[first]
        room[first] = replace(g, free_bytes=max(g.free_bytes - sizes.projector_bytes, 0))
    layers = [b + k for b, k in zip(sizes.block_bytes, sizes.kv_bytes, strict=True)]
    layers.append(sizes.output_bytes)
    return room, layers, max(sizes.graph_partial_bytes, sizes.graph_full_bytes)
