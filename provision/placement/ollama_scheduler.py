"""Where the installed Ollama itself puts a model, and with which flash-attention setting. Pure.

Our placement says where a model should run; Ollama decides on its own. This models Ollama's
decision for the family that runs GGUF models in upstream llama-server (v0.30.0 and later),
read from its source at v0.32.15 / v0.33.0-rc2, where these functions are unchanged since
v0.30.0. Names follow Ollama's so the two can be read side by side; tests/test_ollama_scheduler.py
replays Ollama's own test cases against them.

The older families are modelled next to it: llm/memory.go in ollama_memory_estimate, the
0.11.5-0.25 layout of llm/server.go in ollama_layout, and ollama_families says which applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from provision.models.spec import ModelSpec
from provision.ollama import version_tuple

# server/sched.go, bestSingleGPUFit: a GPU is used alone when the prediction is <= 80% free.
SINGLE_GPU_PERCENT = 80
# server/sched.go, load(): numParallel is forced to 1 for these architectures.
SINGLE_STREAM_ARCHS = frozenset(
    {
        "mllama",
        "qwen3vl",
        "qwen3vlmoe",
        "qwen35",
        "qwen35moe",
        "qwen3next",
        "lfm2",
        "lfm2moe",
        "nemotron_h",
        "nemotron_h_moe",
        "nemotron_h_omni",
    }
)
FIRST_LLAMA_SERVER_VERSION = (0, 30)
# ml/device.go, cudaFlashAttentionSupported: CC >= 6.0 since v0.32.0 (dba1e27fa), 7.0 before.
FLASH_ATTENTION_CC_6_SINCE = (0, 32)
# What Go's strconv.ParseBool reads as false; envconfig takes anything unparsable as true.
GO_FALSE = frozenset({"0", "f", "F", "false", "False", "FALSE"})


@dataclass(frozen=True)
class SchedGpu:
    """A device as Ollama's discovery reports it (ml.DeviceInfo)."""

    id: str
    library: str  # "CUDA", "ROCm", "Vulkan", "Metal"
    free_bytes: int
    integrated: bool = False


def uses_llama_server(version: str | None) -> bool:
    """Whether this Ollama runs GGUF models in upstream llama-server (the family modelled here).

    An unknown version is taken as current: that is what a fresh install gets."""
    parsed = version_tuple(version)
    return parsed is None or parsed[:2] >= FIRST_LLAMA_SERVER_VERSION


def effective_parallel(spec: ModelSpec, num_parallel: int) -> int:
    return 1 if spec.architecture in SINGLE_STREAM_ARCHS else max(num_parallel, 1)


def predicted_vram_bytes(spec: ModelSpec, num_ctx: int, num_parallel: int) -> int:
    """llm.PredictServerVRAM (llm/llama_server.go): the GGUF file's size plus an f16 KV cache
    for min(num_ctx, trained context) x parallel tokens, whatever OLLAMA_KV_CACHE_TYPE says; no
    compute graph, no overhead, no separate mmproj file.

    Ollama takes the smallest head_count_kv and the largest head_count of per-layer arrays; a
    ModelSpec keeps one value of each (the largest KV heads), exact for uniform models.
    """
    ctx = min(num_ctx, spec.ctx_train) if spec.ctx_train else num_ctx
    tokens = ctx * effective_parallel(spec, num_parallel)
    head_dim = spec.n_embd // spec.n_head if spec.n_head > 0 else 0
    kv = 2 * spec.n_layer * max(spec.n_head_kv, 1) * head_dim * tokens * 2
    return spec.file_bytes + kv


def by_library(gpus: Sequence[SchedGpu]) -> list[list[SchedGpu]]:
    """ml.ByLibrary: groups in the order each library first appears, devices in their order."""
    groups: dict[str, list[SchedGpu]] = {}
    for gpu in gpus:
        groups.setdefault(gpu.library, []).append(gpu)
    return list(groups.values())


def available_for_gpu(gpu: SchedGpu, system_free: int | None) -> int:
    """availableMemoryForGPU: an integrated GPU is capped by the system's free memory."""
    if gpu.integrated and system_free and system_free < gpu.free_bytes:
        return system_free
    return gpu.free_bytes


def available_for_load(gpus: Sequence[SchedGpu], system_free: int | None) -> tuple[int, bool]:
    """availableMemoryForLoad: (bytes, limited by system memory) over a set of devices."""
    discrete = sum(g.free_bytes for g in gpus if not g.integrated)
    integrated = sum(g.free_bytes for g in gpus if g.integrated)
    if integrated and system_free and system_free < integrated:
        return discrete + system_free, True
    return discrete + integrated, False


def _better(candidate: SchedGpu, current: SchedGpu | None, system_free: int | None) -> bool:
    """betterPlacementGPU: discrete wins; then strictly more available (a tie keeps the first)."""
    if current is None:
        return True
    if candidate.integrated != current.integrated:
        return not candidate.integrated
    return available_for_gpu(candidate, system_free) > available_for_gpu(current, system_free)


def best_single_gpu_fit(
    groups: Sequence[Sequence[SchedGpu]], predicted: int, system_free: int | None
) -> SchedGpu | None:
    best: SchedGpu | None = None
    for group in groups:
        for gpu in group:
            available = available_for_gpu(gpu, system_free)
            if predicted > available * SINGLE_GPU_PERCENT // 100:
                continue
            if _better(gpu, best, system_free):
                best = gpu
    return best


def best_explicit_main_gpu(
    groups: Sequence[Sequence[SchedGpu]], main_gpu: int, system_free: int | None
) -> SchedGpu | None:
    """bestExplicitMainGPU: main_gpu indexes each library group; no memory check at all."""
    if main_gpu < 0:
        return None
    best: SchedGpu | None = None
    for group in groups:
        if main_gpu < len(group) and _better(group[main_gpu], best, system_free):
            best = group[main_gpu]
    return best


def best_gpu_group(
    groups: Sequence[Sequence[SchedGpu]], system_free: int | None
) -> tuple[SchedGpu, ...]:
    """bestGPUGroupByAvailableMemory: a group with a discrete GPU, then the most free in sum."""
    best: Sequence[SchedGpu] = ()
    best_key: tuple[bool, int] | None = None
    for group in groups:
        key = (any(not g.integrated for g in group), available_for_load(group, system_free)[0])
        if best_key is None or key > best_key:
            best, best_key = group, key
    return tuple(best)


@dataclass(frozen=True)
class LlamaServerPlacement:
    gpus: tuple[SchedGpu, ...]  # the devices llama-server is started with
    main_gpu: int | None  # --split-mode none --main-gpu N when set


def select_placement(
    gpus: Sequence[SchedGpu],
    predicted: int,
    *,
    spread: bool = False,
    main_gpu: int | None = None,
    num_gpu: int = -1,
    system_free: int | None = None,
) -> LlamaServerPlacement:
    """selectLlamaServerPlacement (server/sched.go)."""
    if len(gpus) <= 1 or num_gpu == 0:
        return LlamaServerPlacement(tuple(gpus), main_gpu)
    groups = by_library(gpus)
    if main_gpu is not None:
        chosen = best_explicit_main_gpu(groups, main_gpu, system_free)
        if chosen is None:  # passed through unchanged to llama-server
            return LlamaServerPlacement(best_gpu_group(groups, system_free), main_gpu)
        return LlamaServerPlacement((chosen,), 0)  # singleLlamaServerGPUPlacement
    if not spread and predicted > 0:
        single = best_single_gpu_fit(groups, predicted, system_free)
        if single is not None:
            return LlamaServerPlacement((single,), 0)
    return LlamaServerPlacement(best_gpu_group(groups, system_free), None)


# --- flash attention ----------------------------------------------------------------------------


def cuda_flash_attention_supported(
    compute_capability: tuple[int, int] | None, version: str | None
) -> bool:
    """ml/device.go cudaFlashAttentionSupported; the driver test there (DriverMajor >= 7) holds
    for every driver this tool supports and is not repeated."""
    if compute_capability is None:
        return False
    major, minor = compute_capability
    parsed = version_tuple(version)
    floor = 6 if parsed is None or parsed[:2] >= FLASH_ATTENTION_CC_6_SINCE else 7
    return major >= floor and (major, minor) != (7, 2)


def flash_attention_supported(
    compute_capabilities: Sequence[tuple[int, int] | None], version: str | None
) -> bool:
    """Whether this Ollama turns flash attention on for these CUDA devices (all of them).

    Before v0.30 (ml.FlashAttentionSupported at v0.12.10) only compute capability 7.2 was
    refused; the per-model exceptions of that family (gemma2, key_length != value_length) are
    not modelled."""
    if uses_llama_server(version):
        return all(cuda_flash_attention_supported(cc, version) for cc in compute_capabilities)
    return all(cc is not None and cc != (7, 2) for cc in compute_capabilities)


def flash_attention_arg(
    env_value: str | None,
    compute_capabilities: Sequence[tuple[int, int] | None],
    version: str | None,
) -> str:
    """llm/llama_server.go LlamaServerFlashAttention: the --flash-attn value Ollama passes.

    OLLAMA_FLASH_ATTENTION set: on, unless it parses as false (an unparsable value is on).
    Unset or empty: auto when every selected CUDA device supports it, else off.
    """
    if env_value:
        return "off" if env_value in GO_FALSE else "on"
    supported = all(cuda_flash_attention_supported(cc, version) for cc in compute_capabilities)
    return "auto" if supported else "off"
