"""Which model of Ollama's placement applies to which installed version and architecture."""

from __future__ import annotations

import pytest

from provision.placement.ollama_families import Family, family, ollama_engine_required


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
