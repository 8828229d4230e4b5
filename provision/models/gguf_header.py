"""A bounded walk over a GGUF header before `gguf.GGUFReader` parses it. Pure (a buffer in).

The reader trusts every count in the file: it loops `tensor_count` and `kv_count` times and
once per array element, so a header claiming 2**40 tensors spins for hours and a 2**60-element
array never ends. This walk reads the same layout (the GGUF spec: magic, version, tensor_count
u64, kv_count u64, then the key-values, then the tensor infos) and checks each count and
length against the bytes the file has left *before* looping over it; it keeps nothing, so a
refused file costs at most one pass over its header.

Limits, from the runtimes that load these files: a string is at most 16 MiB and a tensor has
at most 4 dimensions (Ollama fs/gguf/gguf.go, MaxStringLength and MaxTensorDims); a tensor's
element count must not overflow (Ollama fs/ggml/gguf.go, gguf.Decode: "elements overflow"),
nor, since no type stores an element in less than one bit, need more bytes than the file has.
Arrays of arrays are refused (llama.cpp's ggml/src/gguf.cpp reads none).
"""

from __future__ import annotations

import struct
from mmap import mmap

MAGIC = b"GGUF"
VERSIONS = frozenset({2, 3})
MAX_STRING_BYTES = 16 << 20
MAX_TENSOR_DIMS = 4
MAX_ELEMENTS = 2**63 - 1
_ARRAY, _STRING = 9, 8
# GGUF value type -> bytes of one value (the GGUF spec's gguf_metadata_value_type).
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a one-byte key, the type, the smallest value
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


class HeaderError(ValueError):
    """The header claims what the file cannot hold; the message says what and where."""


class _Cursor:
    def __init__(self, data: bytes | mmap) -> None:
        self.view = memoryview(data)
        self.size = len(self.view)
        self.at = 0
        self.order = "<"

    @property
    def left(self) -> int:
        return self.size - self.at

    def take(self, n: int, what: str) -> memoryview:
        if n > self.left:
            raise HeaderError(f"{what} at byte {self.at} needs {n} bytes, the file has {self.left}")
        chunk = self.view[self.at : self.at + n]
        self.at += n
        return chunk

    def u32(self, what: str) -> int:
        value: int = struct.unpack(self.order + "I", self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = struct.unpack(self.order + "Q", self.take(8, what))[0]
        return value

    def count(self, what: str, each_bytes: int, limit: int | None = None) -> int:
        """A count of items of at least each_bytes each, checked before anything loops on it."""
        n = self.u64(what)
        if n * each_bytes > self.left or (limit is not None and n > limit):
            raise HeaderError(
                f"{what} is {n}: the {self.left} bytes left in the file cannot hold that many"
            )
        return n

    def string(self, what: str) -> memoryview:
        n = self.count(f"{what} length", 1, MAX_STRING_BYTES)
        return self.take(n, what)


def check_header(data: bytes | mmap) -> None:
    """Walk the header in `data` (the whole file, mapped); HeaderError at the first count or
    length the file cannot hold."""
    cursor = _Cursor(data)
    if bytes(cursor.take(4, "magic")) != MAGIC:
        raise HeaderError("no GGUF magic at the start")
    version = cursor.u32("version")
    if version not in VERSIONS:
        cursor.order = ">"  # the reader also takes a byte-swapped (big-endian) file
        if int.from_bytes(version.to_bytes(4, "little"), "big") not in VERSIONS:
            raise HeaderError(f"GGUF version {version} (this reader takes 2 and 3)")
    n_tensors = cursor.count("tensor_count", _MIN_TENSOR_BYTES)
    n_kv = cursor.count("kv_count", _MIN_KV_BYTES)
    for _ in range(n_kv):
        key = bytes(cursor.string("key")).decode("utf-8", "replace")
        _value(cursor, cursor.u32(f"type of {key!r}"), key)
    for _ in range(n_tensors):
        _tensor_info(cursor)


def _value(cursor: _Cursor, kind: int, key: str) -> None:
    if kind in _SCALAR_BYTES:
        cursor.take(_SCALAR_BYTES[kind], key)
    elif kind == _STRING:
        cursor.string(key)
    elif kind == _ARRAY:
        item = cursor.u32(f"item type of {key!r}")
        if item == _ARRAY:
            raise HeaderError(f"{key!r} is an array of arrays, which GGUF readers do not take")
        if item == _STRING:
            for _ in range(cursor.count(f"length of {key!r}", 8)):
                cursor.string(key)
        elif item in _SCALAR_BYTES:
            n = cursor.count(f"length of {key!r}", _SCALAR_BYTES[item])
            cursor.take(n * _SCALAR_BYTES[item], key)
        else:
            raise HeaderError(f"{key!r} has the unknown item type {item}")
    else:
        raise HeaderError(f"{key!r} has the unknown value type {kind}")


def _tensor_info(cursor: _Cursor) -> None:
    name = bytes(cursor.string("tensor name")).decode("utf-8", "replace")
    n_dims = cursor.u32(f"n_dims of tensor {name!r}")
    if n_dims > MAX_TENSOR_DIMS:
        raise HeaderError(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_TENSOR_DIMS})")
    elements = 1
    for _ in range(n_dims):
        elements *= cursor.u64(f"a dimension of tensor {name!r}")
    if elements > MAX_ELEMENTS or elements > cursor.size * 8:
        raise HeaderError(
            f"tensor {name!r} claims {elements} elements, more than a file of {cursor.size} "
            "bytes holds"
        )
    cursor.take(4 + 8, f"type and offset of tensor {name!r}")
