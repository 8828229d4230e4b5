"""Reading a sysfs tree: every read of the AMD probe goes through here, under one root.

The root plays /sys (`provision probe --sysfs DIR`). A value the kernel could not give (the file
is missing, the driver refuses it during a reset, an SMU query printed an empty line) is None,
never an exception. Symlinks are followed only while they stay inside the root. Every path read
is recorded, so that `--capture-sysfs` can copy exactly those files and links, and nothing else
(no serial numbers, no EDIDs: the probe never reads them).
"""

from __future__ import annotations

import os
from pathlib import Path


class Sysfs:
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self.visited: set[str] = set()  # paths relative to the root, as the probe named them

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def _note(self, path: Path) -> None:
        if path.is_relative_to(self.root):
            self.visited.add(str(path.relative_to(self.root)))

    def text(self, path: Path) -> str | None:
        """The file's value without its newline; None when unreadable or empty."""
        self._note(path)
        if self.real(path) is None:
            return None
        try:
            value = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None
        return value or None

    def number(self, path: Path, base: int = 10) -> int | None:
        value = self.text(path)
        try:
            return None if value is None else int(value, base)
        except ValueError:
            return None

    def exists(self, path: Path) -> bool:
        self._note(path)
        return self.real(path) is not None and path.exists()

    def real(self, path: Path) -> Path | None:
        """Where `path` leads, symlinks resolved; None when it leaves the root or is missing."""
        self._note(path)
        resolved = Path(os.path.realpath(path))
        if resolved != self.root and self.root not in resolved.parents:
            return None
        return resolved if resolved.exists() else None

    def entries(self, path: Path) -> list[str]:
        """The names in a directory, sorted; empty when it cannot be listed."""
        self._note(path)
        if self.real(path) is None:
            return []
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def properties(self, path: Path) -> dict[str, int]:
        """A KFD `properties` file: `key value` lines, decimal. Unknown keys and any order are
        fine (the kernel adds keys over time: kfd_topology.c, node_show)."""
        text = self.text(path) or ""
        found: dict[str, int] = {}
        for line in text.splitlines():
            key, _, value = line.strip().partition(" ")
            if value.strip().isdigit():
                found[key] = int(value)
        return found


def capture(sysfs: Sysfs, out: Path) -> int:
    """Copy every file and symlink the probe visited into `out` (which then plays /sys), with
    the links kept relative as the kernel makes them. Returns the number of files copied."""
    copied = 0
    for relative in sorted(sysfs.visited):
        copied += _copy(sysfs.root, Path(relative).parts, out)
    return copied


def _copy(root: Path, parts: tuple[str, ...], out: Path) -> int:
    here = root
    for position, part in enumerate(parts):
        step = here / part
        if step.is_symlink():
            link = out / step.relative_to(root)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                os.symlink(os.readlink(step), link)
            target = Path(os.path.realpath(step))
            if target != root and root not in target.parents:
                return 0
            rest = target.relative_to(root).parts + parts[position + 1 :]
            return _copy(root, rest, out)
        here = step
    destination = out / here.relative_to(root)
    if here.is_dir():
        destination.mkdir(parents=True, exist_ok=True)
        return 0
    if not here.is_file():
        return 0
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Not copyfile: sysfs files claim 4096 bytes and sendfile on them is not reliable.
        destination.write_bytes(here.read_bytes())
    except OSError:
        return 0  # unreadable in the source: absent in the copy, which reads the same (None)
    return 1
