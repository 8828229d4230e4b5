"""The live probe of a whole box: NVIDIA cards through NVML, AMD cards from sysfs, one Rig.

NVIDIA cards come first, in NVML order; AMD cards follow in KFD order (their HIP order), then
the AMD cards KFD skipped. A box without an NVIDIA driver is fine when sysfs shows no NVIDIA
GPU; one whose NVIDIA GPUs cannot be read is a host error, never a snapshot that leaves them out.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from provision.errors import HostError
from provision.hardware import system
from provision.hardware.amdgpu import AmdProbe, probe_amd
from provision.hardware.rig import Gpu, Host, Rig
from provision.hardware.sysfs import Sysfs


def probe_box(sysfs: Sysfs) -> Rig:
    amd = probe_amd(sysfs)
    nvidia = _nvidia(amd, sysfs.root)
    if nvidia is None:
        return combine(system.read_host(), (), amd)
    return combine(nvidia.host, nvidia.gpus, amd)


def combine(host: Host, nvidia: tuple[Gpu, ...], amd: AmdProbe) -> Rig:
    """NVIDIA cards first (NVML's indices), then the AMD cards numbered on from there."""
    amd_gpus = tuple(replace(g, index=len(nvidia) + n) for n, g in enumerate(amd.gpus))
    return Rig(host=replace(host, amdgpu_version=amd.driver_version), gpus=nvidia + amd_gpus)


def _nvidia(amd: AmdProbe, root: Path) -> Rig | None:
    # nvml is imported here: an AMD-only probe never loads pynvml.
    from provision.hardware.nvml import NvmlAbsent, probe_rig

    try:
        return probe_rig()
    except NvmlAbsent as exc:
        if amd.nvidia_devices:
            raise HostError(
                f"NVIDIA GPU(s) at {', '.join(amd.nvidia_devices)} (seen under {root}), "
                f"but {exc.message}",
                hint=exc.hint,
            ) from None
        if not amd.gpus and amd.unbound:
            raise HostError(
                f"AMD GPU(s) at {', '.join(amd.unbound)} (seen under {root}), but the amdgpu "
                "driver does not own them, and there is no NVIDIA driver",
                hint="load amdgpu ('modprobe amdgpu'; check 'dmesg | grep amdgpu' and that "
                "/sys/module/amdgpu/initstate reads live), or pass a snapshot with --rig",
            ) from None
        if not amd.gpus:
            raise  # no GPU of either vendor: NVML's message says what to install
        return None
