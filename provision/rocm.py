"""ROCm's conventions: gfx targets, the families they belong to, which targets each Ollama
version ships kernels for, and the HSA_OVERRIDE_GFX_VERSION value that maps a card onto one.

Pure. These are AMD's and Ollama's rules, not ours (sources cited per table); when a new Ollama
changes its target list, this module changes and nothing else.
"""

from __future__ import annotations

from provision.ollama import version_tuple


def _targets(names: str) -> frozenset[str]:
    return frozenset(names.split())


# Ollama's ROCm builds per version (llama/server/CMakePresets.json and docs/gpu.mdx at the
# tags named; commit c68f367ef dropped gfx900/906 in 0.12.4, 26acfa42b dropped gfx1010/1012/
# 1103 in 0.31.2: "We rely on Vulkan now to cover these older unsupported devices").
_OLLAMA_TARGETS: tuple[tuple[tuple[int, ...], frozenset[str]], ...] = (
    (
        (0, 12, 4),
        _targets(
            "gfx900 gfx906 gfx908 gfx90a gfx940 gfx941 gfx942 gfx1010 gfx1012 gfx1030 "
            "gfx1100 gfx1101 gfx1102 gfx1151 gfx1200 gfx1201"
        ),
    ),
    (
        (0, 30, 0),
        _targets(
            "gfx908 gfx90a gfx940 gfx941 gfx942 gfx1010 gfx1012 gfx1030 gfx1100 gfx1101 "
            "gfx1102 gfx1151 gfx1200 gfx1201"
        ),
    ),
    (
        (0, 31, 2),
        _targets(
            "gfx908 gfx90a gfx942 gfx950 gfx1010 gfx1012 gfx1030 gfx1100 gfx1101 gfx1102 "
            "gfx1103 gfx1150 gfx1151 gfx1200 gfx1201"
        ),
    ),
)
# From 0.31.2 on (and for an unknown version: the newest list).
_OLLAMA_TARGETS_LATEST = _targets(
    "gfx908 gfx90a gfx942 gfx950 gfx1030 gfx1100 gfx1101 gfx1102 gfx1150 gfx1151 gfx1200 gfx1201"
)

# A target without kernels runs on its family's supported neighbour: RDNA2 on 10.3.0, RDNA3 on
# 11.0.0 (Ollama docs/gpu.mdx "RX 5400 is gfx1034 ... HSA_OVERRIDE_GFX_VERSION=10.3.0";
# llama.cpp docs/build.md, HIP section). Other families have no neighbour that works.
_OVERRIDE_NEIGHBOUR = {
    "gfx1031": "10.3.0",
    "gfx1032": "10.3.0",
    "gfx1033": "10.3.0",
    "gfx1034": "10.3.0",
    "gfx1035": "10.3.0",
    "gfx1036": "10.3.0",
    "gfx1103": "11.0.0",
}


def gfx_target(target_version: int) -> str | None:
    """KFD's gfx_target_version (major*10000 + minor*100 + stepping, decimal parts) -> "gfx1100".

    The name prints minor and stepping in hex: 90010 -> gfx90a (Ollama discover/amd.go,
    gfxTargetFromKFDVersion; kernel amdkfd/kfd_device.c, kgd2kfd_probe). 0 is a CPU node."""
    if target_version <= 0:
        return None
    major, rest = divmod(target_version, 10000)
    minor, stepping = divmod(rest, 100)
    return f"gfx{major}{minor:x}{stepping:x}"


def architecture(gfx: str | None) -> str | None:
    """The family a target belongs to, as AMD names it (GCN, CDNA, RDNA)."""
    if gfx is None:
        return None
    body = gfx.removeprefix("gfx")
    families = (
        ("115", "rdna3.5"),
        ("12", "rdna4"),
        ("11", "rdna3"),
        ("103", "rdna2"),
        ("101", "rdna1"),
        ("950", "cdna4"),
        ("94", "cdna3"),
        ("90a", "cdna2"),
        ("908", "cdna1"),
        ("90", "gcn5"),
        ("8", "gcn4"),
    )
    return next((name for prefix, name in families if body.startswith(prefix)), None)


def ollama_targets(version: str | None) -> frozenset[str]:
    """The gfx targets this Ollama's ROCm build has kernels for."""
    parsed = version_tuple(version)
    if parsed is None:
        return _OLLAMA_TARGETS_LATEST
    for below, targets in _OLLAMA_TARGETS:
        if parsed < below:
            return targets
    return _OLLAMA_TARGETS_LATEST


def override_value(gfx: str) -> str:
    """A gfx target in HSA_OVERRIDE_GFX_VERSION's form: gfx1030 -> "10.3.0" (decimal major,
    hex minor and stepping in the name, decimal parts in the variable)."""
    body = gfx.removeprefix("gfx")
    return f"{int(body[:-2])}.{int(body[-2], 16)}.{int(body[-1], 16)}"


def override_target(value: str) -> str:
    """The inverse: "10.3.0" -> gfx1030."""
    major, minor, stepping = (int(part) for part in value.split("."))
    return f"gfx{major}{minor:x}{stepping:x}"


def override_for(gfx: str, version: str | None) -> str | None:
    """The HSA_OVERRIDE_GFX_VERSION value that maps `gfx` onto a target this Ollama ships, or
    None when it runs natively or has no working neighbour."""
    targets = ollama_targets(version)
    if gfx in targets:
        return None
    value = _OVERRIDE_NEIGHBOUR.get(gfx)
    if value is None:
        return None
    return value if override_target(value) in targets else None


def too_old(gfx: str) -> bool:
    """ROCm needs GFX9 or newer (Ollama's RocmComputeMajorMin = "9" up to 0.12)."""
    digits = gfx.removeprefix("gfx")
    return len(digits) < 3 or not digits[:-2].isdigit() or int(digits[:-2]) < 9
