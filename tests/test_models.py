"""Model references: GGUF headers (split, sparse, tied, SWA), the Ollama store, the catalog."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from gguf import GGUFReader

from provision.errors import InputError
from provision.models import catalog
from provision.models.refs import resolve, spec_from_gguf
from tests.gguf_factory import TinyShape, tensor_bytes, write_tiny_gguf
from tests.helpers import install_in_ollama_store


def _block_bytes(shape: TinyShape, il: int) -> int:
    return sum(n for name, n in tensor_bytes(shape).items() if name.startswith(f"blk.{il}."))


def test_gguf_header_gives_shape_and_bytes_per_layer(tmp_path: Path) -> None:
    shape = TinyShape()
    spec = spec_from_gguf(write_tiny_gguf(tmp_path / "tiny.gguf", shape))
    assert (spec.architecture, spec.n_layer, spec.n_embd, spec.n_ff) == ("llama", 4, 64, 128)
    assert (spec.n_head, spec.n_head_kv, spec.key_length, spec.value_length) == (4, 2, 16, 16)
    assert spec.n_vocab == 96 and spec.ctx_train == 4096 and spec.quant == "F16"
    assert spec.layer_weight_bytes == tuple(_block_bytes(shape, il) for il in range(4))
    sizes = tensor_bytes(shape)
    assert spec.input_bytes == sizes["token_embd.weight"]
    assert spec.output_bytes == sizes["output.weight"] + sizes["output_norm.weight"]
    assert spec.n_embd_k_gqa == 32 and spec.kv_known


def test_tied_embeddings_load_the_matrix_again_as_output(tmp_path: Path) -> None:
    shape = TinyShape(tied=True)
    spec = spec_from_gguf(write_tiny_gguf(tmp_path / "tied.gguf", shape))
    sizes = tensor_bytes(shape)
    assert spec.output_bytes == sizes["token_embd.weight"] + sizes["output_norm.weight"]


def test_split_gguf_reads_every_shard(tmp_path: Path) -> None:
    shape = TinyShape()
    write_tiny_gguf(tmp_path / "m.gguf", shape, split_max_tensors=10)
    shards = sorted(tmp_path.glob("m-*-of-*.gguf"))
    assert len(shards) == 4
    spec = spec_from_gguf(shards[0])
    assert spec.layer_weight_bytes == tuple(_block_bytes(shape, il) for il in range(4))
    assert spec.file_bytes == sum(p.stat().st_size for p in shards)
    shards[2].unlink()
    with pytest.raises(InputError, match="missing shard"):
        spec_from_gguf(shards[0])


def test_sparse_file_without_tensor_data_reads_the_same(tmp_path: Path) -> None:
    full = write_tiny_gguf(tmp_path / "full.gguf")
    data_start = min(t.data_offset for t in GGUFReader(full).tensors)
    sparse = tmp_path / "sparse.gguf"
    with full.open("rb") as src, sparse.open("wb") as dst:
        dst.write(src.read(data_start))
    os.truncate(sparse, full.stat().st_size)  # a hole where the weights would be
    assert sparse.stat().st_blocks * 512 < full.stat().st_size
    assert spec_from_gguf(sparse).layer_weight_bytes == spec_from_gguf(full).layer_weight_bytes


def test_sliding_window_layers_follow_llama_cpp_pattern(tmp_path: Path) -> None:
    shape = TinyShape(arch="gemma3", n_layer=12, sliding_window=512)
    spec = spec_from_gguf(write_tiny_gguf(tmp_path / "g.gguf", shape))
    full_layers = [il for il, swa in enumerate(spec.swa_layers) if not swa]
    assert full_layers == [5, 11] and spec.sliding_window == 512


def test_unknown_architecture_keeps_weights_and_flags_kv(tmp_path: Path) -> None:
    spec = spec_from_gguf(write_tiny_gguf(tmp_path / "m.gguf", TinyShape(arch="mystery")))
    assert not spec.kv_known
    assert sum(spec.layer_weight_bytes) > 0


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"hello, not a model\n" * 10, "not a readable GGUF"), (b"", "not a readable GGUF")],
)
def test_not_a_gguf_is_bad_input(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem):
        spec_from_gguf(path)


def test_truncated_gguf_is_bad_input(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "t.gguf")
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(InputError, match="not a readable GGUF"):
        spec_from_gguf(path)


def test_ollama_projector_layer_is_the_models_projector(tmp_path: Path) -> None:
    # llava-style models ship the vision tower as its own manifest layer (the --mmproj file).
    store = tmp_path / "models"
    gguf = write_tiny_gguf(tmp_path / "t.gguf")
    install_in_ollama_store(store, "tinyvl", "latest", gguf, projector_size=624 * 10**6)
    spec = resolve("tinyvl", {"OLLAMA_MODELS": str(store)})
    assert spec.multimodal and spec.projector_bytes == 624 * 10**6
    assert spec.projector_graph_bytes == 1 << 30  # Ollama's headroom when nothing says more


def test_vision_tensors_inside_the_model_file_are_the_projector(tmp_path: Path) -> None:
    plain = spec_from_gguf(write_tiny_gguf(tmp_path / "plain.gguf"))
    spec = spec_from_gguf(write_tiny_gguf(tmp_path / "vl.gguf", TinyShape(vision=True)))
    e = TinyShape().n_embd
    assert spec.projector_bytes == 2 * (e * 48 + 2 * e * e)
    # Not counted as the output head (which would put it on the last GPU instead).
    assert spec.output_bytes == plain.output_bytes
    assert not plain.multimodal


def test_installed_ollama_model_resolves_through_the_store(tmp_path: Path) -> None:
    store = tmp_path / "models"
    install_in_ollama_store(store, "tiny", "latest", write_tiny_gguf(tmp_path / "t.gguf"))
    env = {"OLLAMA_MODELS": str(store)}
    for ref in ("tiny", "tiny:latest"):
        spec = resolve(ref, env)
        assert (spec.name, spec.source, spec.n_layer) == (ref, "ollama", 4)


def test_ollama_manifest_without_model_layer_is_bad_input(tmp_path: Path) -> None:
    store = tmp_path / "models"
    path = store / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"layers": []}))
    with pytest.raises(InputError, match="no model layer"):
        resolve("broken", {"OLLAMA_MODELS": str(store)})


def test_unknown_name_suggests_close_ones(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        resolve("lama3.3:70b", {"OLLAMA_MODELS": str(tmp_path)})
    assert "unknown model 'lama3.3:70b'" in info.value.message
    assert "llama3.3:70b" in (info.value.hint or "")


REQUIRED_CATALOG = [
    "llama3.1:8b", "llama3.3:70b", "qwen2.5:7b", "qwen2.5:14b", "qwen2.5:32b", "qwen2.5:72b",
    "qwen3:8b", "qwen3:32b", "qwen3:30b-a3b", "gemma3:4b", "gemma3:12b", "gemma3:27b",
    "mistral-small", "mixtral:8x7b", "mixtral:8x22b", "deepseek-r1:70b", "gpt-oss:20b",
    "gpt-oss:120b", "phi4",
]  # fmt: skip


@pytest.mark.parametrize("name", REQUIRED_CATALOG)
def test_catalog_has_what_the_issue_names(name: str) -> None:
    spec = catalog.lookup(name)
    assert spec is not None and spec.source == "catalog"
    # Derived per-layer bytes add back up to the file (the header and tokenizer aside); a tied
    # matrix is in the file once but loaded twice (input on the CPU, output on a GPU).
    tied = catalog._catalog()[catalog.base_name(name) or name].get("tied_embeddings")
    in_file = spec.weight_bytes - (spec.output_bytes if tied else 0)
    assert in_file == pytest.approx(spec.file_bytes, rel=0.03)


def test_catalog_entries_record_sources_and_two_quants() -> None:
    for name in catalog.names():
        entry = catalog._catalog()[name]
        assert entry["sources"]["shape"], name
        # gpt-oss ships in one quant (MXFP4) only; every other model in at least two.
        assert len(entry["quants"]) >= (1 if name.startswith("gpt-oss") else 2), name
    q8 = catalog.lookup("llama3.3:70b@q8_0")
    q4 = catalog.lookup("llama3.3:70b")
    assert q8 is not None and q4 is not None and q8.file_bytes > 1.6 * q4.file_bytes


def test_catalog_resolves_full_ollama_tags_and_aliases() -> None:
    q8 = catalog.lookup("llama3.3:70b@Q8_0")
    assert q8 is not None
    tag = catalog._catalog()["llama3.3:70b"]["quants"]["Q8_0"]["tag"]
    by_tag = catalog.lookup(f"llama3.3:{tag}")
    assert by_tag is not None and by_tag.file_bytes == q8.file_bytes
    assert catalog.lookup("phi4:latest") == catalog.lookup("phi4:14b")
    assert catalog.lookup("no-such-model:1b") is None


def test_catalog_sliding_window_models() -> None:
    gemma = catalog.lookup("gemma3:12b")
    assert gemma is not None and gemma.sliding_window
    assert [il for il, swa in enumerate(gemma.swa_layers) if not swa][:2] == [5, 11]
    gpt = catalog.lookup("gpt-oss:20b")
    assert gpt is not None and gpt.swa_layers[:4] == (True, False, True, False)


@pytest.mark.parametrize(
    ("ref", "registry", "created"),
    [
        ("llama3.1:8b@q8_0", "llama3.1:8b-instruct-q8_0", "llama3.1:8b-q8_0-provision"),
        ("llama3.1:8b@Q4_K_M", "llama3.1:8b-instruct-q4_K_M", "llama3.1:8b-Q4_K_M-provision"),
        ("llama3.1:8b", "llama3.1:8b", "llama3.1:8b-provision"),
        ("llama3.1", "llama3.1", "llama3.1:latest-provision"),
        ("llama3.1:8b-instruct-q8_0", "llama3.1:8b-instruct-q8_0",
         "llama3.1:8b-instruct-q8_0-provision"),
        ("/srv/m.gguf", "/srv/m.gguf", "m:provision"),
        ("/srv/llama3.1.gguf", "/srv/llama3.1.gguf", "llama3.1:provision"),
    ],
)  # fmt: skip
def test_quant_refs_become_names_ollama_accepts(ref: str, registry: str, created: str) -> None:
    """'@' starts a digest in an Ollama name: neither FROM nor the created name may have one;
    and the created name is never the FROM model's own (Ollama's create would merge our last
    parameters into the new ones)."""
    from provision import ollama
    from provision.models import catalog

    assert catalog.ollama_ref(ref) == registry
    assert ollama.model_name(ref) == created and "@" not in created
    assert ollama.normalize_model(created) != ollama.normalize_model(registry)
