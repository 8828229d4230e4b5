"""Byte units: integer bytes inside, human units only at the edge. Pure."""

from __future__ import annotations

MIB = 1024**2
GIB = 1024**3
MICROWATTS = 1_000_000  # per watt: amdgpu's hwmon power files count in microwatts


def gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f} GiB"
