"""Bounds on the documents provision reads (profiles, rig snapshots, manifests, backup
indexes, a desired state as JSON): how large, how deeply nested, how long a number.

Python's parsers recurse once per nesting level and convert a number of any length, so a
hostile or corrupt file could otherwise end in a RecursionError or a 5,000-digit ValueError
(a traceback). Every limit sits far above what provision itself writes (an 8-GPU snapshot is
~10 KB and 4 levels deep) and is checked before the parser allocates for it: the size before
decoding, the depth while composing (YAML) or as the C scanner stops (JSON), a number's
digits before int() sees them.

Pure, but for read_document, which reads one input file named on the command line.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from provision.units import MIB

MAX_DOCUMENT_BYTES = 4 * MIB
MAX_DEPTH = 32  # nesting of lists and mappings; our own files use at most 5
MAX_NUMBER_DIGITS = 40  # typed_load refuses anything past 2**63 (19 digits) with the field


class DocumentError(ValueError):
    """A document past one of the bounds; `line` is 1-based when known."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line


def check_size(size_bytes: int) -> None:
    if size_bytes > MAX_DOCUMENT_BYTES:
        raise DocumentError(
            f"{size_bytes} bytes, more than the {MAX_DOCUMENT_BYTES} a document may have"
        )


def read_document(path: Path) -> bytes:
    """The bytes of an input file: a regular file (never a FIFO, which would block the read,
    or a device) of at most MAX_DOCUMENT_BYTES; OSError as from open()."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise DocumentError("is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise DocumentError("not a regular file (a FIFO, socket or device)")
        check_size(os.fstat(fd).st_size)
        data = handle.read(MAX_DOCUMENT_BYTES + 1)
    check_size(len(data))  # it grew while we read
    return data


def exists(path: Path) -> bool:
    """Whether a path named in input exists. A name the OS cannot look up (too long, a NUL
    byte) names nothing, where pathlib would raise."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _too_deep(line: int | None) -> DocumentError:
    return DocumentError(f"nested more than {MAX_DEPTH} levels deep", line)


def _json_number(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise DocumentError(f"a number with {len(text.lstrip('-'))} digits")
    return int(text)


def _json_constant(name: str) -> Any:
    raise DocumentError(f"{name} is not a JSON number")


def load_json(text: str | bytes) -> Any:
    """json.loads within the bounds; DocumentError (a ValueError) past them, as for bad JSON."""
    check_size(len(text))
    try:
        data = json.loads(text, parse_int=_json_number, parse_constant=_json_constant)
    except RecursionError:  # the C scanner stops itself at the interpreter's recursion limit
        raise _too_deep(None) from None
    check_depth(data)
    return data


def check_yaml_int(text: str, line: int) -> None:
    """Before the YAML constructor calls int() on a scalar: a bounded number of digits."""
    digits = sum(c.isalnum() for c in text)
    if digits > MAX_NUMBER_DIGITS:
        raise DocumentError(f"a number with {digits} digits", line)


def check_yaml_depth(depth: int, line: int) -> None:
    """From a YAML composer, at each nested node: refuse past MAX_DEPTH before recursing."""
    if depth > MAX_DEPTH:
        raise _too_deep(line)


def check_depth(data: Any) -> None:
    """The nesting of loaded data, walked without recursion (a C parser composed it, with
    a limit of its own); each shared (aliased) object is walked once."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen: set[int] = set()
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list) or id(node) in seen:
            continue
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise _too_deep(None)
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children)
