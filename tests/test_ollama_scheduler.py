"""Ollama's own test cases, transcribed as data and replayed against our model of its scheduler.

Sources (ollama/ollama at v0.33.0-rc2, identical in v0.32.15): server/sched_test.go
TestSelectLlamaServerPlacement and TestAvailableMemoryForLoadUsesWorstSharedMemoryMeasurement and
TestSchedLlamaServerPredictionUsesTotalParallelContext; ml/device_test.go
TestFlashAttentionSupported; llm/llama_server_test.go TestAppendFlashAttentionArgs. Sizes in
those tests are format.GigaByte (10^9 bytes).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from provision.models import catalog
from provision.placement.ollama_scheduler import (
    SchedGpu,
    available_for_load,
    cuda_flash_attention_supported,
    flash_attention_arg,
    flash_attention_supported,
    predicted_vram_bytes,
    select_placement,
    uses_llama_server,
)

GB = 10**9
MIB = 1024**2


def _gpu(id_: str, lib: str, free_gb: float, integrated: bool = False) -> SchedGpu:
    return SchedGpu(id_, lib, int(free_gb * GB), integrated)


# (name, predicted GB, gpus, spread, main_gpu, want: (count, library, id or None, main_gpu))
PLACEMENT_CASES = [
    (
        "compacts onto largest same-backend GPU",
        8,
        [_gpu("0", "CUDA", 10), _gpu("1", "CUDA", 20)],
        False,
        None,
        (1, "CUDA", "1", 0),
    ),
    (
        "explicit main gpu selects matching backend group",
        8,
        [_gpu("0", "CUDA", 10), _gpu("0", "ROCm", 20), _gpu("1", "ROCm", 24)],
        False,
        1,
        (1, "ROCm", "1", 0),
    ),
    (
        "integrated GPU is capped by system free memory",
        12,
        [_gpu("0", "Metal", 32, integrated=True), _gpu("1", "Metal", 16)],
        False,
        None,
        (1, "Metal", "1", 0),
    ),
    (
        "prefers discrete GPU over integrated GPU with more available memory",
        8,
        [_gpu("0", "Vulkan", 32, integrated=True), _gpu("1", "Vulkan", 10)],
        False,
        None,
        (1, "Vulkan", "1", 0),
    ),
    (
        "spread disables automatic compaction",
        8,
        [_gpu("0", "CUDA", 10), _gpu("1", "CUDA", 20)],
        True,
        None,
        (2, "CUDA", None, None),
    ),
    (
        "no single fit chooses best backend group for llama-server split",
        30,
        [_gpu("0", "CUDA", 10), _gpu("1", "CUDA", 18), _gpu("0", "ROCm", 12)],
        False,
        None,
        (2, "CUDA", None, None),
    ),
]


@pytest.mark.parametrize(
    ("predicted_gb", "gpus", "spread", "main_gpu", "want"),
    [case[1:] for case in PLACEMENT_CASES],
    ids=[case[0] for case in PLACEMENT_CASES],
)
def test_select_llama_server_placement(
    predicted_gb: int,
    gpus: list[SchedGpu],
    spread: bool,
    main_gpu: int | None,
    want: tuple[int, str, str | None, int | None],
) -> None:
    placement = select_placement(
        gpus, predicted_gb * GB, spread=spread, main_gpu=main_gpu, system_free=14 * GB
    )
    count, library, gpu_id, launch_main_gpu = want
    assert len(placement.gpus) == count
    assert placement.gpus[0].library == library
    if gpu_id is not None:
        assert placement.gpus[0].id == gpu_id
    assert placement.main_gpu == launch_main_gpu


# (name, system free GB, gpus, want available GB, want system limited)
AVAILABLE_CASES = [
    ("integrated metal uses lower system free", 80, [_gpu("0", "Metal", 300, True)], 80, True),
    ("integrated gpu uses lower system free", 6, [_gpu("0", "Vulkan", 12, True)], 6, True),
    ("discrete metal ignores lower system free", 6, [_gpu("0", "Metal", 12)], 12, False),
    ("discrete gpu ignores lower system free", 6, [_gpu("0", "CUDA", 12)], 12, False),
    (
        "mixed gpus only clamp integrated contribution",
        6,
        [_gpu("0", "CUDA", 12), _gpu("1", "Vulkan", 10, True)],
        18,
        True,
    ),
    ("shared gpu keeps lower adjusted gpu baseline", 20, [_gpu("0", "Metal", 12, True)], 12, False),
]


@pytest.mark.parametrize(
    ("system_gb", "gpus", "want_gb", "limited"),
    [case[1:] for case in AVAILABLE_CASES],
    ids=[case[0] for case in AVAILABLE_CASES],
)
def test_available_memory_for_load(
    system_gb: int, gpus: list[SchedGpu], want_gb: int, limited: bool
) -> None:
    assert available_for_load(gpus, system_gb * GB) == (want_gb * GB, limited)


def test_prediction_uses_the_total_parallel_context() -> None:
    """TestSchedLlamaServerPredictionUsesTotalParallelContext: a one-block llama, 4096 wide, 32
    heads and 32 KV heads, trained on 65536, num_ctx 32768 x OLLAMA_NUM_PARALLEL 2: the f16 KV
    is 2 * 1 * 32 * 128 * 65536 * 2 bytes = 1 GiB, above 80% of 900 MiB free, so Ollama evicts."""
    base = catalog.lookup("llama3.1:8b")
    assert base is not None
    spec = replace(
        base, n_layer=1, n_embd=4096, n_head=32, n_head_kv=32, ctx_train=65536, file_bytes=0
    )
    predicted = predicted_vram_bytes(spec, 32768, 2)
    assert predicted == 1024**3
    assert predicted > 900 * MIB * 80 // 100


def test_prediction_caps_the_context_at_the_trained_length() -> None:
    spec = catalog.lookup("llama3.1:8b")
    assert spec is not None and spec.ctx_train is not None
    assert predicted_vram_bytes(spec, 10 * spec.ctx_train, 1) == predicted_vram_bytes(
        spec, spec.ctx_train, 1
    )


# ml/device_test.go TestFlashAttentionSupported (CUDA, driver 12): compute capability -> supported
@pytest.mark.parametrize(
    ("cc", "supported"),
    [
        ((5, 0), False),
        ((6, 0), True),
        ((6, 1), True),
        ((6, 2), True),
        ((7, 2), False),
        ((7, 0), True),
        ((7, 5), True),
        ((8, 9), True),
        ((-1, -1), False),
    ],
)
def test_flash_attention_supported(cc: tuple[int, int], supported: bool) -> None:
    assert cuda_flash_attention_supported(cc, "0.32.15") is supported


def test_flash_attention_needs_cc_7_before_0_32() -> None:
    """v0.30.x-v0.31.x read `ComputeMajor < 7` (changed in dba1e27fa, first in v0.32.0)."""
    assert not cuda_flash_attention_supported((6, 1), "0.31.2")
    assert cuda_flash_attention_supported((7, 5), "0.31.2")


SUPPORTED = [(8, 9)]
OLD = [(8, 9), (5, 0)]


# llm/llama_server_test.go TestAppendFlashAttentionArgs: OLLAMA_FLASH_ATTENTION, GPUs -> flag
@pytest.mark.parametrize(
    ("env", "ccs", "want"),
    [
        (None, SUPPORTED, "auto"),
        ("", SUPPORTED, "auto"),
        ("0", SUPPORTED, "off"),
        ("false", SUPPORTED, "off"),
        ("1", SUPPORTED, "on"),
        ("true", SUPPORTED, "on"),
        ("random", SUPPORTED, "on"),
        (None, OLD, "off"),
        ("1", OLD, "on"),
    ],
)
def test_flash_attention_arg(env: str | None, ccs: list[tuple[int, int]], want: str) -> None:
    assert flash_attention_arg(env, ccs, "0.32.15") == want


@pytest.mark.parametrize(
    ("version", "family"),
    [(None, True), ("0.30.0", True), ("0.33.0-rc2", True), ("0.12.10", False), ("0.25.3", False)],
)
def test_which_versions_run_llama_server(version: str | None, family: bool) -> None:
    assert uses_llama_server(version) is family


def test_before_0_30_only_cc_7_2_is_refused() -> None:
    """ml.FlashAttentionSupported at v0.12.10 tests the driver (>= 7) and CC 7.2, not a floor."""
    assert flash_attention_supported([(3, 7), (8, 6)], "0.12.6")
    assert not flash_attention_supported([(7, 2)], "0.12.6")
    assert not flash_attention_supported([(3, 7)], "0.32.15")
