"""The bundled catalog of popular Ollama library tags: plan before a model is pulled.

`provision/data/catalog.yaml` records each model's shape and the file size of each quant tag,
with sources. A catalog ModelSpec has no tensor list, so per-layer bytes are derived: the token
embedding and output head from their shapes at the bits per weight llama.cpp's quantizer gives
them, the rest of the file spread evenly over the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from provision.assets import data_file
from provision.models.spec import (
    DEFAULT_PROJECTOR_GRAPH_BYTES,
    KNOWN_KV_ARCHS,
    SWA_PATTERN_BY_ARCH,
    ModelSpec,
    swa_layers,
)

# Bits per weight of (token_embd, output.weight) in llama.cpp's quant mixes (llama-quant.cpp):
# Q4_K_M keeps the output head at Q6_K; Q8_0 and F16 are uniform.
_EMBED_OUTPUT_BPW = {
    "Q4_K_M": (4.5, 6.5625),
    "Q4_K_S": (4.5, 6.5625),
    "Q5_K_M": (5.5, 6.5625),
    "Q6_K": (6.5625, 6.5625),
    "Q8_0": (8.5, 8.5),
    "F16": (16.0, 16.0),
    "BF16": (16.0, 16.0),
    "MXFP4": (8.5, 8.5),
}


# Where the catalog has no size for a quant (null: not sourced), derive one from the parameter
# count at the bits per weight the sourced entries show for that quant.
_NOMINAL_BPW = {"Q4_0": 4.55, "Q4_K_M": 4.85, "Q5_K_M": 5.7, "Q6_K": 6.6, "Q8_0": 8.5, "F16": 16.0}


def _file_bytes(entry: dict[str, Any], quant: str) -> int | None:
    recorded = entry["quants"][quant].get("file_bytes")
    if recorded:
        return int(recorded)
    bpw = _NOMINAL_BPW.get(quant.upper())
    return int(int(entry["parameters"]) * bpw / 8) if bpw else None


@dataclass(frozen=True)
class QuantVariant:
    quant: str
    tag: str
    file_bytes: int


@cache
def _data() -> dict[str, Any]:
    text = data_file("catalog.yaml").read_text("utf-8")
    # libyaml's loader parses the catalog in ~12 ms instead of ~100 ms.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data: dict[str, Any] = yaml.load(text, Loader=loader)
    return data


def _catalog() -> dict[str, Any]:
    models: dict[str, Any] = _data()["models"]
    return models


def _unalias(name: str) -> str:
    aliases: dict[str, str] = _data().get("aliases") or {}
    return aliases.get(name.removesuffix(":latest"), name)


def names() -> list[str]:
    return sorted(_catalog())


def _split_ref(ref: str) -> tuple[str, str | None]:
    """Find the catalog entry and quant a reference names: 'llama3.3:70b', a full Ollama tag
    ('llama3.3:70b-instruct-q8_0') or 'llama3.3:70b@q8_0'."""
    models = _catalog()
    base, _, quant = ref.partition("@")
    base = _unalias(base)
    if base in models:
        return base, quant or None
    model, _, tag = base.partition(":")
    for name, entry in models.items():
        if name.partition(":")[0] != model:
            continue
        for quant_name, variant in entry["quants"].items():
            if variant.get("tag", "").lower() == tag.lower():
                return name, quant_name
    return "", None


def canonical(ref: str) -> str | None:
    """The catalog entry and quant a reference names, as one string ('llama3.1' and
    'llama3.1:8b' are the same model; '@q8_0' is another); None outside the catalog."""
    name, quant = _split_ref(ref)
    if not name:
        return None
    entry = _catalog()[name]
    return f"{name}@{(quant or entry['default_quant']).upper()}"


def ollama_ref(ref: str) -> str:
    """The name Ollama's registry knows for a reference: `llama3.1:8b@q8_0` is ours and
    becomes the catalog's tag for that quant (`llama3.1:8b-instruct-q8_0`); '@' would start a
    digest in an Ollama name. Any other reference is returned as it is."""
    if "@" not in ref:
        return ref
    name, quant = _split_ref(ref)
    if not name or quant is None:
        return ref
    quants = {q.lower(): v for q, v in _catalog()[name]["quants"].items()}
    variant = quants.get(quant.lower())
    if variant is None or not variant.get("tag"):
        return ref
    return f"{name.partition(':')[0]}:{variant['tag']}"


def base_name(ref: str) -> str | None:
    """The catalog entry a model name belongs to, whatever quant it names."""
    name, _ = _split_ref(ref)
    return name or None


def variants(name: str) -> list[QuantVariant]:
    """Every quant of a catalog model, smallest file first."""
    entry = _catalog()[name]
    found = [
        QuantVariant(quant, v.get("tag") or quant, size)
        for quant, v in entry["quants"].items()
        if (size := _file_bytes(entry, quant)) is not None
    ]
    return sorted(found, key=lambda v: v.file_bytes)


def lookup(ref: str) -> ModelSpec | None:
    name, quant = _split_ref(ref)
    if not name:
        return None
    entry = _catalog()[name]
    quants = {q.lower(): q for q in entry["quants"]}
    chosen = quants.get((quant or entry["default_quant"]).lower())
    if chosen is None or _file_bytes(entry, chosen) is None:
        return None
    return spec_from_entry(name, entry, chosen)


def _swa_layers(entry: dict[str, Any], n_layer: int) -> tuple[bool, ...]:
    period = SWA_PATTERN_BY_ARCH.get(entry["architecture"], 0)
    layout = entry.get("sliding_window_layers") or {}
    period = int(layout.get("pattern", period)) if isinstance(layout, dict) else period
    return swa_layers(n_layer, bool(entry.get("sliding_window")), period)


def spec_from_entry(name: str, entry: dict[str, Any], quant: str) -> ModelSpec:
    file_bytes = _file_bytes(entry, quant) or 0
    n_layer = int(entry["block_count"])
    n_embd = int(entry["embedding_length"])
    n_vocab = int(entry["vocab_size"])
    n_head = int(entry["head_count"])
    average_bpw = file_bytes * 8 / int(entry["parameters"])
    embed_bpw, output_bpw = _EMBED_OUTPUT_BPW.get(quant.upper(), (average_bpw, average_bpw))
    tied = bool(entry.get("tied_embeddings"))
    # A tied matrix doubles as the output head, so the quantizer gives it the output's type.
    input_bytes = int(n_vocab * n_embd * (output_bpw if tied else embed_bpw) / 8)
    # Tied: the file holds the matrix once; llama.cpp loads it again as the output head.
    output_bytes = input_bytes if tied else int(n_vocab * n_embd * output_bpw / 8)
    in_file = input_bytes + (0 if tied else output_bytes)
    per_layer = max(file_bytes - in_file, 0) // n_layer
    head_dim = n_embd // n_head
    return ModelSpec(
        name=f"{name}@{quant}" if quant != entry["default_quant"] else name,
        source="catalog",
        architecture=entry["architecture"],
        quant=quant,
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=entry.get("expert_feed_forward_length") or entry.get("feed_forward_length"),
        n_head=n_head,
        n_head_kv=int(entry.get("head_count_kv") or n_head),
        key_length=int(entry.get("key_length") or head_dim),
        value_length=int(entry.get("value_length") or head_dim),
        n_vocab=n_vocab,
        ctx_train=entry.get("context_length"),
        sliding_window=entry.get("sliding_window"),
        swa_layers=_swa_layers(entry, n_layer),
        n_expert=entry.get("expert_count"),
        n_expert_used=entry.get("expert_used_count"),
        layer_weight_bytes=(per_layer,) * n_layer,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        file_bytes=file_bytes,
        kv_known=entry["architecture"] in KNOWN_KV_ARCHS,
        projector_bytes=int(entry.get("projector_bytes") or 0),
        projector_graph_bytes=_projector_graph_bytes(entry),
    )


def _projector_graph_bytes(entry: dict[str, Any]) -> int:
    """The projector's compute graph as the catalog records it, else Ollama's 1 GiB headroom."""
    if not entry.get("projector_bytes"):
        return 0
    return int(entry.get("projector_graph_bytes") or DEFAULT_PROJECTOR_GRAPH_BYTES)
