"""Which GPUs a unit's runtime sees, and by what name: the visibility variables per vendor, the
ROCm gfx overrides, and llama.cpp's device names. Pure.

- NVIDIA: CUDA_VISIBLE_DEVICES by UUID, in PCI order.
- AMD: ROCR_VISIBLE_DEVICES by `GPU-<unique_id>` (ROCm's "GPU isolation techniques": filters
  for all of ROCm; the ordinal where a card has no unique_id), listed in KFD order. HIP
  renumbers the survivors from 0, so llama.cpp names them ROCm0, ROCm1, ...; whether ROCr keeps
  the listed order or KFD's is not documented, and with the list in KFD order both agree.
- HIP also obeys CUDA_VISIBLE_DEVICES (Ollama ml/device.go, updateVisibleDevicesEnv: "ROCm also
  looks at the CUDA env var, and gets confused in mixed-vendor environments"): on a box with
  both vendors an AMD unit sets HIP_VISIBLE_DEVICES itself, which HIP reads first, and an NVIDIA
  unit hides ROCm with ROCR_VISIBLE_DEVICES=-1 (an invalid id: Ollama docs/gpu.mdx).
- HSA_OVERRIDE_GFX_VERSION: Ollama reads only the global variable (discover/amd.go,
  hsaOverrideGFXTarget) and rewrites every ROCm card with it, so it is global when every AMD
  card of the unit needs the same value; per KFD node (`_<node>`, the thunk's form: ROCT-Thunk-
  Interface PR #104) when they differ, never global on a mixed rig.
"""

from __future__ import annotations

from collections.abc import Sequence

from provision import rocm
from provision.hardware.rig import Gpu, Rig, Vendor

Env = list[tuple[str, str]]


def visibility_env(gpus: Sequence[Gpu], rig: Rig, version: str | None, ollama: bool) -> Env:
    """The variables that show a unit exactly `gpus` (in that order)."""
    nvidia = [g for g in gpus if g.vendor == Vendor.NVIDIA]
    amd = [g for g in gpus if g.vendor == Vendor.AMD]
    box_has_amd = any(g.vendor == Vendor.AMD for g in rig.gpus)
    box_has_nvidia = any(g.vendor == Vendor.NVIDIA for g in rig.gpus)
    env: Env = []
    if nvidia or not amd:
        env += [("CUDA_VISIBLE_DEVICES", ",".join(g.uuid for g in nvidia or gpus))]
        env += [("CUDA_DEVICE_ORDER", "PCI_BUS_ID")]
    elif box_has_nvidia and ollama:
        # An Ollama unit of AMD cards only: its CUDA backend must not pick up the NVIDIA cards.
        env += [("CUDA_VISIBLE_DEVICES", "-1")]
    if amd:
        amd = kfd_order(amd)
        env += [("ROCR_VISIBLE_DEVICES", ",".join(rocm_id(g, rig) for g in amd))]
        if box_has_nvidia:
            env += [("HIP_VISIBLE_DEVICES", ",".join(str(n) for n in range(len(amd))))]
        env += _overrides(amd, version)
        if ollama and _left_out_amd(rig, amd):
            # Ollama's Vulkan backend would pick up the AMD cards ROCm was not given.
            env += [("OLLAMA_VULKAN", "0")]
    elif box_has_amd:
        env += [("ROCR_VISIBLE_DEVICES", "-1")]
    return env


def rocm_id(gpu: Gpu, rig: Rig) -> str:
    """How ROCR_VISIBLE_DEVICES names the card: its UUID, or its ordinal among KFD's GPUs."""
    if gpu.amd is not None and gpu.amd.unique_id is not None:
        return gpu.uuid
    nodes = sorted(g.amd.kfd_node for g in rig.gpus if g.amd and g.amd.kfd_node is not None)
    node = gpu.amd.kfd_node if gpu.amd else None
    return str(nodes.index(node)) if node in nodes else gpu.uuid


def _overrides(amd: Sequence[Gpu], version: str | None) -> Env:
    wanted = {g.index: _override(g, version) for g in amd}
    values = set(wanted.values())
    if values == {None}:
        return []
    # A card that natively is the override's target (gfx1030 for 10.3.0) agrees with it.
    native = {value for value in values if value} & {_as_override(g) for g in amd}
    if len(values - {None}) == 1 and all(
        wanted[g.index] is not None or _as_override(g) in native for g in amd
    ):
        return [("HSA_OVERRIDE_GFX_VERSION", str(next(v for v in values if v)))]
    return [
        (f"HSA_OVERRIDE_GFX_VERSION_{g.amd.kfd_node}", value)
        for g in amd
        if g.amd is not None and (value := wanted[g.index]) is not None
    ]


def _as_override(gpu: Gpu) -> str | None:
    """The card's own target in HSA_OVERRIDE_GFX_VERSION's form: gfx1030 -> 10.3.0."""
    gfx = gpu.amd.gfx_target if gpu.amd else None
    return rocm.override_value(gfx) if gfx else None


def _override(gpu: Gpu, version: str | None) -> str | None:
    gfx = gpu.amd.gfx_target if gpu.amd else None
    return rocm.override_for(gfx, version) if gfx else None


def _left_out_amd(rig: Rig, chosen: Sequence[Gpu]) -> bool:
    picked = {g.index for g in chosen}
    return any(g.vendor == Vendor.AMD and g.index not in picked for g in rig.gpus)


def kfd_order(gpus: Sequence[Gpu]) -> list[Gpu]:
    return sorted(gpus, key=lambda g: (g.amd.kfd_node if g.amd and g.amd.kfd_node else 0, g.index))


def device_names(gpus: Sequence[Gpu]) -> list[str]:
    """llama.cpp's names for `gpus`, in the order given (which `-ts` follows): CUDA<n> with n
    the place in CUDA_VISIBLE_DEVICES (listed in this order), ROCm<n> with n the HIP ordinal
    (KFD order among the visible cards). The HIP build names its devices GGML_CUDA_NAME + index,
    GGML_CUDA_NAME being "ROCm" (ggml/include/ggml-cuda.h)."""
    if not gpus or gpus[0].vendor != Vendor.AMD:
        return [f"CUDA{n}" for n in range(len(gpus))]
    ordinal = {g.index: n for n, g in enumerate(kfd_order(gpus))}
    return [f"ROCm{ordinal[g.index]}" for g in gpus]
