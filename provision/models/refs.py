"""Model references -> ModelSpec: the shape and per-layer bytes that the estimate needs.

A reference is one of: a GGUF path (split files too), an installed Ollama model name resolved
through the Ollama store, or a tag from the bundled catalog (for planning before a pull).
GGUF files are read with `gguf.GGUFReader`, which memory-maps the file and parses only the
header: tensor data is never touched, so sparse files work.
"""

from __future__ import annotations

import difflib
import json
import math
import mmap
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from provision.documents import exists
from provision.errors import InputError
from provision.models import catalog
from provision.models.gguf_header import HeaderError, check_header
from provision.models.spec import (
    DEFAULT_PROJECTOR_GRAPH_BYTES,
    KNOWN_KV_ARCHS,
    PROJECTOR_TENSOR_PREFIXES,
    SWA_PATTERN_BY_ARCH,
    ModelSpec,
    swa_layers,
)
from provision.paths import OLLAMA_MODELS_DIR

OLLAMA_MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
# A vision model's projector (clip/mmproj GGUF) is its own layer in an Ollama manifest.
OLLAMA_PROJECTOR_MEDIA_TYPE = "application/vnd.ollama.image.projector"
DEFAULT_OLLAMA_MODELS = Path(OLLAMA_MODELS_DIR)
_SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
_LAYER = re.compile(r"^blk\.([0-9]{1,9})\.")
# More layers than any model has (Llama 3.1 405B: 126); past this a count is corrupt, and the
# per-layer tables of the estimate would be built for nothing.
MAX_LAYERS = 10_000
# Counts stored as u32 in a GGUF header (block_count, embedding_length, head counts, ...).
_MAX_COUNT = 2**32 - 1


# --- GGUF files -------------------------------------------------------------------------------


def split_shards(path: Path) -> list[Path]:
    """All shards of a split GGUF (`x-00001-of-00003.gguf`), or just `path`."""
    match = _SPLIT_NAME.match(path.name)
    if not match:
        return [path]
    index, count = int(match["i"]), int(match["n"])
    if not 1 <= index <= count:
        raise InputError(
            f"{path}: split GGUF name says shard {index} of {count}",
            hint="shards are numbered from 00001 to the count (llama.cpp's gguf-split names)",
        )
    shards = [
        path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    ]
    missing = [s.name for s in shards if not s.exists()]
    if missing:
        raise InputError(
            f"{path}: split GGUF is missing shard(s) {', '.join(missing)}",
            hint="keep all shards of a split model in one directory",
        )
    return shards


def _open_gguf(path: Path) -> Any:
    from gguf import GGUFReader  # imported here: numpy and gguf cost ~100 ms

    try:
        _check_gguf(path)
        return GGUFReader(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file", hint="check the model path") from None
    except (ValueError, IndexError, OSError, KeyError) as exc:  # HeaderError is a ValueError
        raise InputError(
            f"{path}: not a readable GGUF file ({exc})",
            hint="pass a complete .gguf model file (a truncated download fails here too)",
        ) from None


def _check_gguf(path: Path) -> None:
    """A regular file whose header counts fit in it (models/gguf_header.py), before the reader
    loops on them; a FIFO would block the read, a directory is no model."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise HeaderError("not a regular file")
        if info.st_size == 0:
            raise HeaderError("the file is empty")
        # Not closed here: a HeaderError's traceback still holds views of it; GC unmaps it.
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    check_header(mapped)


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    return value


class _Metadata:
    """Typed access to `<arch>.*` keys of a GGUF header."""

    def __init__(self, reader: Any, path: Path) -> None:
        self.reader = reader
        self.path = path
        arch = _field(reader, "general.architecture")
        if not isinstance(arch, str):
            raise InputError(
                f"{path}: GGUF header has no general.architecture",
                hint="the file is not a model GGUF",
            )
        self.arch = arch

    def get(self, key: str) -> Any:
        return _field(self.reader, f"{self.arch}.{key}")

    def int_or_none(self, key: str, limit: int = _MAX_COUNT) -> int | None:
        value = self.get(key)
        if isinstance(value, list):  # per-layer arrays (e.g. head_count_kv): the largest bounds KV
            value = max(value, key=self._sortable) if value else None
        if value is None:
            return None
        # A count is an unsigned integer in every header llama.cpp writes: a string, NaN or a
        # huge float here is a corrupt or hostile file, not a shape to plan for.
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number) or number != int(number):
            raise InputError(
                f"{self.path}: GGUF header {self.arch}.{key} is {value!r:.40}, not a count",
                hint="the file is corrupt or not a model: re-download or re-convert it",
            )
        if not 0 <= number <= limit:
            raise InputError(
                f"{self.path}: GGUF header {self.arch}.{key} is {int(number)}, outside 0..{limit}",
                hint="the file is corrupt or not a model: re-download or re-convert it",
            )
        return int(number)

    @staticmethod
    def _sortable(value: object) -> float:
        return float(value) if isinstance(value, int | float) else math.inf

    def required(self, key: str, limit: int = _MAX_COUNT) -> int:
        value = self.int_or_none(key, limit)
        if value is None:
            raise InputError(
                f"{self.path}: GGUF header lacks {self.arch}.{key}",
                hint="re-convert the model with a current llama.cpp",
            )
        return value


def _swa_layers(meta: _Metadata, n_layer: int, window: int | None) -> tuple[bool, ...]:
    pattern = meta.get("attention.sliding_window_pattern")
    if window and isinstance(pattern, list) and len(pattern) == n_layer:
        return tuple(bool(v) for v in pattern)
    period = int(pattern) if isinstance(pattern, int) else SWA_PATTERN_BY_ARCH.get(meta.arch, 0)
    return swa_layers(n_layer, bool(window), period)


def _tensor_bytes(
    readers: list[Any], n_layer: int, path: Path
) -> tuple[list[int], int, int, bool, int]:
    layers = [0] * n_layer
    input_bytes = output_bytes = projector_bytes = 0
    has_output = False
    for reader in readers:
        for tensor in reader.tensors:
            name, size = tensor.name, int(tensor.n_bytes)
            if name.startswith(PROJECTOR_TENSOR_PREFIXES):
                # A vision/audio tower inside the model file (Ollama's gemma3, mistral3 blobs).
                projector_bytes += size
            elif name.startswith("blk."):
                layer = _layer_of(name, path)
                if layer < n_layer:
                    layers[layer] += size
            elif name == "token_embd.weight":
                input_bytes += size
            else:  # output.weight, output_norm.*, rope_freqs and other whole-model tensors
                output_bytes += size
                has_output = has_output or name == "output.weight"
    return layers, input_bytes, output_bytes, has_output, projector_bytes


def _layer_of(name: str, path: Path) -> int:
    match = _LAYER.match(name)
    if match is None:
        raise InputError(
            f"{path}: tensor {name!r} has no layer number after 'blk.'",
            hint="the file is corrupt or not a llama.cpp model",
        )
    return int(match[1])


def spec_from_gguf(path: Path) -> ModelSpec:
    shards = split_shards(path)
    readers = [_open_gguf(p) for p in shards]
    meta = _Metadata(readers[0], path)
    n_layer = meta.required("block_count", MAX_LAYERS)
    n_embd = meta.required("embedding_length")
    n_head = meta.int_or_none("attention.head_count") or 0
    n_head_kv = meta.int_or_none("attention.head_count_kv") or n_head
    head_dim = n_embd // n_head if n_head else 0
    window = meta.int_or_none("attention.sliding_window")
    layers, input_bytes, output_bytes, has_output, projector = _tensor_bytes(readers, n_layer, path)
    if not has_output:
        # Tied embeddings: llama.cpp loads token_embd a second time as the output head.
        output_bytes += input_bytes
    tokens = readers[0].fields.get("tokenizer.ggml.tokens")
    n_vocab = meta.int_or_none("vocab_size") or (len(tokens.data) if tokens is not None else 0)
    file_type = _field(readers[0], "general.file_type")
    return ModelSpec(
        name=path.name,
        source="gguf",
        architecture=meta.arch,
        quant=_file_type_name(file_type),
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=meta.int_or_none("expert_feed_forward_length")
        or meta.int_or_none("feed_forward_length"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=meta.int_or_none("attention.key_length") or head_dim,
        value_length=meta.int_or_none("attention.value_length") or head_dim,
        n_vocab=n_vocab,
        ctx_train=meta.int_or_none("context_length"),
        sliding_window=window,
        swa_layers=_swa_layers(meta, n_layer, window),
        n_expert=meta.int_or_none("expert_count"),
        n_expert_used=meta.int_or_none("expert_used_count"),
        layer_weight_bytes=tuple(layers),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        file_bytes=sum(p.stat().st_size for p in shards),
        kv_known=meta.arch in KNOWN_KV_ARCHS and n_head_kv > 0,
        projector_bytes=projector,
        projector_graph_bytes=DEFAULT_PROJECTOR_GRAPH_BYTES if projector else 0,
    )


def with_projector(
    spec: ModelSpec, projector_bytes: int, graph_bytes: int | None = None
) -> ModelSpec:
    """The spec with a separate projector file (an mmproj GGUF, Ollama's projector layer)."""
    if projector_bytes <= 0:
        return spec
    graph = graph_bytes or spec.projector_graph_bytes or DEFAULT_PROJECTOR_GRAPH_BYTES
    return replace(
        spec, projector_bytes=projector_bytes, projector_graph_bytes=graph, projector_separate=True
    )


def mmproj_spec(spec: ModelSpec, path: str, shown: str | None = None) -> ModelSpec:
    """A model served with `--mmproj FILE`: the file's size where it is readable here (`path`,
    in the target's tree), else what the catalog records for the model. `shown`: the path as
    the profile gives it."""
    file = Path(path)
    if file.is_file():
        return with_projector(spec, file.stat().st_size)
    if spec.multimodal:
        return spec
    raise InputError(
        f"mmproj: {shown or path} is not a readable file here, and {spec.name} has no projector "
        "size in the catalog",
        hint="plan on the host that has the mmproj file (or with --root at its tree), or "
        "remove `mmproj:`",
    )


def _file_type_name(file_type: Any) -> str | None:
    if file_type is None:
        return None
    from gguf import LlamaFileType  # lazy: numpy and gguf cost ~100 ms (see _open_gguf)

    try:
        return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
    except (ValueError, TypeError, OverflowError):  # a string, a list, NaN or inf
        return None


# --- the Ollama store -------------------------------------------------------------------------


def ollama_models_dir(environ: Mapping[str, str], root: Path | None = None) -> Path:
    """The Ollama store: $OLLAMA_MODELS or Ollama's default, below `root` when one is given
    (planning for a tree that is not /)."""
    store = Path(environ.get("OLLAMA_MODELS") or DEFAULT_OLLAMA_MODELS)
    if root is None or root == Path("/") or not store.is_absolute():
        return store
    return root / store.relative_to("/")


def ollama_manifest_path(models_dir: Path, name: str) -> Path:
    """'llama3.3:70b' -> manifests/registry.ollama.ai/library/llama3.3/70b (tag 'latest')."""
    model, _, tag = name.partition(":")
    parts = model.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return models_dir.joinpath("manifests", *parts, tag or "latest")


def ollama_blob(models_dir: Path, name: str) -> Path | None:
    """The model blob of an installed Ollama model, or None when it is not installed."""
    layers = _ollama_layers(models_dir, name)
    if layers is None:
        return None
    manifest_path = ollama_manifest_path(models_dir, name)
    try:
        digest = next(
            layer["digest"] for layer in layers if layer.get("mediaType") == OLLAMA_MODEL_MEDIA_TYPE
        )
    except (KeyError, StopIteration, TypeError, AttributeError):  # a layer that is no object
        raise InputError(
            f"{manifest_path}: Ollama manifest has no model layer",
            hint=f"re-pull the model: ollama pull {name}",
        ) from None
    blob = models_dir / "blobs" / str(digest).replace(":", "-")
    if not blob.is_file():
        raise InputError(
            f"{name}: Ollama blob {blob} is missing", hint=f"re-pull the model: ollama pull {name}"
        )
    return blob


def _ollama_layers(models_dir: Path, name: str) -> list[Any] | None:
    manifest_path = ollama_manifest_path(models_dir, name)
    if not (exists(manifest_path) and manifest_path.is_file()):
        return None
    try:
        layers = json.loads(manifest_path.read_text())["layers"]
    except (ValueError, KeyError, TypeError):
        layers = None
    if not isinstance(layers, list):
        raise InputError(
            f"{manifest_path}: Ollama manifest has no model layer",
            hint=f"re-pull the model: ollama pull {name}",
        )
    return layers


def ollama_projector_bytes(models_dir: Path, name: str) -> int:
    """The size of an installed model's projector layer (0 when it has none): what llama-server
    loads as --mmproj, as the manifest records it."""
    layers = _ollama_layers(models_dir, name) or []
    return sum(
        int(layer.get("size") or 0)
        for layer in layers
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_PROJECTOR_MEDIA_TYPE
    )


def installed_ollama_names(models_dir: Path) -> list[str]:
    library = models_dir / "manifests" / "registry.ollama.ai" / "library"
    if not library.is_dir():
        return []
    return sorted(
        f"{m.name}:{t.name}" for m in library.iterdir() if m.is_dir() for t in m.iterdir()
    )


# --- resolving a reference ----------------------------------------------------------------------


def resolve(ref: str, environ: Mapping[str, str], root: Path | None = None) -> ModelSpec:
    """A GGUF path, an installed Ollama model (in the store below `root`), or a catalog tag,
    tried in that order."""
    path = Path(ref)
    if ref.endswith(".gguf") or (exists(path) and not path.is_dir()):
        return spec_from_gguf(path)
    models_dir = ollama_models_dir(environ, root)
    blob = ollama_blob(models_dir, ref)
    if blob is not None:
        spec = spec_from_gguf(blob)
        spec = with_projector(spec, ollama_projector_bytes(models_dir, ref))
        return _renamed(spec, ref, "ollama")
    entry = catalog.lookup(ref)
    if entry is not None:
        return entry
    known = catalog.names() + installed_ollama_names(models_dir)
    close = difflib.get_close_matches(ref, known, n=3, cutoff=0.5)
    hint = (
        f"did you mean {', '.join(close)}?"
        if close
        else "pass a .gguf path, an installed Ollama model, or a name from 'provision models'"
    )
    raise InputError(
        f"unknown model '{ref}': not a file, not installed in the Ollama store {models_dir}, "
        "not in the catalog",
        hint=hint,
    )


def _renamed(spec: ModelSpec, name: str, source: str) -> ModelSpec:
    return replace(spec, name=name, source=source)
