"""Write sparse GGUF files: a real header, real tensor shapes and quant types, no tensor data.

Each file has everything llama.cpp reads before it touches weights: the architecture's metadata,
a tokenizer of the true vocabulary size, and one tensor-info entry per tensor at the shape and
quant type that `llama-quantize ... Q4_K_M` gives the real model. The tensor data region is left
unwritten (the file is extended with truncate, so it is a hole on disk): a 47 GB 72B file costs
a few MB. llama.cpp loads such a file and reports the buffer sizes it would for the real model;
the weights read as zeros, so the model is useless for generation and nothing here pretends
otherwise.

Quant types follow `llama_tensor_get_type_impl` in llama.cpp's src/llama-quant.cpp for
LLAMA_FTYPE_MOSTLY_Q4_K_M: default Q4_K; output (or tied token_embd) Q6_K; attn_v and ffn_down
Q6_K on the "more bits" layers; attn_v Q5_K elsewhere for 80-layer (70B-class) models; attn_k and
attn_v Q8_0 and attn_output Q5_K for 8-expert models; a K-quant whose row length is not a multiple
of 256 falls back (Q4_K -> Q5_0, Q6_K -> Q8_0, as for Qwen2.5-72B's ffn_down, n_ff = 29568).
Norms, biases, rope_freqs and the MoE router stay F32.

Tokenizers: gemma3 copies the tokenizer of the real gemma-3-270m GGUF when given (same family),
padded to the 12B vocabulary; the others get a generated, valid vocabulary of the true size
(SentencePiece with byte tokens for Mixtral, byte-level BPE with the family's special tokens for
Llama 3 and Qwen2). Vocabulary content changes no buffer size; its size does (token_embd, output,
logits).

Usage: python bench/sparse_gguf.py --out DIR [--gemma-tokenizer PATH] [MODEL ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter, TokenType

Q = GGMLQuantizationType
FTYPE_Q4_K_M = 15  # llama_ftype LLAMA_FTYPE_MOSTLY_Q4_K_M


@dataclass(frozen=True)
class Spec:
    """Hyperparameters of a real model, as its GGUF metadata states them."""

    key: str
    name: str
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    n_ctx_train: int
    rope_base: float
    rms_eps: float
    tokenizer: str  # "llama3" | "qwen2" | "spm" | "gemma"
    head_dim: int = 0  # 0: n_embd / n_head
    n_expert: int = 0
    n_expert_used: int = 0
    qkv_bias: bool = False
    tied_output: bool = False
    sliding_window: int = 0
    extra_kv: dict[str, Any] = field(default_factory=dict)

    @property
    def d_head(self) -> int:
        return self.head_dim or self.n_embd // self.n_head


# Numbers from each model's config.json / official GGUF metadata.
SPECS: dict[str, Spec] = {
    s.key: s
    for s in [
        Spec(
            key="llama3.1-8b",
            name="Meta Llama 3.1 8B Instruct (sparse)",
            arch="llama",
            n_layer=32,
            n_embd=4096,
            n_ff=14336,
            n_head=32,
            n_head_kv=8,
            n_vocab=128256,
            n_ctx_train=131072,
            rope_base=500000.0,
            rms_eps=1e-5,
            tokenizer="llama3",
        ),
        Spec(
            key="qwen2.5-7b",
            name="Qwen2.5 7B Instruct (sparse)",
            arch="qwen2",
            n_layer=28,
            n_embd=3584,
            n_ff=18944,
            n_head=28,
            n_head_kv=4,
            n_vocab=152064,
            n_ctx_train=32768,
            rope_base=1000000.0,
            rms_eps=1e-6,
            tokenizer="qwen2",
            qkv_bias=True,
        ),
        Spec(
            key="qwen2.5-72b",
            name="Qwen2.5 72B Instruct (sparse)",
            arch="qwen2",
            n_layer=80,
            n_embd=8192,
            n_ff=29568,
            n_head=64,
            n_head_kv=8,
            n_vocab=152064,
            n_ctx_train=32768,
            rope_base=1000000.0,
            rms_eps=1e-6,
            tokenizer="qwen2",
            qkv_bias=True,
        ),
        Spec(
            key="gemma3-12b",
            name="Gemma 3 12B it (sparse)",
            arch="gemma3",
            n_layer=48,
            n_embd=3840,
            n_ff=15360,
            n_head=16,
            n_head_kv=8,
            head_dim=256,
            n_vocab=262208,
            n_ctx_train=131072,
            rope_base=1000000.0,
            rms_eps=1e-6,
            tokenizer="gemma",
            tied_output=True,
            sliding_window=1024,
            extra_kv={"rope.scaling.type": "linear", "rope.scaling.factor": 8.0},
        ),
        Spec(
            key="mixtral-8x7b",
            name="Mixtral 8x7B Instruct v0.1 (sparse)",
            arch="llama",
            n_layer=32,
            n_embd=4096,
            n_ff=14336,
            n_head=32,
            n_head_kv=8,
            n_vocab=32000,
            n_ctx_train=32768,
            rope_base=1000000.0,
            rms_eps=1e-5,
            tokenizer="spm",
            n_expert=8,
            n_expert_used=2,
        ),
    ]
}


@dataclass(frozen=True)
class Tensor:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    qtype: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.qtype]
        n = 1
        for d in self.ne:
            n *= d
        assert self.ne[0] % block == 0, (self.name, self.ne, self.qtype)
        return n // block * size


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(qtype: GGMLQuantizationType, ncols: int) -> GGMLQuantizationType:
    block = GGML_QUANT_SIZES[qtype][0]
    if ncols % block == 0:
        return qtype
    fallback = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}[qtype]
    if ncols % GGML_QUANT_SIZES[fallback][0] != 0:
        return Q.F16
    return fallback


def q4_k_m_tensors(spec: Spec) -> list[Tensor]:
    """Tensors of the real model, typed as llama-quantize's Q4_K_M recipe types them."""
    e, ff, nl, nv = spec.n_embd, spec.n_ff, spec.n_layer, spec.n_vocab
    q_dim = spec.n_head * spec.d_head
    kv_dim = spec.n_head_kv * spec.d_head
    moe8 = spec.n_expert == 8
    is_70b = nl == 80 and spec.n_head != spec.n_head_kv

    def mk(name: str, ne: tuple[int, ...], qtype: GGMLQuantizationType) -> Tensor:
        if qtype not in (Q.F32, Q.F16):
            qtype = _fallback(qtype, ne[0])
        return Tensor(name, ne, qtype)

    out: list[Tensor] = []
    embd_type = Q.Q6_K if spec.tied_output else Q.Q4_K
    out.append(mk("token_embd.weight", (e, nv), embd_type))
    out.append(mk("output_norm.weight", (e,), Q.F32))
    if not spec.tied_output:
        out.append(mk("output.weight", (e, nv), Q.Q6_K))
    if spec.tokenizer == "llama3":  # llama3 rope scaling ships as a tensor
        out.append(mk("rope_freqs.weight", (spec.d_head // 2,), Q.F32))
    for i in range(nl):
        b = f"blk.{i}."
        out.append(mk(b + "attn_norm.weight", (e,), Q.F32))
        out.append(mk(b + "attn_q.weight", (e, q_dim), Q.Q4_K))
        k_type = Q.Q8_0 if moe8 else Q.Q4_K
        out.append(mk(b + "attn_k.weight", (e, kv_dim), k_type))
        v_type = Q.Q6_K if _more_bits(i, nl) else Q.Q4_K
        if is_70b and v_type == Q.Q4_K:
            v_type = Q.Q5_K
        if moe8:
            v_type = Q.Q8_0
        out.append(mk(b + "attn_v.weight", (e, kv_dim), v_type))
        if spec.qkv_bias:
            out.append(mk(b + "attn_q.bias", (q_dim,), Q.F32))
            out.append(mk(b + "attn_k.bias", (kv_dim,), Q.F32))
            out.append(mk(b + "attn_v.bias", (kv_dim,), Q.F32))
        out.append(mk(b + "attn_output.weight", (q_dim, e), Q.Q5_K if moe8 else Q.Q4_K))
        if spec.arch == "gemma3":
            out.append(mk(b + "attn_q_norm.weight", (spec.d_head,), Q.F32))
            out.append(mk(b + "attn_k_norm.weight", (spec.d_head,), Q.F32))
            out.append(mk(b + "post_attention_norm.weight", (e,), Q.F32))
            out.append(mk(b + "post_ffw_norm.weight", (e,), Q.F32))
        out.append(mk(b + "ffn_norm.weight", (e,), Q.F32))
        down_type = Q.Q6_K if _more_bits(i, nl) else Q.Q4_K
        if spec.n_expert:
            x = spec.n_expert
            out.append(mk(b + "ffn_gate_inp.weight", (e, x), Q.F32))
            out.append(mk(b + "ffn_gate_exps.weight", (e, ff, x), Q.Q4_K))
            out.append(mk(b + "ffn_up_exps.weight", (e, ff, x), Q.Q4_K))
            out.append(mk(b + "ffn_down_exps.weight", (ff, e, x), down_type))
        else:
            out.append(mk(b + "ffn_gate.weight", (e, ff), Q.Q4_K))
            out.append(mk(b + "ffn_up.weight", (e, ff), Q.Q4_K))
            out.append(mk(b + "ffn_down.weight", (ff, e), down_type))
    return out


# ---- tokenizers -------------------------------------------------------------------------------


def _byte_level_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode: the 256 single-character tokens of a byte-level BPE vocab."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def _bpe_vocab(spec: Spec) -> dict[str, Any]:
    """Byte-level BPE vocab of the true size with the family's special tokens at their true ids."""
    alphabet = _byte_level_alphabet()
    if spec.tokenizer == "llama3":
        n_regular = 128000
        specials = ["<|begin_of_text|>", "<|end_of_text|>"]
        specials += [f"<|reserved_special_token_{i}|>" for i in range(254)]
        specials[6], specials[7], specials[9] = (
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        )
        pre, bos, eos, eot = "llama-bpe", 128000, 128009, 128009
    else:
        n_regular = 151643
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        specials += [f"<|qwen_special_{i}|>" for i in range(3, 22)]
        pre, bos, eos, eot = "qwen2", 151643, 151645, 151645
    tokens = list(alphabet)
    types = [TokenType.NORMAL] * len(tokens)
    merges = []
    # a few real merges so that common text tokenizes into multi-byte tokens
    for a, b in [("Ġ", "t"), ("Ġ", "a"), ("h", "e"), ("i", "n"), ("r", "e")]:
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    while len(tokens) < n_regular:
        tokens.append(f"Ġfill{len(tokens)}")
    types += [TokenType.NORMAL] * (n_regular - len(types))
    tokens += specials
    types += [TokenType.CONTROL] * len(specials)
    n = 0
    while len(tokens) < spec.n_vocab:  # convert_hf_to_gguf pads to the embedding rows
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(TokenType.UNUSED)
        n += 1
    assert len(tokens) == spec.n_vocab, (len(tokens), spec.n_vocab)
    return {
        "model": "gpt2",
        "pre": pre,
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": bos,
        "eos": eos,
        "eot": eot,
        "add_bos": spec.tokenizer == "llama3",
    }


def _spm_vocab(spec: Spec) -> dict[str, Any]:
    """SentencePiece vocab as Llama 2 / Mistral have it: <unk> <s> </s>, 256 byte tokens, pieces."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    while len(tokens) < spec.n_vocab:
        tokens.append(f"▁piece{len(tokens)}")
        types.append(TokenType.NORMAL)
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(spec.n_vocab - 259)]
    return {
        "model": "llama",
        "pre": "default",
        "tokens": tokens,
        "types": types,
        "scores": scores,
        "bos": 1,
        "eos": 2,
        "unk": 0,
        "add_bos": True,
    }


def _gemma_vocab(spec: Spec, source: Path | None) -> dict[str, Any]:
    """The real Gemma 3 tokenizer (from the 270M GGUF), padded to the 12B's embedding rows."""
    if source is None:
        voc = _spm_vocab(spec)
        voc.update(bos=2, eos=1, unk=3, pad=0)
        return voc
    r = GGUFReader(source)

    def arr(key: str) -> list[Any]:
        return list(r.fields[key].contents())

    tokens = arr("tokenizer.ggml.tokens")
    scores = [float(x) for x in arr("tokenizer.ggml.scores")]
    types = [int(x) for x in arr("tokenizer.ggml.token_type")]
    while len(tokens) < spec.n_vocab:
        tokens.append(f"<unused_pad_{len(tokens)}>")
        scores.append(0.0)
        types.append(TokenType.USER_DEFINED)
    return {
        "model": "llama",
        "pre": "default",
        "tokens": tokens,
        "types": types,
        "scores": scores,
        "bos": int(r.fields["tokenizer.ggml.bos_token_id"].contents()),
        "eos": int(r.fields["tokenizer.ggml.eos_token_id"].contents()),
        "unk": int(r.fields["tokenizer.ggml.unknown_token_id"].contents()),
        "pad": int(r.fields["tokenizer.ggml.padding_token_id"].contents()),
        "add_bos": True,
    }


def vocab_for(spec: Spec, gemma_tokenizer: Path | None) -> dict[str, Any]:
    if spec.tokenizer in ("llama3", "qwen2"):
        return _bpe_vocab(spec)
    if spec.tokenizer == "gemma":
        return _gemma_vocab(spec, gemma_tokenizer)
    return _spm_vocab(spec)


# ---- writer -----------------------------------------------------------------------------------


def write_sparse(spec: Spec, path: Path, gemma_tokenizer: Path | None = None) -> dict[str, Any]:
    """Write `path`; return a summary (tensor count, bytes the data region claims, disk use)."""
    tensors = q4_k_m_tensors(spec)
    w = GGUFWriter(None, spec.arch)  # path given to write_header_to_file below
    w.add_type("model")
    w.add_name(spec.name)
    w.add_description("sparse GGUF: real header and tensor shapes, tensor data left unwritten")
    w.add_file_type(FTYPE_Q4_K_M)
    w.add_quantization_version(2)
    w.add_context_length(spec.n_ctx_train)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_rope_freq_base(spec.rope_base)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    if spec.head_dim:
        w.add_key_length(spec.head_dim)
        w.add_value_length(spec.head_dim)
    if spec.arch == "llama":
        w.add_rope_dimension_count(spec.d_head)
        w.add_vocab_size(spec.n_vocab)
    if spec.n_expert:
        w.add_expert_count(spec.n_expert)
        w.add_expert_used_count(spec.n_expert_used)
    if spec.sliding_window:
        w.add_sliding_window(spec.sliding_window)
    for k, v in spec.extra_kv.items():
        full = f"{spec.arch}.{k}"
        if isinstance(v, str):
            w.add_string(full, v)
        else:
            w.add_float32(full, float(v))

    voc = vocab_for(spec, gemma_tokenizer)
    w.add_tokenizer_model(voc["model"])
    w.add_tokenizer_pre(voc["pre"])
    w.add_token_list(voc["tokens"])
    w.add_token_types([int(t) for t in voc["types"]])
    if "scores" in voc:
        w.add_token_scores(voc["scores"])
    if "merges" in voc:
        w.add_token_merges(voc["merges"])
    w.add_bos_token_id(voc["bos"])
    w.add_eos_token_id(voc["eos"])
    if "eot" in voc:
        w.add_eot_token_id(voc["eot"])
    if "unk" in voc:
        w.add_unk_token_id(voc["unk"])
    if "pad" in voc:
        w.add_pad_token_id(voc["pad"])
    w.add_add_bos_token(voc["add_bos"])
    w.add_add_eos_token(False)

    for t in tensors:
        # numpy order is ggml's reversed; a non-uint8 dtype with raw_dtype means "element shape"
        w.add_tensor_info(t.name, tuple(reversed(t.ne)), np.dtype(np.float32), t.nbytes, t.qtype)

    tmp = path.with_name(path.name + ".tmp")
    w.write_header_to_file(tmp)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    fout = w.fout[0]
    header_end = fout.tell()
    data_start = GGUFWriter.ggml_pad(header_end, w.data_alignment)
    data_size = sum(GGUFWriter.ggml_pad(t.nbytes, w.data_alignment) for t in tensors)
    fout.write(b"\0" * (data_start - header_end))
    fout.truncate(data_start + data_size)  # the data region: a hole, never written
    w.close()
    os.replace(tmp, path)
    st = path.stat()
    return {
        "model": spec.key,
        "path": str(path),
        "tensors": len(tensors),
        "data_bytes": data_size,
        "file_bytes": st.st_size,
        "disk_bytes": st.st_blocks * 512,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help=f"default: all of {', '.join(SPECS)}")
    parser.add_argument("--out", type=Path, required=True, help="directory for the .gguf files")
    parser.add_argument(
        "--gemma-tokenizer", type=Path, default=None, help="a real gemma3 GGUF to copy from"
    )
    parser.add_argument("--force", action="store_true", help="rewrite files that exist")
    args = parser.parse_args(argv)
    keys = args.models or list(SPECS)
    unknown = [k for k in keys if k not in SPECS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for key in keys:
        path = args.out / f"{key}-Q4_K_M.sparse.gguf"
        if path.exists() and not args.force:
            print(f"{path} (exists)")
            continue
        info = write_sparse(SPECS[key], path, args.gemma_tokenizer)
        print(
            f"{path}: {info['tensors']} tensors, data {info['data_bytes'] / 2**30:.2f} GiB, "
            f"on disk {info['disk_bytes'] / 2**20:.1f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
