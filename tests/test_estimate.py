"""The estimator's arithmetic, checked against hand calculations from llama.cpp's rules."""

from __future__ import annotations

from dataclasses import replace

import pytest

from provision.models import catalog
from provision.models.estimate import (
    KvType,
    RunSettings,
    Runtime,
    assign_layers,
    compute_bytes,
    device_footprint,
    host_weight_bytes,
    kv_bytes,
    kv_cells,
)
from provision.models.spec import ModelSpec

GIB = 1024**3


def _spec(name: str) -> ModelSpec:
    spec = catalog.lookup(name)
    assert spec is not None
    return spec


def test_kv_cache_llama3_8b_is_one_gib_at_8k_f16() -> None:
    # 32 layers x 8192 cells x (8 kv heads x 128) x (K + V) x 2 bytes = 1 GiB exactly.
    spec = _spec("llama3.1:8b")
    settings = RunSettings(ctx_tokens=8192)
    assert kv_bytes(spec, settings, range(32)) == 1 * GIB


@pytest.mark.parametrize(
    ("kv_type", "expected"), [(KvType.Q8_0, 34 / 64 * GIB), (KvType.Q4_0, 18 / 64 * GIB)]
)
def test_quantized_kv_cache_uses_ggml_block_sizes(kv_type: KvType, expected: float) -> None:
    settings = RunSettings(ctx_tokens=8192, kv_type=kv_type)
    assert kv_bytes(_spec("llama3.1:8b"), settings, range(32)) == int(expected)


def test_ollama_multiplies_context_by_parallel_llama_server_shares_it() -> None:
    spec = _spec("llama3.1:8b")
    ollama = RunSettings(ctx_tokens=8192, parallel=4, runtime=Runtime.OLLAMA)
    server = RunSettings(ctx_tokens=8192, parallel=4, runtime=Runtime.LLAMA_SERVER)
    assert kv_bytes(spec, ollama, range(32)) == 4 * GIB
    assert kv_bytes(spec, server, range(32)) == 1 * GIB


def test_context_is_padded_to_256_cells() -> None:
    spec = _spec("llama3.1:8b")
    assert kv_cells(spec, RunSettings(ctx_tokens=1000)).full == 1024
    split = RunSettings(ctx_tokens=8192, parallel=3, kv_unified=False)
    # Per-slot streams: 8192 / 3 = 2730 -> padded to 2816, times three streams.
    assert kv_cells(spec, split).full == 3 * 2816


def test_sliding_window_layers_cache_only_the_window() -> None:
    spec = _spec("gemma3:12b")
    assert spec.sliding_window == 1024 and spec.n_layer == 48
    settings = RunSettings(ctx_tokens=32768)
    cells = kv_cells(spec, settings)
    assert cells.full == 32768
    assert cells.swa == 1536  # window 1024 + ubatch 512, padded to 256
    per_cell = (spec.n_embd_k_gqa + spec.n_embd_v_gqa) * 2
    full_layers = 48 // 6
    expected = full_layers * 32768 * per_cell + (48 - full_layers) * 1536 * per_cell
    assert kv_bytes(spec, settings, range(48)) == expected
    four_users = kv_cells(spec, replace(settings, parallel=4))
    assert four_users.swa == 4 * 1024 + 512  # unified: the window per sequence


def test_quantized_kv_needs_flash_attention() -> None:
    with pytest.raises(ValueError, match="needs flash attention"):
        RunSettings(ctx_tokens=2048, kv_type=KvType.Q8_0, flash_attention=False)
    with pytest.raises(ValueError, match="context must be positive"):
        RunSettings(ctx_tokens=0)
    with pytest.raises(ValueError, match="parallel must be positive"):
        RunSettings(ctx_tokens=2048, parallel=0)


def test_layer_split_matches_llama_cpp_upper_bound_rule() -> None:
    # 32 blocks + output = 33 offloadable layers; even split: layer il goes to device 0 while
    # il / 33 < 0.5, i.e. blocks 0-16; blocks 17-31 and the output head go to device 1.
    layers, output = assign_layers(32, [1.0, 1.0])
    assert layers == [list(range(17)), list(range(17, 32))] and output == 1
    layers, output = assign_layers(80, [3.0, 1.0])
    assert len(layers[0]) == 61 and len(layers[1]) == 19 and output == 1
    # Partial offload: -ngl 10 puts the last 9 blocks and the output head on the GPU.
    layers, output = assign_layers(32, [1.0], n_gpu_layers=10)
    assert layers == [list(range(23, 32))] and output == 0
    layers, output = assign_layers(32, [1.0], n_gpu_layers=0)
    assert layers == [[]] and output is None


def test_compute_buffer_follows_the_measured_shape() -> None:
    # 4 activations of width n_embd, 3 of the FFN width, and the f16 mask over the cells: for
    # llama3.1:8b at 2048 cells, 118.0 MiB as llama.cpp reported it (bench/ACCURACY.md).
    # The measured build caps the reserved logits at the server's slots (logits_all=False).
    spec = _spec("llama3.1:8b")
    settings = RunSettings(ctx_tokens=2048, logits_all=False)
    single = compute_bytes(spec, settings, holds_output=True)
    assert single == 512 * 4 * (4 * 4096 + 3 * 14336) + 512 * 2 * 2048
    assert round(single / 2**20, 1) == 118.0


def test_output_head_peaks_at_the_logits_of_every_micro_batch_token() -> None:
    # Builds that reserve a logits row per micro-batch token (every llama.cpp before PR #23861,
    # Ollama's vendored one): the output device peaks at 512 x (vocab + n_embd) f32, 258.5 MiB
    # for a 128k vocabulary. Real CUDA loads match it to 0.01 MiB (bench/real_logs.yaml).
    spec = _spec("llama3.1:8b")
    settings = RunSettings(ctx_tokens=2048)
    assert compute_bytes(spec, settings, holds_output=True) == 512 * 4 * (128256 + 4096)
    # A device without the output head keeps the layers' shape.
    assert (
        compute_bytes(spec, settings, holds_output=False)
        == 512 * 4 * (4 * 4096 + 3 * 14336) + 512 * 2 * 2048
    )


def test_partial_offload_counts_a_host_block_on_the_first_gpu() -> None:
    spec = _spec("llama3.1:8b")
    settings = RunSettings(ctx_tokens=2048)
    layers, output = assign_layers(spec.n_layer, [1.0], n_gpu_layers=17)
    host = host_weight_bytes(spec, layers, output)
    assert host == max(spec.layer_weight_bytes[:16])
    plain = device_footprint(spec, settings, layers[0], output == 0)
    offload = device_footprint(spec, settings, layers[0], output == 0, host_weight_bytes=host)
    assert offload.compute_bytes - plain.compute_bytes == host
    # The output head left on the host is the largest weight copied in.
    layers, output = assign_layers(spec.n_layer, [1.0], n_gpu_layers=0)
    assert host_weight_bytes(spec, layers, output) == max(
        spec.output_bytes, *spec.layer_weight_bytes
    )


def test_pipelined_devices_hold_four_masks_and_input_copies() -> None:
    spec = _spec("llama3.1:8b")
    settings = RunSettings(ctx_tokens=2048, logits_all=False)
    single = compute_bytes(spec, settings, holds_output=True)
    mask = 512 * 2 * 2048
    unit = 512 * 4 * 4096
    first = compute_bytes(spec, settings, holds_output=False, pipeline=True)
    last = compute_bytes(spec, settings, holds_output=True, pipeline=True)
    assert first == single - mask + 4 * mask + 12 * unit
    assert last == single - mask + 4 * mask + 3 * unit


def test_moe_ffn_width_counts_the_experts_used() -> None:
    spec = _spec("mixtral:8x7b")
    assert spec.n_expert_used == 2
    dense = replace(spec, n_expert_used=None)
    settings = RunSettings(ctx_tokens=2048)
    extra = compute_bytes(spec, settings, True) - compute_bytes(dense, settings, True)
    assert extra == 512 * 4 * 3 * spec.n_ff


def test_no_flash_attention_adds_attention_scores() -> None:
    spec = _spec("llama3.1:8b")
    on = compute_bytes(spec, RunSettings(ctx_tokens=8192), holds_output=False)
    off = compute_bytes(
        spec, RunSettings(ctx_tokens=8192, flash_attention=False), holds_output=False
    )
    assert off - on == 512 * 8192 * spec.n_head * 4


def test_kepler_correction_applies_only_below_cc_5() -> None:
    spec = _spec("llama3.1:8b")
    settings = RunSettings(ctx_tokens=8192)
    generic = compute_bytes(spec, settings, True, (8, 6))
    assert compute_bytes(spec, settings, True, (3, 7)) == int(generic * 0.85)
    assert compute_bytes(spec, settings, True, (5, 0)) == generic


def test_device_footprint_sums_its_layers() -> None:
    spec = _spec("llama3.3:70b")
    settings = RunSettings(ctx_tokens=8192)
    first = device_footprint(spec, settings, range(40), holds_output=False)
    last = device_footprint(spec, settings, range(40, 80), holds_output=True)
    assert first.weights_bytes + last.weights_bytes == sum(spec.layer_weight_bytes) + (
        spec.output_bytes
    )
    assert first.kv_bytes + last.kv_bytes == kv_bytes(spec, settings, range(80))
    assert first.total_bytes == (
        first.weights_bytes + first.kv_bytes + first.compute_bytes + first.overhead_bytes
    )
    idle = device_footprint(spec, settings, [], holds_output=False)
    assert idle.total_bytes == 0


def test_projector_weights_and_graph_sit_on_the_first_gpu_only() -> None:
    spec = _spec("gemma3:12b")
    assert spec.multimodal and spec.projector_graph_bytes == 1 << 30
    settings = RunSettings(ctx_tokens=8192)
    first = device_footprint(spec, settings, range(24), False, holds_projector=True)
    second = device_footprint(spec, settings, range(24, 48), True)
    assert first.projector_bytes == spec.projector_bytes + spec.projector_graph_bytes
    assert second.projector_bytes == 0
    assert (
        first.total_bytes - first.projector_bytes
        == device_footprint(spec, settings, range(24), False).total_bytes
    )
