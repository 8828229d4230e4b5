"""Which model of Ollama's placement applies to which installed version and architecture."""

from __future__ import annotations

from dataclasses import replace

import pytest

from provision.models.estimate import RunSettings, Runtime
from provision.models.refs import resolve, with_projector
from provision.models.spec import ModelSpec
from provision.placement.ollama_families import (
    Family,
    family,
    legacy_layers,
    ollama_engine_required,
)
from provision.placement.ollama_scheduler import SchedGpu


@pytest.mark.parametrize(
    ("version", "arch", "expected"),
    [
        ("0.5.7", "llama", Family.MEMORY_ESTIMATE),
        ("0.11.4", "gemma3", Family.MEMORY_ESTIMATE),  # every model, either engine
        ("0.11.5", "llama", Family.MEMORY_ESTIMATE),
        ("0.11.5", "gemma3", Family.LAYOUT),  # Ollama's own engine
        ("0.12.6", "qwen2", Family.MEMORY_ESTIMATE),
        ("0.12.6", "qwen3", Family.LAYOUT),
        ("0.12.5", "qwen3", Family.MEMORY_ESTIMATE),  # dropped from the list in 0.12.5 only
        ("0.12.10", "llama", Family.MEMORY_ESTIMATE),
        ("0.12.11", "llama", Family.LAYOUT),  # llm/memory.go removed
        ("0.25.0-rc0", "qwen2", Family.LAYOUT),
        ("0.30.0", "llama", Family.LLAMA_SERVER),
        (None, "llama", Family.LLAMA_SERVER),
    ],
)
def test_family_by_version(version: str | None, arch: str, expected: Family) -> None:
    assert family(version, arch) == expected


def test_engine_lists_follow_ollamas_tags() -> None:
    assert not ollama_engine_required("gpt-oss", (0, 11, 4))  # only "gptoss" then
    assert ollama_engine_required("gpt-oss", (0, 11, 5))
    assert ollama_engine_required("deepseek2", (0, 13, 0))
    assert not ollama_engine_required("deepseek2", (0, 12, 11))
    assert ollama_engine_required("gemma4", (0, 24, 0))


# --- a vision model's projector, as each family counts it ---------------------------------------

GIB = 1024**3


def _layers_per_gpu(spec: ModelSpec, version: str, free_gib: tuple[float, ...]) -> list[int]:
    gpus = [SchedGpu(f"GPU-{i}", "CUDA", int(f * GIB)) for i, f in enumerate(free_gib)]
    settings = RunSettings(ctx_tokens=8192, runtime=Runtime.OLLAMA, flash_attention=False)
    placed = dict(legacy_layers(spec, settings, gpus, version).gpu_layers)
    return [len(placed.get(g.id, ())) for g in gpus]


def _without_projector(spec: ModelSpec) -> ModelSpec:
    return replace(spec, projector_bytes=0, projector_graph_bytes=0)


def test_a_vision_tower_inside_the_model_goes_with_the_output_layer() -> None:
    """gemma3:12b's vision tower (in Ollama's blob): llm/memory.go (0.11.4) and the layout of
    Ollama's engine (0.12.6) both put it where the output layer goes: on two cards with 10 GiB
    free the text model fits one, the model with its tower (about 1.8 GiB) is spread."""
    spec = resolve("gemma3:12b", {})
    assert spec.multimodal and not spec.projector_separate
    for version in ("0.11.4", "0.12.6"):
        assert _layers_per_gpu(_without_projector(spec), version, (10.0, 10.0)) == [49, 0]
        assert all(_layers_per_gpu(spec, version, (10.0, 10.0))), version


def test_a_projector_file_is_counted_on_the_first_gpu_by_memory_go_only() -> None:
    """llava-style: a projector layer of its own. llm/memory.go counts its weights on GPU 0;
    llamaServer.Load (0.12.11 to 0.24) sums LoraPath instead of ProjectorPath, so the layout
    does not count it."""
    spec = with_projector(_without_projector(resolve("llama3.1:8b", {})), 2 * GIB)
    assert spec.projector_separate
    plain = _without_projector(spec)
    old = _layers_per_gpu(spec, "0.11.4", (4.0, 4.0))
    assert old[0] < _layers_per_gpu(plain, "0.11.4", (4.0, 4.0))[0]
    assert _layers_per_gpu(spec, "0.24.0", (4.0, 4.0)) == _layers_per_gpu(
        plain, "0.24.0", (4.0, 4.0)
    )
