"""Ollama's llm/server_test.go TestLLMServerFitGPU, transcribed as data and replayed against our
model of its layout (createLayout on a runner-reported memory of `layers`, no graph yet).

v0.24.0 has 21 cases (the same up to v0.25); v0.12.10 has the first 15 of them (its "No GPU"
case without requireFull) and runs them against the v0.12.6-v0.12.10 assignLayers. The system
in every case has 1 GiB, 512 MiB free and 256 MiB of swap free.
"""

from __future__ import annotations

import pytest

from provision.placement.ollama_layout import (
    LayoutVariant,
    RequireFullError,
    converge_layout,
    create_layout,
    layout_variant,
)
from provision.placement.ollama_scheduler import SchedGpu

MIB = 1024**2
MIN = 457 * MIB  # minMemory in the Go test


def _gpu(id_: str, free: int, library: str = "", integrated: bool = False) -> SchedGpu:
    return SchedGpu(id_, library, free, integrated)


G0_128 = _gpu("gpu0", 128 * MIB + MIN)
G1_256 = _gpu("gpu1", 256 * MIB + MIN)
ONE_256 = [_gpu("gpu0", 256 * MIB + MIN)]
TWO = [G0_128, G1_256]
IGPU = [G0_128, _gpu("gpu1", 256 * MIB + MIN, integrated=True)]
L50x3 = [50, 50, 50]
L100x4 = [100, 100, 100, 100]
L256_50_50 = [256, 50, 50]
L256_256_50 = [256, 256, 50]
FULL = "ErrLoadRequiredFull"

# (name, gpus, layers in MiB, numGPU, requireFull, expected [(id, layers)] or FULL)
CASES_0_24 = [
    ("No GPU", [], L50x3, -1, True, []),
    ("Full single GPU", ONE_256, L50x3, -1, False, [("gpu0", [0, 1, 2])]),
    ("Partial single GPU", ONE_256, L100x4, -1, False, [("gpu0", [1, 2])]),
    ("Single GPU with numGPU 1", ONE_256, L50x3, 1, False, [("gpu0", [1])]),
    ("Single GPU with numGPU 0", ONE_256, L50x3, 0, False, []),
    ("Single GPU with numGPU 999", ONE_256, L100x4, 999, False, [("gpu0", [0, 1, 2, 3])]),
    ("Multi GPU fits on one", TWO, L50x3, -1, False, [("gpu1", [0, 1, 2])]),
    ("Multi GPU split", TWO, L256_50_50, -1, False, [("gpu1", [0]), ("gpu0", [1, 2])]),
    ("Multi GPU partial", TWO, L256_256_50, -1, False, [("gpu1", [1])]),
    ("Multi GPU numGPU 1", TWO, L50x3, 1, False, [("gpu1", [1])]),
    ("Multi GPU numGPU 2", TWO, L256_50_50, 2, False, [("gpu1", [0]), ("gpu0", [1])]),
    ("Multi GPU numGPU 999", TWO, L256_256_50, 999, False, [("gpu1", [0, 1]), ("gpu0", [2])]),
    (
        "Multi GPU different libraries",
        [_gpu("gpu0", 128 * MIB + MIN, "CUDA"), _gpu("gpu1", 256 * MIB + MIN, "ROCm")],
        [128, 128, 50],
        -1,
        False,
        [("gpu1", [0, 1])],
    ),
    ("requireFull", ONE_256, L100x4, -1, True, FULL),
    ("requireFull numGPU", [_gpu("gpu0", 256 * MIB)], L100x4, 4, True, FULL),
    (
        "iGPU",
        [_gpu("gpu0", 256 * MIB + MIN, integrated=True)],
        L50x3,
        -1,
        False,
        [("gpu0", [0, 1, 2])],
    ),
    ("iGPU + dGPU", IGPU, L50x3, -1, False, [("gpu1", [0]), ("gpu0", [1, 2])]),
    ("iGPU + dGPU fits on one", IGPU, [50, 50], -1, False, [("gpu0", [0, 1])]),
    ("iGPU + dGPU partial", IGPU, L100x4, -1, False, [("gpu1", [0, 1]), ("gpu0", [2])]),
    ("iGPU + dGPU numGPU 1", IGPU, L100x4, 1, False, [("gpu0", [2])]),
    ("iGPU + dGPU numGPU 999", IGPU, L100x4, 999, False, [("gpu0", [0]), ("gpu1", [1, 2, 3])]),
]
# v0.12.10: the first 15, "No GPU" without requireFull.
CASES_0_12_10 = [("No GPU", [], L50x3, -1, False, []), *CASES_0_24[1:15]]


def _run(
    gpus: list[SchedGpu],
    layers_mib: list[int],
    num_gpu: int,
    require_full: bool,
    variant: LayoutVariant,
) -> list[tuple[str, list[int]]] | str:
    layers = [size * MIB for size in layers_mib]
    try:
        laid = create_layout(
            gpus,
            layers,
            {},
            require_full,
            num_gpu,
            variant,
            system_free=512 * MIB,
            system_swap_free=256 * MIB,
        )
    except RequireFullError:
        return FULL
    # GPULayersList.Hash: the devices that hold layers, in order.
    return [(g.gpu.id, list(g.layers)) for g in laid if g.layers]


@pytest.mark.parametrize(
    ("gpus", "layers", "num_gpu", "require_full", "expected"),
    [c[1:] for c in CASES_0_24],
    ids=[c[0] for c in CASES_0_24],
)
def test_llm_server_fit_gpu_v0_24(
    gpus: list[SchedGpu],
    layers: list[int],
    num_gpu: int,
    require_full: bool,
    expected: list[tuple[str, list[int]]] | str,
) -> None:
    assert _run(gpus, layers, num_gpu, require_full, LayoutVariant.V0_12_11) == expected


@pytest.mark.parametrize(
    ("gpus", "layers", "num_gpu", "require_full", "expected"),
    [c[1:] for c in CASES_0_12_10],
    ids=[c[0] for c in CASES_0_12_10],
)
def test_llm_server_fit_gpu_v0_12_10(
    gpus: list[SchedGpu],
    layers: list[int],
    num_gpu: int,
    require_full: bool,
    expected: list[tuple[str, list[int]]] | str,
) -> None:
    assert _run(gpus, layers, num_gpu, require_full, LayoutVariant.V0_12_6) == expected


@pytest.mark.parametrize(
    ("version", "variant"),
    [
        ((0, 11, 5), LayoutVariant.V0_11_5),
        ((0, 12, 5), LayoutVariant.V0_11_5),
        ((0, 12, 6), LayoutVariant.V0_12_6),
        ((0, 12, 10), LayoutVariant.V0_12_6),
        ((0, 12, 11), LayoutVariant.V0_12_11),
        ((0, 25, 0), LayoutVariant.V0_12_11),
    ],
)
def test_layout_variant_by_version(version: tuple[int, ...], variant: LayoutVariant) -> None:
    assert layout_variant(version) == variant


def test_the_graph_placed_on_a_gpu_can_pull_in_another() -> None:
    """llamaServer.Load (v0.12.11+): the first layout ignores the graph; once it is reserved on
    the GPU used, the layers no longer fit there and a second GPU joins, then both keep it."""
    gpus = [_gpu("gpu0", 300 * MIB + MIN), _gpu("gpu1", 300 * MIB + MIN)]
    layers = [90 * MIB] * 3
    first = create_layout(gpus, layers, {}, False, -1, LayoutVariant.V0_12_11)
    assert [g.gpu.id for g in first if g.layers] == ["gpu0"]
    laid = converge_layout(gpus, layers, 100 * MIB, False, -1, LayoutVariant.V0_12_11)
    # The last GPU in free-memory order (ties keep their order) takes the last layers.
    assert [(g.gpu.id, list(g.layers)) for g in laid] == [("gpu0", [0]), ("gpu1", [1, 2])]
