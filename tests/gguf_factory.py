"""Small but real GGUF files, written with the `gguf` library, for reading and estimate tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter


@dataclass(frozen=True)
class TinyShape:
    arch: str = "llama"
    n_layer: int = 4
    n_embd: int = 64
    n_ff: int = 128
    n_head: int = 4
    n_head_kv: int = 2
    n_vocab: int = 96
    ctx_train: int = 4096
    sliding_window: int | None = None
    tied: bool = False
    vision: bool = False  # a vision tower inside the file (v.*, mm.*), as Ollama's gemma3 has


def _tensors(shape: TinyShape) -> dict[str, np.ndarray]:
    e, f, v = shape.n_embd, shape.n_ff, shape.n_vocab
    kv = shape.n_embd // shape.n_head * shape.n_head_kv
    tensors: dict[str, np.ndarray] = {"token_embd.weight": np.zeros((v, e), np.float16)}
    for il in range(shape.n_layer):
        block = {
            "attn_norm.weight": np.ones(e, np.float32),
            "attn_q.weight": np.zeros((e, e), np.float16),
            "attn_k.weight": np.zeros((kv, e), np.float16),
            "attn_v.weight": np.zeros((kv, e), np.float16),
            "attn_output.weight": np.zeros((e, e), np.float16),
            "ffn_norm.weight": np.ones(e, np.float32),
            "ffn_gate.weight": np.zeros((f, e), np.float16),
            "ffn_up.weight": np.zeros((f, e), np.float16),
            "ffn_down.weight": np.zeros((e, f), np.float16),
        }
        tensors.update({f"blk.{il}.{name}": value for name, value in block.items()})
    tensors["output_norm.weight"] = np.ones(e, np.float32)
    if not shape.tied:
        tensors["output.weight"] = np.zeros((v, e), np.float16)
    if shape.vision:
        tensors["v.patch_embd.weight"] = np.zeros((e, 48), np.float16)
        tensors["v.blk.0.attn_q.weight"] = np.zeros((e, e), np.float16)
        tensors["mm.input_projection.weight"] = np.zeros((e, e), np.float16)
    return tensors


def write_tiny_gguf(path: Path, shape: TinyShape = TinyShape(), split_max_tensors: int = 0) -> Path:
    """Write a model GGUF; with split_max_tensors, shards named like llama.cpp's gguf-split."""
    writer = GGUFWriter(path, shape.arch, split_max_tensors=split_max_tensors)
    a = shape.arch
    writer.add_block_count(shape.n_layer)
    writer.add_context_length(shape.ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_file_type(1)  # MOSTLY_F16
    if shape.sliding_window:
        writer.add_uint32(f"{a}.attention.sliding_window", shape.sliding_window)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(shape.n_vocab)])
    for name, value in _tensors(shape).items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tensor_bytes(shape: TinyShape) -> dict[str, int]:
    return {name: value.nbytes for name, value in _tensors(shape).items()}
