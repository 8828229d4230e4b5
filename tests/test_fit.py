"""Fit verdicts by rule (docs/ARCHITECTURE.md §5): one GPU, split, offload, no fit, suggestions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from provision.hardware.rig import NvLink, Rig, load_rig
from provision.models import catalog
from provision.models.estimate import KvType, RunSettings, Runtime
from provision.models.spec import ModelSpec
from provision.placement.fit import (
    Verdict,
    fit_model,
    fits_entirely,
    largest_fitting_context,
    usable_free_bytes,
)
from tests.helpers import ALL_RIG_FILES, load_named_rig

CTX_8K = RunSettings(ctx_tokens=8192)


def _spec(name: str) -> ModelSpec:
    spec = catalog.lookup(name)
    assert spec is not None
    return spec


@pytest.mark.parametrize("rig_path", ALL_RIG_FILES, ids=lambda p: p.stem)
def test_every_catalog_model_gets_a_verdict_on_every_rig(rig_path) -> None:
    rig = load_rig(rig_path)
    for name in catalog.names():
        result = fit_model(rig, _spec(name), CTX_8K)
        assert result.reason
        if result.verdict in (Verdict.SINGLE_GPU, Verdict.SPLIT):
            assert all(s.fits for s in result.shares)
            placed = sorted(il for s in result.shares for il in s.footprint.layers)
            assert placed == list(range(result.model.n_layer))
            assert sum(s.footprint.holds_output for s in result.shares) == 1
        else:
            assert result.suggestions, (name, result.verdict)
        if result.verdict == Verdict.SINGLE_GPU:
            assert len(result.shares) == 1


@pytest.mark.parametrize("rig_path", ALL_RIG_FILES, ids=lambda p: p.stem)
def test_a_model_that_fits_one_gpu_is_never_split(rig_path) -> None:
    rig = load_rig(rig_path)
    for name in catalog.names():
        result = fit_model(rig, _spec(name), CTX_8K)
        alone = [
            g for g in rig.gpus
            if fit_model(replace(rig, gpus=(g,)), result.model, CTX_8K).verdict
            == Verdict.SINGLE_GPU
        ]  # fmt: skip
        assert (result.verdict == Verdict.SINGLE_GPU) == bool(alone), name


def test_8b_on_2x3090_stays_on_one_gpu() -> None:
    result = fit_model(load_named_rig("synthetic-2x3090-x16-x8"), _spec("llama3.1:8b"), CTX_8K)
    assert result.verdict == Verdict.SINGLE_GPU
    assert "kept on one GPU" in result.reason


def test_70b_q4_on_2x3090_splits_across_both() -> None:
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    result = fit_model(rig, _spec("llama3.3:70b"), CTX_8K)
    assert result.verdict == Verdict.SPLIT
    assert sorted(s.gpu.index for s in result.shares) == [0, 1]
    assert result.reason.startswith("split across")
    layers = [len(s.footprint.layers) for s in result.shares]
    assert abs(layers[0] - layers[1]) <= 6  # symmetric rig: near-even, output on the last


def test_4090_comes_first_on_4090_plus_3090() -> None:
    result = fit_model(load_named_rig("synthetic-4090-3090"), _spec("llama3.3:70b"), CTX_8K)
    assert result.verdict == Verdict.SPLIT
    assert "4090" in result.shares[0].gpu.name
    assert result.shares[0].footprint.layers[0] == 0


def test_display_gpu_gets_fewer_layers() -> None:
    rig = load_named_rig("synthetic-3090-display-3090")
    result = fit_model(rig, _spec("llama3.3:70b"), CTX_8K)
    assert result.verdict == Verdict.SPLIT
    by_index = {s.gpu.index: s for s in result.shares}
    assert usable_free_bytes(rig.gpu(0)) < usable_free_bytes(rig.gpu(1))
    layer_bytes = {i: s.footprint.weights_bytes + s.footprint.kv_bytes for i, s in by_index.items()}
    assert layer_bytes[0] < layer_bytes[1] + _spec("llama3.3:70b").output_bytes


def test_nvlink_pair_is_preferred_when_a_pair_suffices() -> None:
    linked = load_named_rig("synthetic-2x3090-nvlink")
    plain = load_named_rig("synthetic-2x3090-x16-x8").gpus[0]
    # Three 3090s: the unlinked one first in index order, the bridged pair after it.
    third = replace(plain, index=0, uuid="GPU-00000000-0000-4000-8000-000000000003",
                    pci_bus_id="00000000:0a:00.0")  # fmt: skip
    moved = []
    for g in linked.gpus:
        peer = "00000000:0c:00.0" if g.index == 0 else "00000000:0b:00.0"
        links = tuple(NvLink(link=i, peer_pci_bus_id=peer) for i in range(4))
        bus = "00000000:0b:00.0" if g.index == 0 else "00000000:0c:00.0"
        moved.append(replace(g, index=g.index + 1, pci_bus_id=bus, nvlink=links))
    rig = Rig(host=linked.host, gpus=(third, *moved))
    result = fit_model(rig, _spec("llama3.3:70b"), CTX_8K)
    assert result.verdict == Verdict.SPLIT
    assert sorted(s.gpu.index for s in result.shares) == [1, 2]


def test_too_large_for_gpus_offloads_and_says_what_would_fit() -> None:
    rig = load_named_rig("synthetic-1x4090")
    settings = RunSettings(ctx_tokens=32768)
    result = fit_model(rig, _spec("llama3.3:70b"), settings)
    assert result.verdict == Verdict.PARTIAL_OFFLOAD
    assert result.cpu_layers and result.cpu_layers[0] == 0  # the first layers stay on the CPU
    assert "slower" in result.reason
    assert len(result.suggestions) == 3
    assert any("smaller" in s or "quant" in s for s in result.suggestions)


def test_no_fit_when_ram_cannot_hold_the_rest() -> None:
    rig = load_named_rig("synthetic-1x4090")
    small_ram = replace(rig, host=replace(rig.host, ram_bytes=16 * 1024**3))
    result = fit_model(small_ram, _spec("mixtral:8x22b"), CTX_8K)
    assert result.verdict == Verdict.NO_FIT
    assert result.shares == () and result.suggestions
    assert "does not fit" in result.reason


def test_largest_context_is_the_boundary() -> None:
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    spec = _spec("llama3.3:70b")
    settings = RunSettings(ctx_tokens=131072)
    best = largest_fitting_context(rig, spec, settings, False)
    assert best is not None and best % 256 == 0
    assert fits_entirely(rig, spec, replace(settings, ctx_tokens=best), False)
    assert not fits_entirely(rig, spec, replace(settings, ctx_tokens=best + 256), False)
    result = fit_model(rig, spec, settings)
    assert f"context {best} tokens fits" in result.suggestions[0]


def test_q8_kv_suggestion_is_checked() -> None:
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    spec = _spec("llama3.3:70b")
    settings = RunSettings(ctx_tokens=32768)
    q8 = replace(settings, kv_type=KvType.Q8_0)
    result = fit_model(rig, spec, settings)
    q8_fits = fits_entirely(rig, spec, q8, False)
    assert any(("a q8_0 KV cache fits" in s) == q8_fits for s in result.suggestions)


def test_a_q4_0_kv_cache_is_tried_when_q8_0_is_not_enough() -> None:
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    spec = _spec("llama3.3:70b")
    for ctx in range(32768, 131073, 4096):
        settings = RunSettings(ctx_tokens=ctx)
        q8 = replace(settings, kv_type=KvType.Q8_0)
        q4 = replace(settings, kv_type=KvType.Q4_0)
        if not fits_entirely(rig, spec, q8, False) and fits_entirely(rig, spec, q4, False):
            break
    else:
        pytest.fail("no context where only a q4_0 cache fits")
    suggestions = fit_model(rig, spec, settings).suggestions
    assert "a q4_0 KV cache fits (needs flash attention, which it turns on)" in suggestions
    # From a q8_0 cache, q4_0 is the one smaller cache left to try.
    assert any("q4_0 KV cache fits" in s for s in fit_model(rig, spec, q8).suggestions)


def test_suggestions_never_go_above_the_trained_context() -> None:
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    spec = _spec("qwen2.5:72b")  # trained on 32768 tokens
    assert spec.ctx_train == 32768
    result = fit_model(rig, spec, RunSettings(ctx_tokens=131072))
    contexts = [int(s.split()[1]) for s in result.suggestions if s.startswith("context ")]
    assert contexts and all(c <= 32768 for c in contexts)
    assert "(asked for 32768)" in result.suggestions[0]


def test_k80_rig_is_placed_with_the_kepler_correction() -> None:
    rig = load_named_rig("synthetic-2xk80")
    result = fit_model(rig, _spec("qwen2.5:32b"), CTX_8K)
    assert result.verdict == Verdict.SPLIT
    generic = fit_model(
        replace(rig, gpus=tuple(replace(g, compute_capability="8.6") for g in rig.gpus)),
        _spec("qwen2.5:32b"),
        CTX_8K,
    )
    kepler = sum(s.footprint.compute_bytes for s in result.shares)
    assert kepler < sum(s.footprint.compute_bytes for s in generic.shares)


def test_legacy_ollama_reserves_its_minimum_per_gpu() -> None:
    rig = load_named_rig("synthetic-2x3090-x16-x8")
    ollama = RunSettings(ctx_tokens=8192, runtime=Runtime.OLLAMA)
    new = fit_model(rig, _spec("llama3.1:8b"), ollama, legacy_ollama=False)
    old = fit_model(rig, _spec("llama3.1:8b"), ollama, legacy_ollama=True)
    assert old.shares[0].footprint.overhead_bytes >= 457 * 1024**2
    assert old.shares[0].footprint.overhead_bytes >= new.shares[0].footprint.overhead_bytes


def test_no_quantized_kv_cache_is_suggested_where_ollama_keeps_flash_attention_off() -> None:
    """A q8_0 or q4_0 cache needs flash attention; Ollama does not enable it on a K80 (CC 3.7,
    ml/device.go), so suggesting one would be a suggestion the plan then refuses."""
    rig = load_named_rig("synthetic-2xk80")
    spec = _spec("llama3.1:8b")
    for ctx in range(8192, 131073, 8192):
        settings = RunSettings(ctx_tokens=ctx, runtime=Runtime.OLLAMA, flash_attention=False)
        on = replace(settings, kv_type=KvType.Q8_0, flash_attention=True)
        if not fits_entirely(rig, spec, settings, False) and fits_entirely(rig, spec, on, False):
            break
    else:
        pytest.fail("no context where only a q8_0 cache fits")
    assert not any("KV cache" in s for s in fit_model(rig, spec, settings).suggestions)
    # llama-server gets -fa on from the unit: there the cache is a fair suggestion.
    server = replace(settings, runtime=Runtime.LLAMA_SERVER)
    assert any("q8_0 KV cache fits" in s for s in fit_model(rig, spec, server).suggestions)
