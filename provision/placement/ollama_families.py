"""Which model of Ollama's own placement applies to the installed version, and its answer. Pure.

Ollama has placed models in four ways, read from its tags (ollama/ollama):

- <= 0.11.4: server/sched.go picks the GPUs with llm/memory.go's estimate, for every model
  (ollama_memory_estimate, single GPUs first).
- 0.11.5-0.12.10: models of the llama.cpp engine go through llm/memory.go in llamaServer.Load;
  those of Ollama's own engine (OllamaEngineRequired) through the layout (ollama_layout).
- 0.12.11-0.25: every model goes through the layout of llm/server.go; memory.go is gone.
- >= 0.30: selectLlamaServerPlacement, then llama-server --fit (ollama_scheduler).

This module picks the family and asks it where a model goes (`legacy_layers`); comparing that
with the plan is provision.placement.ollama_levers' job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from provision.models.estimate import KvType, RunSettings, compute_bytes, kv_bytes
from provision.models.spec import ModelSpec
from provision.ollama import version_tuple
from provision.placement.ollama_layout import (
    RequireFullError,
    converge_layout,
    layout_variant,
    llama_engine_layers,
)
from provision.placement.ollama_memory_estimate import (
    graph_transcribed,
    llama_cpp_layers,
    model_sizes,
    place_with_estimate,
)
from provision.placement.ollama_scheduler import SchedGpu, effective_parallel

DEFAULT_NUM_BATCH = 512  # api.DefaultOptions NumBatch


class Family(StrEnum):
    MEMORY_ESTIMATE = "llm/memory.go estimate"
    LAYOUT = "llm/server.go layout"
    LLAMA_SERVER = "llama-server"


# fs/ggml/ggml.go OllamaEngineRequired: the architectures Ollama's own engine runs, by the first
# release whose list changed (read at every tag from v0.11.0 to v0.25).
_ENGINE_0_11_0 = ("gemma3", "gemma3n", "mistral3", "llama4", "mllama", "qwen25vl", "gptoss")
_ENGINE_0_12_7 = (*_ENGINE_0_11_0, "gpt-oss", "qwen3", "qwen3moe", "qwen3vl", "qwen3vlmoe")
_ENGINE_0_13_4 = (*_ENGINE_0_12_7, "deepseekocr", "deepseek2", "nomic-bert", "olmo3")
_ENGINE_0_15_5 = (*_ENGINE_0_13_4, "bert", "glm4moelite", "lfm2", "qwen3next", "glmocr")
_ENGINE_0_17_1 = (*_ENGINE_0_15_5, "nemotron_h", "nemotron_h_moe", "qwen35", "qwen35moe", "lfm2moe")
ENGINE_REQUIRED_SINCE: tuple[tuple[tuple[int, int, int], frozenset[str]], ...] = (
    ((0, 11, 0), frozenset(_ENGINE_0_11_0)),
    ((0, 11, 5), frozenset((*_ENGINE_0_11_0, "gpt-oss"))),
    ((0, 12, 0), frozenset((*_ENGINE_0_11_0, "gpt-oss", "qwen3"))),
    ((0, 12, 2), frozenset((*_ENGINE_0_11_0, "gpt-oss", "qwen3", "qwen3moe"))),
    ((0, 12, 5), frozenset((*_ENGINE_0_11_0, "gpt-oss", "qwen3moe"))),
    ((0, 12, 6), frozenset((*_ENGINE_0_11_0, "gpt-oss", "qwen3", "qwen3moe"))),
    ((0, 12, 7), frozenset(_ENGINE_0_12_7)),
    ((0, 13, 0), frozenset((*_ENGINE_0_12_7, "deepseekocr", "deepseek2"))),
    ((0, 13, 1), frozenset((*_ENGINE_0_12_7, "deepseekocr", "deepseek2", "nomic-bert"))),
    ((0, 13, 4), frozenset(_ENGINE_0_13_4)),
    ((0, 13, 5), frozenset((*_ENGINE_0_13_4, "bert"))),
    ((0, 14, 3), frozenset((*_ENGINE_0_13_4, "bert", "glm4moelite", "lfm2"))),
    ((0, 15, 5), frozenset(_ENGINE_0_15_5)),
    ((0, 17, 1), frozenset(_ENGINE_0_17_1)),
    ((0, 20, 0), frozenset((*_ENGINE_0_17_1, "gemma4"))),
    ((0, 22, 0), frozenset((*_ENGINE_0_17_1, "gemma4", "laguna", "nemotron_h_omni"))),
)
FIRST_MEMORY_ESTIMATE_FREE = (0, 11, 5)  # llm/memory.go no longer places Ollama-engine models
FIRST_LAYOUT_FOR_ALL = (0, 12, 11)  # llm/memory.go removed
FIRST_LLAMA_SERVER = (0, 30, 0)


def ollama_engine_required(architecture: str, version: tuple[int, ...]) -> bool:
    """Whether Ollama's own engine runs this architecture (the last list at or before it)."""
    names: frozenset[str] = frozenset()
    for since, listed in ENGINE_REQUIRED_SINCE:
        if version[:3] >= since:
            names = listed
    return architecture in names


def family(version: str | None, architecture: str) -> Family:
    """The family that places this model; an unknown version is current (llama-server)."""
    parsed = version_tuple(version)
    if parsed is None or parsed[:3] >= FIRST_LLAMA_SERVER:
        return Family.LLAMA_SERVER
    if parsed[:3] >= FIRST_LAYOUT_FOR_ALL:
        return Family.LAYOUT
    if parsed[:3] >= FIRST_MEMORY_ESTIMATE_FREE and ollama_engine_required(architecture, parsed):
        return Family.LAYOUT
    return Family.MEMORY_ESTIMATE


@dataclass(frozen=True)
class OllamaLayers:
    """Where a pre-0.30 Ollama puts a model: (GPU id, layer indices) for every GPU with layers;
    index n_layer is the output layer."""

    family: Family
    gpu_layers: tuple[tuple[str, tuple[int, ...]], ...]
    evicts: bool  # it does not fit beside the models already loaded: Ollama unloads one first
    sizes_note: str = ""  # where the bytes it decided on are not Ollama's own, why


def legacy_layers(
    spec: ModelSpec,
    settings: RunSettings,
    gpus: Sequence[SchedGpu],
    version: str,
    num_gpu: int = -1,
    spread: bool = False,
    require_full: bool = False,
    num_batch: int | None = None,
) -> OllamaLayers:
    """Ollama's answer for one model on these GPUs (their free memory as Ollama sees it)."""
    parsed = version_tuple(version) or (0, 0, 0)
    which = family(version, spec.architecture)
    parallel = effective_parallel(spec, settings.parallel)
    # The KV type only applies with flash attention (llm/memory.go, llamaServer.Load).
    kv_type = settings.kv_type.value if settings.flash_attention else KvType.F16.value
    batch = num_batch or DEFAULT_NUM_BATCH
    graph_note = "" if graph_transcribed(spec.architecture) else "its graph size approximated"
    if which == Family.MEMORY_ESTIMATE:
        # llm/memory.go EstimateGPULayers (v0.11.4, v0.12.10): a projector file of the llama
        # engine counts its weights on GPU 0 (gpuZeroOverhead); a vision tower inside the model
        # its weights and graph with the output layer (VisionGraphSize, memoryLastLayer).
        separate = spec.projector_bytes if spec.projector_separate else 0
        inside = 0 if spec.projector_separate else spec.projector_bytes + spec.projector_graph_bytes
        sizes = model_sizes(spec, settings.ctx_tokens, batch, parallel, kv_type, separate, inside)
        placed = place_with_estimate(
            gpus,
            sizes,
            num_gpu,
            spread,
            require_full,
            single_gpus_first=parsed[:3] < FIRST_MEMORY_ESTIMATE_FREE,
        )
        pairs = tuple(
            (g.id, layers) for g, layers in zip(placed.gpus, placed.layers, strict=True) if layers
        )
        return OllamaLayers(which, pairs, placed.evicts, graph_note)
    variant = layout_variant(parsed)
    if ollama_engine_required(spec.architecture, parsed):
        # Ollama's engine lays out what its runner reports; ours is the estimate of that.
        ours = settings
        layers = [
            spec.layer_weight_bytes[il] + kv_bytes(spec, ours, [il]) for il in range(spec.n_layer)
        ]
        # Its backend loads v./mm. tensors with the output layer (ml/backend/ggml/ggml.go New:
        # "TODO: assign vision tensors to the gpu if possible"), and the runner reserves the
        # vision graph of a worst-case image there too (ollamarunner reserveWorstCaseGraph).
        layers.append(spec.output_bytes + spec.projector_bytes + spec.projector_graph_bytes)
        graph = compute_bytes(spec, ours, holds_output=True)
        room, note = list(gpus), "on our estimate of what its runner reports"
    else:
        # No projector: llamaServer.Load (v0.12.11 to v0.24.0) sums projectorMemoryRequirements
        # over loadRequest.LoraPath, not ProjectorPath, so the mmproj it loads is not counted.
        sizes = model_sizes(spec, settings.ctx_tokens, batch, parallel, kv_type)
        room, layers, graph = llama_engine_layers(gpus, sizes)
        note = graph_note
    evicts = False
    try:
        laid = converge_layout(room, layers, graph, require_full, num_gpu, variant, spread)
    except RequireFullError:
        evicts = True
        laid = converge_layout(room, layers, graph, False, num_gpu, variant, spread)
    used = [g for g in laid if g.layers]
    if not ollama_engine_required(spec.architecture, parsed):
        # The llama.cpp runner gets only the count per GPU and splits them itself.
        counts = [len(g.layers) for g in used]
        split = llama_cpp_layers(counts, spec.n_layer, sum(counts))
        return OllamaLayers(
            which, tuple((g.gpu.id, s) for g, s in zip(used, split, strict=True)), evicts, note
        )
    return OllamaLayers(which, tuple((g.gpu.id, g.layers) for g in used), evicts, note)
