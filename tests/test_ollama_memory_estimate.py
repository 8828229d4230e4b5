"""Ollama's llm/memory_test.go TestEstimateGPULayers (v0.12.10, the last release with
llm/memory.go), transcribed as data and replayed against our model of that estimate.

The test writes a 5-block llama GGUF (every tensor one f32 of 4 bytes, embedding 4096, 32 heads,
32 KV heads, a vocabulary of one token) and runs it at OLLAMA_CONTEXT_LENGTH=2048 with the
default batch (512) and one parallel stream.
"""

from __future__ import annotations

import pytest

from provision.models.spec import ModelSpec
from provision.placement.ollama_memory_estimate import (
    MINIMUM_MEMORY_BYTES,
    ModelSizes,
    SchedGpu,
    estimate_gpu_layers,
    llama_cpp_layers,
    model_sizes,
    pick_best_full_fit,
    place_with_estimate,
)

MIB = 1024**2
N_BLOCKS = 5

DUMMY = ModelSpec(
    name="dummy",
    source="gguf",
    architecture="llama",
    quant=None,
    n_layer=N_BLOCKS,
    n_embd=4096,
    n_ff=None,
    n_head=32,
    n_head_kv=32,
    key_length=128,
    value_length=128,
    n_vocab=1,
    ctx_train=32,
    sliding_window=None,
    swa_layers=(False,) * N_BLOCKS,
    n_expert=None,
    n_expert_used=None,
    layer_weight_bytes=(4,) * N_BLOCKS,
    input_bytes=0,
    output_bytes=4,  # output.weight, no output_norm
    file_bytes=0,
    kv_known=True,
)

# The constants the Go test states as "derived from the dummy ggml file above".
GRAPH_PARTIAL = 202377216
GRAPH_FULL = 171968512
LAYER_SIZE = 33554436  # blk.0 (4 bytes) + its f16 KV at 2048 tokens
OUTPUT = 4


@pytest.fixture(scope="module")
def sizes() -> ModelSizes:
    return model_sizes(DUMMY, num_ctx=2048, num_batch=512, num_parallel=1)


def test_graph_size_matches_the_constants_of_the_go_test(sizes: ModelSizes) -> None:
    assert sizes.graph_partial_bytes == GRAPH_PARTIAL
    assert sizes.graph_full_bytes == GRAPH_FULL
    assert sizes.block_bytes[0] + sizes.kv_bytes[0] == LAYER_SIZE
    assert sizes.output_bytes == OUTPUT


def test_cpu(sizes: ModelSizes) -> None:
    estimate = estimate_gpu_layers([], sizes)
    assert (estimate.layers, estimate.graph_bytes) == (0, 0)


# Dual CUDA, asymmetric: room for (layer0, layer1) layers -> expected layers (gpu0, gpu1).
DUAL_CUDA_CASES = [
    ((1, 1), (1, 1)),
    ((2, 1), (2, 1)),
    ((2, 2), (2, 2)),
    ((1, 2), (1, 2)),
    ((3, 3), (3, 3)),
    ((4, 4), (3, 3)),
    ((6, 6), (3, 3)),
    ((0, 3), (0, 3)),
]


@pytest.mark.parametrize(
    ("room", "expected"), DUAL_CUDA_CASES, ids=[str(c) for c in DUAL_CUDA_CASES]
)
def test_estimate_gpu_layers_dual_cuda(
    sizes: ModelSizes, room: tuple[int, int], expected: tuple[int, int]
) -> None:
    free = []
    for i, layers in enumerate(room):
        bytes_ = MINIMUM_MEMORY_BYTES + LAYER_SIZE + layers * LAYER_SIZE + 1
        bytes_ += max(GRAPH_FULL, GRAPH_PARTIAL)
        # The output layer's room goes to GPU 0, or to GPU 1 when GPU 0 has none.
        if (i == 0) == (room[0] > 0):
            bytes_ += OUTPUT
        free.append(bytes_)
    gpus = [SchedGpu("", "CUDA", free[0]), SchedGpu("", "CUDA", free[1])]
    estimate = estimate_gpu_layers(gpus, sizes)
    assert estimate.layers == sum(expected)
    assert estimate.tensor_split == expected
    if estimate.layers < N_BLOCKS + 1:
        assert estimate.vram_bytes < estimate.total_bytes
        assert estimate.vram_bytes == sum(estimate.gpu_bytes)
    else:
        assert estimate.vram_bytes == estimate.total_bytes
        assert estimate.total_bytes == sum(estimate.gpu_bytes)


# --- beyond Ollama's table: the choices the plan relies on ------------------------------------


def test_full_fit_prefers_the_gpu_with_most_free(sizes: ModelSizes) -> None:
    room = MINIMUM_MEMORY_BYTES + GRAPH_PARTIAL + 8 * LAYER_SIZE
    small, large = SchedGpu("a", "CUDA", room), SchedGpu("b", "CUDA", room + MIB)
    assert pick_best_full_fit([small, large], sizes) == [large]
    # Up to v0.11.4 the scheduler tries each GPU alone, most free first: the same answer here.
    assert pick_best_full_fit([small, large], sizes, single_gpus_first=True) == [large]


def test_spread_takes_every_gpu_of_the_library(sizes: ModelSizes) -> None:
    room = MINIMUM_MEMORY_BYTES + GRAPH_PARTIAL + 8 * LAYER_SIZE
    gpus = [SchedGpu("a", "CUDA", room), SchedGpu("b", "CUDA", room + MIB)]
    assert pick_best_full_fit(gpus, sizes, spread=True) == [gpus[1], gpus[0]]


def test_llama_cpp_offloads_the_last_layers_of_the_counts() -> None:
    """The runner gets a count per GPU and their total, and llama.cpp offloads the last layers:
    num_gpu 4 of 5 blocks + output is blocks 2-4 and the output (index 5)."""
    sizes = ModelSizes((4,) * N_BLOCKS, (LAYER_SIZE - 4,) * N_BLOCKS, OUTPUT, 1, 1)
    gpus = [SchedGpu("a", "CUDA", 2 * 1024 * MIB)]
    assert place_with_estimate(gpus, sizes, num_gpu=4).layers == ((2, 3, 4, 5),)
    assert llama_cpp_layers((3, 3), N_BLOCKS, 6) == [(0, 1, 2), (3, 4, 5)]


def test_up_to_0_11_4_a_model_too_big_for_one_gpu_takes_them_all(sizes: ModelSizes) -> None:
    """server/sched.go (<= 0.11.4) tries each GPU alone, then the whole library; llm/memory.go
    (0.11.5-0.12.10) tries the 1, 2, ... GPUs with most free: two of three here."""
    room = MINIMUM_MEMORY_BYTES + GRAPH_PARTIAL + 4 * LAYER_SIZE
    gpus = [SchedGpu(name, "CUDA", room + i) for i, name in enumerate("abc")]
    assert [g.id for g in pick_best_full_fit(gpus, sizes) or []] == ["c", "b"]
    old = pick_best_full_fit(gpus, sizes, single_gpus_first=True) or []
    assert [g.id for g in old] == ["c", "b", "a"]


# --- projectors (llm/memory.go EstimateGPULayers, v0.11.4 and v0.12.10) ------------------------

VISION = 800 * MIB


def test_a_projector_file_is_counted_on_gpu_0_and_a_vision_tower_with_the_output() -> None:
    """The llama engine's mmproj weights go to the first GPU with room (gpuZeroOverhead); the
    Ollama engine's vision weights and graph (VisionGraphSize) go with the output layer, on
    whichever GPU takes it (memoryLastLayer)."""
    room = MINIMUM_MEMORY_BYTES + GRAPH_PARTIAL + 4 * LAYER_SIZE + VISION + 1
    gpus = [SchedGpu("0", "CUDA", room), SchedGpu("1", "CUDA", room)]
    plain = estimate_gpu_layers(gpus, model_sizes(DUMMY, 2048, 512, 1))
    separate = estimate_gpu_layers(gpus, model_sizes(DUMMY, 2048, 512, 1, "", VISION))
    inside = estimate_gpu_layers(gpus, model_sizes(DUMMY, 2048, 512, 1, "", 0, VISION))
    assert separate.gpu_bytes[0] - plain.gpu_bytes[0] == VISION
    assert separate.gpu_bytes[1] == plain.gpu_bytes[1]
    # The output goes to the GPU at (blocks placed mod GPUs with space): GPU 1 after 5 blocks.
    output_gpu = N_BLOCKS % 2
    assert inside.gpu_bytes[output_gpu] - plain.gpu_bytes[output_gpu] == VISION
    assert inside.gpu_bytes[1 - output_gpu] == plain.gpu_bytes[1 - output_gpu]


def test_a_vision_tower_too_big_beside_the_output_leaves_the_output_on_the_cpu() -> None:
    room = MINIMUM_MEMORY_BYTES + GRAPH_PARTIAL + 8 * LAYER_SIZE
    gpu = [SchedGpu("0", "CUDA", room)]
    assert estimate_gpu_layers(gpu, model_sizes(DUMMY, 2048, 512, 1)).layers == N_BLOCKS + 1
    big = estimate_gpu_layers(gpu, model_sizes(DUMMY, 2048, 512, 1, "", 0, room))
    assert big.layers == N_BLOCKS  # the blocks only: the output layer and its tower overflow
    assert big.total_bytes > big.vram_bytes


def test_a_multimodal_model_gets_at_least_2048_tokens() -> None:
    small = model_sizes(DUMMY, 512, 512, 1)
    assert model_sizes(DUMMY, 512, 512, 1, "", VISION).kv_bytes[0] == 4 * small.kv_bytes[0]
    assert model_sizes(DUMMY, 512, 512, 1, "", 0, VISION).kv_bytes[0] == 4 * small.kv_bytes[0]
