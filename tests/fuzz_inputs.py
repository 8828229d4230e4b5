"""Seeded mutators of the inputs provision reads: YAML and JSON documents (rigs, profiles,
manifests, backup indexes), GGUF headers, and the payloads that try to escape a rendered file.

Every mutator takes a `random.Random`, so a seed names a whole run. The mutations are the
classes a hostile or corrupt file falls into: a value of the wrong type or past its range
(NaN, infinity, 5,000 digits, 2**64), deep nesting, a missing or unknown key, duplicated keys,
truncation, bytes that are not UTF-8, and strings built to end a line, a directive or a quote
in the file they are rendered into.
"""

from __future__ import annotations

import copy
import random
import struct
from typing import Any

# Strings that would add a line, a directive, a specifier, a variable or a quote to a rendered
# file if any filter let them through (systemd, EnvironmentFile, nginx, Modelfile), or that
# reach the terminal as a control sequence.
PAYLOADS = (
    "x\n[Service]\nExecStartPre=/bin/sh -c id",
    "x\r\nUser=root",
    "trailing\\",
    "50%h%n%%%",
    "a;b {c}",
    "} location /admin { return 200;",
    '"""\nSYSTEM evil\n"""',
    '"quoted',
    "$(id)${HOME}`id`$$",
    "\x1b]0;title\x07\x1b[2J",
    "nul\x00byte",
    "tab\tand\x0bvt",
    "\u202ebidi\u2028line",
    " padded ",
    "",
    "x" * 5000,
)
HOSTILE_SCALARS: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    2**31,
    2**64,
    10**7,
    float("nan"),
    float("inf"),
    -0.0,
    1e308,
    "",
    "auto",
    "12",
    [],
    {},
    [1, [2, [3]]],
)


def deep(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def _paths(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a plain document, as the keys and indexes that lead there."""
    found = [here]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*here, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*here, index))
    return found


def _parent(document: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        document = document[step]
    return document


def mutate_plain(rng: random.Random, document: Any, rounds: int = 2) -> Any:
    """A copy of a parsed document with a few values replaced, removed, added or deepened."""
    document = copy.deepcopy(document)
    for _ in range(rounds):
        places = [p for p in _paths(document) if p]
        if not places:
            return rng.choice(HOSTILE_SCALARS)
        path = rng.choice(places)
        parent, key = _parent(document, path), path[-1]
        choice = rng.randrange(6)
        if choice == 0:
            parent[key] = rng.choice(HOSTILE_SCALARS)
        elif choice == 1:
            parent[key] = rng.choice(PAYLOADS)
        elif choice == 2:
            del parent[key]
        elif choice == 3 and isinstance(parent, dict):
            parent[rng.choice(["extra", "gpus", "files", "éé", "1"])] = rng.choice(HOSTILE_SCALARS)
        elif choice == 4:
            parent[key] = deep(rng.choice([33, 40, 200]))  # deeper: mutate_text, as text
        elif isinstance(parent, list):
            parent.extend([parent[key]] * rng.choice([2, 50]))
        else:
            parent[key] = [parent[key]]
    return document


def mutate_text(rng: random.Random, text: str) -> bytes:
    """Damage to the bytes of a document: truncation, stray bytes, non-UTF-8, long numbers,
    a duplicated key line, deep flow nesting."""
    data = text.encode()
    choice = rng.randrange(7)
    if choice == 0:
        return data[: rng.randrange(len(data) + 1)]
    if choice == 1:
        at = rng.randrange(len(data) + 1)
        return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[at:]
    if choice == 2:
        return data + b"\nx: \xff\xfe\xc3(\n"
    if choice == 3:
        lines = text.splitlines(keepends=True)
        line = rng.choice(lines) if lines else "a: 1\n"
        return (text + line).encode()
    if choice == 4:
        return text.replace("1", "1" + "9" * 5000, 1).encode()
    if choice == 5:
        n = rng.choice([100, 1100, 20000])
        return b"a: " + b"[" * n + b"]" * n + b"\n" + data
    return data.replace(b":", b": {", 1)


# --- GGUF -------------------------------------------------------------------------------------

_COUNTS_AT = 8  # magic (4) and version (4), then tensor_count u64 and kv_count u64


def mutate_gguf(rng: random.Random, base: bytes) -> bytes:
    """A real GGUF file with its header damaged: absurd counts, lengths, dimensions, flipped
    bytes, truncation."""
    data = bytearray(base)
    choice = rng.randrange(5)
    if choice == 0:
        at = _COUNTS_AT + 8 * rng.randrange(2)
        data[at : at + 8] = struct.pack("<Q", rng.choice([2**40, 2**63, 2**64 - 1, 10**6, 0]))
    elif choice == 1:
        return bytes(data[: rng.randrange(len(data))])
    elif choice == 2:
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(min(len(data), 4096))] = rng.randrange(256)
    elif choice == 3:
        at = rng.randrange(24, min(len(data), 4096) - 8)
        data[at : at + 8] = struct.pack("<Q", rng.choice([2**32, 2**40, 2**62, 7]))
    else:
        at = rng.randrange(24, min(len(data), 4096) - 4)
        data[at : at + 4] = struct.pack("<I", rng.choice([9, 12, 13, 255, 2**31]))
    return bytes(data)
