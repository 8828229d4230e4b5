"""Where Ollama <= 0.12.10 puts a model its llama.cpp engine runs: llm/memory.go. Pure.

Up to v0.11.4 this estimate placed every model (server/sched.go picked the GPUs with it); from
v0.11.5 to v0.12.10 it places the models the old llama.cpp engine runs (llm/server.go,
llamaServer.Load), the others going through the new-engine layout
(provision.placement.ollama_layout). Read at v0.11.4 and v0.12.10, where estimateGPULayers is
the same but for names. Names follow Ollama's; tests/test_ollama_memory_estimate.py replays
llm/memory_test.go TestEstimateGPULayers (v0.12.10) against them.

The sizes come from Ollama's own GraphSize (fs/ggml/ggml.go), transcribed for the architecture
branches below; an architecture with a branch not transcribed here falls back to the formula
Ollama uses for architectures it has no branch for, and says so (`graph_transcribed`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from provision.models.estimate import assign_layers
from provision.models.spec import ModelSpec
from provision.placement.ollama_scheduler import SchedGpu, by_library
from provision.units import MIB

# ml/device.go MinimumMemory (discover/gpu.go cudaMinimumMemory/rocmMinimumMemory up to 0.11.4).
MINIMUM_MEMORY_BYTES = 457 * MIB
MULTIMODAL_MIN_CTX = 2048  # "multimodal models require at least 2048 context" (llm/memory.go)
METAL_MINIMUM_MEMORY_BYTES = 512 * MIB
# fs/ggml/ggml.go kvCacheBytesPerElement: bytes per cache element by OLLAMA_KV_CACHE_TYPE.
KV_BYTES_PER_ELEMENT = {"q8_0": 1.0, "q4_0": 0.5, "f32": 4.0}
F16_BYTES_PER_ELEMENT = 2.0
# GraphSize's architecture branches transcribed below; others have a branch we do not model.
GRAPH_ARCHS = frozenset({"llama", "llama4", "qwen2", "gemma", "gemma2", "gemma3", "gemma3n"})
# ... and the branches GraphSize has at v0.12.10 that are not transcribed.
UNTRANSCRIBED_GRAPH_ARCHS = frozenset(
    {"mllama", "command-r", "phi2", "stablelm", "deepseek2", "chatglm", "gptoss", "gpt-oss"}
)
GEMMA3_GLOBAL_CACHE_EVERY = 6  # GraphSize: every 6th gemma3 layer caches the full context


def float32(value: float) -> float:
    """Go's float32 arithmetic, one rounding at a time (Ollama splits and scales in float32)."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


def minimum_memory_bytes(gpu: SchedGpu) -> int:
    return METAL_MINIMUM_MEMORY_BYTES if gpu.library == "Metal" else MINIMUM_MEMORY_BYTES


@dataclass(frozen=True)
class ModelSizes:
    """What estimateGPULayers reads from a model: per-block weights and KV, the output layer,
    the compute graph for a partial and a full offload, the projector of the llama engine."""

    block_bytes: tuple[int, ...]  # blk.N tensors
    kv_bytes: tuple[int, ...]  # the KV cache of blk.N
    output_bytes: int  # output_norm + output (or token_embd when the head is tied)
    graph_partial_bytes: int
    graph_full_bytes: int
    projector_bytes: int = 0  # an mmproj file (llama engine), held on the first GPU with room
    # A vision tower inside the model file (Ollama's engine): its weights and graph go with the
    # output layer (EstimateGPULayers: ollamaEngineProjectorWeights/Graph from
    # GGML.VisionGraphSize, added to memoryLastLayer).
    output_projector_bytes: int = 0

    @property
    def n_layer(self) -> int:
        return len(self.block_bytes)


def graph_transcribed(architecture: str) -> bool:
    """Whether GraphSize's branch for this architecture is the one modelled here."""
    return architecture not in UNTRANSCRIBED_GRAPH_ARCHS


def model_sizes(
    spec: ModelSpec,
    num_ctx: int,
    num_batch: int,
    num_parallel: int,
    kv_cache_type: str = "",
    projector_bytes: int = 0,
    output_projector_bytes: int = 0,
) -> ModelSizes:
    """GGML.GraphSize (fs/ggml/ggml.go) at v0.12.10, called as estimateGPULayers calls it:
    context num_ctx x parallel, batch min(num_ctx, num_batch); `kv_cache_type` is the
    OLLAMA_KV_CACHE_TYPE in effect (empty unless flash attention is on). A multimodal model
    gets at least MULTIMODAL_MIN_CTX (EstimateGPULayers raises opts.NumCtx for either kind of
    projector)."""
    if projector_bytes or output_projector_bytes:
        num_ctx = max(num_ctx, MULTIMODAL_MIN_CTX)
    context = num_ctx * num_parallel
    batch = min(num_ctx, num_batch)
    embedding, heads, heads_kv = spec.n_embd, max(spec.n_head, 1), max(spec.n_head_kv, 1)
    vocab = spec.n_vocab
    head_dim = embedding // heads  # EmbeddingHeadCountMax
    key, value = spec.key_length or head_dim, spec.value_length or head_dim
    per_element = KV_BYTES_PER_ELEMENT.get(kv_cache_type, F16_BYTES_PER_ELEMENT)
    full_kv = int(context * (key + value) * heads_kv * per_element)
    kv = [full_kv] * spec.n_layer
    arch = spec.architecture
    partial = full = 0
    if arch in ("llama", "llama4"):
        # The two mixtral special cases read tensor shapes a ModelSpec does not keep.
        full = max(
            4 * batch * (1 + 4 * embedding + context * (1 + heads)), 4 * batch * (embedding + vocab)
        )
        partial = 4 * batch * embedding + max(
            4 * batch * (1 + embedding + max(context, embedding))
            + embedding * embedding * 9 // 16
            + 4 * context * (batch * heads + head_dim * heads_kv),
            4 * batch * (embedding + vocab) + embedding * vocab * 105 // 128,
        )
    elif arch == "qwen2":
        full = max(
            4 * batch * (embedding + vocab), 4 * batch * (1 + 2 * embedding + context * (1 + heads))
        )
        partial = max(
            4 * batch * (embedding + vocab) + embedding * vocab * 105 // 128,
            4 * (batch * (1 + 2 * embedding + context * (1 + heads)) + embedding * (1 + context)),
        )
    elif arch in ("gemma", "gemma2", "gemma3", "gemma3n"):
        full = max(
            4 * batch * (embedding + vocab),
            4 * batch * (2 + context + context * heads + 2 * embedding + 2 * key * heads),
        )
        partial = max(
            4 * embedding * batch + embedding * vocab * 105 // 128 + 4 * vocab * batch,
            4 * batch * (2 * embedding + 1 + 2 * key * heads + context + context * heads)
            + 4 * key * context * 8
            + embedding * key * heads * 9 // 16,
        )
        if arch == "gemma3n":
            full, partial = full * 4, partial * 4
        if arch == "gemma3" and spec.sliding_window:
            window = num_parallel * spec.sliding_window + batch
            local = int(window * (key + value) * heads_kv * per_element)
            kv = [
                full_kv if (i + 1) % GEMMA3_GLOBAL_CACHE_EVERY == 0 else local
                for i in range(spec.n_layer)
            ]
    if partial == 0:
        # estimateGPULayers' fallback for an architecture without a branch.
        partial = (spec.n_head // heads_kv) * sum(kv) // 6
    if full == 0:
        full = partial
    blocks = spec.layer_weight_bytes
    return ModelSizes(
        tuple(blocks),
        tuple(kv),
        spec.output_bytes,
        partial,
        full,
        projector_bytes,
        output_projector_bytes,
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """MemoryEstimate (llm/memory.go): layers counts the output layer as one more."""

    layers: int
    graph_bytes: int
    vram_bytes: int
    total_bytes: int
    tensor_split: tuple[int, ...]  # layers per GPU, in the order given
    gpu_bytes: tuple[int, ...]


def estimate_gpu_layers(
    gpus: Sequence[SchedGpu], sizes: ModelSizes, num_gpu: int = -1, gpu_overhead: int = 0
) -> MemoryEstimate:
    """estimateGPULayers: the GPUs must be of one library; `gpu_overhead` is OLLAMA_GPU_OVERHEAD."""
    graph_partial, graph_full = sizes.graph_partial_bytes, sizes.graph_full_bytes
    if gpus and gpus[0].library == "Metal":
        graph_partial = graph_full
    elif len(gpus) > 1:
        graph_full = graph_partial  # several GPUs always take the partial graph
    graph = max(graph_partial, graph_full)
    n_layer = sizes.n_layer
    # One layer's worth is held back on every GPU as a buffer.
    layer_size = sizes.block_bytes[0] + sizes.kv_bytes[0] if n_layer else 0
    tensor_split = [0] * len(gpus)
    allocations = [0] * len(gpus)
    with_space: list[int] = []  # indices into gpus
    for i, gpu in enumerate(gpus):
        gpu_zero = sizes.projector_bytes if not with_space else 0
        minimum = minimum_memory_bytes(gpu)
        if gpu.free_bytes < gpu_overhead + gpu_zero + graph + minimum + 2 * layer_size:
            continue  # too little memory for any layer
        with_space.append(i)
        allocations[i] += minimum + layer_size
    overflow = 0
    if with_space:
        allocations[with_space[0]] += sizes.projector_bytes
    else:
        overflow += sizes.projector_bytes
    layer_count = 0
    # Last block first, each to the GPU at (block index mod GPUs left); a GPU that has no room
    # for it leaves the set.
    for i in range(n_layer - 1, -1, -1):
        layer_size = sizes.block_bytes[i] + sizes.kv_bytes[i]
        if 0 <= num_gpu <= layer_count:
            overflow += layer_size
            continue
        j = len(with_space)
        while j > 0:
            g = with_space[i % j]
            if gpus[g].free_bytes > gpu_overhead + allocations[g] + graph + layer_size:
                allocations[g] += layer_size
                tensor_split[g] += 1
                layer_count += 1
                break
            del with_space[i % j]
            j -= 1
        if not with_space:
            overflow += layer_size
    fully_loaded = layer_count >= n_layer
    last = sizes.output_bytes + sizes.output_projector_bytes
    if last > 0:
        if num_gpu < 0 or layer_count < num_gpu:
            for j in range(len(with_space), 0, -1):
                g = with_space[layer_count % j]
                if gpus[g].free_bytes > gpu_overhead + allocations[g] + graph + last:
                    allocations[g] += last
                    tensor_split[g] += 1
                    layer_count += 1
                    break
        if layer_count < n_layer + 1:
            fully_loaded = False
            overflow += last
    offload_graph = graph_full if fully_loaded else graph_partial
    for i in range(len(gpus)):
        if tensor_split[i] > 0:
            allocations[i] += offload_graph
    vram = sum(allocations)
    if not gpus or layer_count == 0:
        return MemoryEstimate(0, 0, 0, vram + overflow, (), ())
    return MemoryEstimate(
        layer_count, offload_graph, vram, vram + overflow, tuple(tensor_split), tuple(allocations)
    )


def predict_server_fit(
    gpus: Sequence[SchedGpu], sizes: ModelSizes, num_gpu: int = -1
) -> tuple[bool, int]:
    """predictServerFit (PredictServerFit up to 0.11.4): whether some library's GPUs hold every
    layer and the output (or num_gpu layers), and the VRAM its estimate needs."""
    vram = 0
    for group in by_library(gpus):
        estimate = estimate_gpu_layers(group, sizes, num_gpu)
        vram = estimate.vram_bytes
        wanted = sizes.n_layer + 1 if num_gpu < 0 else num_gpu
        if estimate.layers > 0 and estimate.layers >= wanted:
            return True, vram
    return False, vram


def by_free_memory_desc(gpus: Sequence[SchedGpu]) -> list[SchedGpu]:
    """sort.Sort(sort.Reverse(ByFreeMemory)): discrete before integrated, most free first; Go's
    sort is an insertion sort at these lengths, so ties keep their order, as Python's does."""
    return sorted(gpus, key=lambda g: (not g.integrated, g.free_bytes), reverse=True)


def pick_best_full_fit(
    gpus: Sequence[SchedGpu],
    sizes: ModelSizes,
    num_gpu: int = -1,
    spread: bool = False,
    single_gpus_first: bool = False,
) -> list[SchedGpu] | None:
    """pickBestFullFitByLibrary: per library, most free first, the fewest GPUs that fit.

    `single_gpus_first` is server/sched.go up to v0.11.4: every GPU alone, then all of the
    library; llm/memory.go from v0.11.5 tries the first 1, 2, ... n. OLLAMA_SCHED_SPREAD tries
    all of the library only."""
    for group in by_library(gpus):
        ordered = by_free_memory_desc(group)
        if spread:
            candidates = [ordered]
        elif single_gpus_first:
            candidates = [[g] for g in ordered] + [ordered]
        else:
            candidates = [ordered[:n] for n in range(1, len(ordered) + 1)]
        for subset in candidates:
            if predict_server_fit(subset, sizes, num_gpu)[0]:
                return subset
    return None


def pick_best_partial_fit(
    gpus: Sequence[SchedGpu], sizes: ModelSizes, num_gpu: int = -1
) -> list[SchedGpu]:
    """pickBestPartialFitByLibrary: the library whose estimate holds the most (first on a tie)."""
    groups = by_library(gpus)
    if len(groups) <= 1:
        return list(gpus)
    best, best_vram = 0, 0
    for i, group in enumerate(groups):
        vram = predict_server_fit(group, sizes, num_gpu)[1]
        if vram > best_vram:
            best, best_vram = i, vram
    return groups[best]


def llama_cpp_layers(
    tensor_split: Sequence[int], n_layer: int, num_gpu: int
) -> list[tuple[int, ...]]:
    """The layers llama.cpp's runner offloads for a count per GPU: Ollama hands it the counts
    and their total (--tensor-split and --n-gpu-layers up to v0.11.4; runner/llamarunner turns
    GPULayers back into the two after), and llama.cpp offloads the last layers in proportion
    (provision.models.estimate.assign_layers models its load_tensors). Index n_layer: output."""
    if num_gpu <= 0 or sum(tensor_split) <= 0:
        return [() for _ in tensor_split]
    blocks, output_device = assign_layers(n_layer, [float(c) for c in tensor_split], num_gpu)
    return [(*block, *((n_layer,) if output_device == d else ())) for d, block in enumerate(blocks)]


@dataclass(frozen=True)
class LegacyPlacement:
    """Where this estimate puts a model: GPU ids with the layers each holds."""

    gpus: tuple[SchedGpu, ...]  # in the runner's device order
    layers: tuple[tuple[int, ...], ...]  # per GPU; index n_layer is the output layer
    estimate: MemoryEstimate  # its tensor_split in Ollama's order of the chosen GPUs
    evicts: bool  # requireFull and no full fit: Ollama unloads another model first


def place_with_estimate(
    gpus: Sequence[SchedGpu],
    sizes: ModelSizes,
    num_gpu: int = -1,
    spread: bool = False,
    require_full: bool = False,
    single_gpus_first: bool = False,
) -> LegacyPlacement:
    """llamaServer.Load (v0.11.5-v0.12.10), or server/sched.go processPending up to v0.11.4:
    the full fit, else (first model only) the partial fit, then the estimate on those GPUs."""
    chosen = pick_best_full_fit(gpus, sizes, num_gpu, spread, single_gpus_first)
    evicts = chosen is None and require_full
    if chosen is None:
        chosen = pick_best_partial_fit(gpus, sizes, num_gpu)
    estimate = estimate_gpu_layers(chosen, sizes, num_gpu)
    offload = estimate.layers if num_gpu < 0 else num_gpu
    counts = list(zip(chosen, estimate.tensor_split or (0,) * len(chosen), strict=True))
    if not single_gpus_first:
        # From v0.11.5 the runner sees every GPU in Ollama's order and indexes the split by it
        # (runner/llamarunner, EnumerateGPUs); before, it saw only the chosen ones, in turn.
        counts.sort(key=lambda pair: [g.id for g in gpus].index(pair[0].id))
    ordered = tuple(g for g, _ in counts)
    layers = llama_cpp_layers([c for _, c in counts], sizes.n_layer, offload)
    return LegacyPlacement(ordered, tuple(layers), estimate, evicts)
