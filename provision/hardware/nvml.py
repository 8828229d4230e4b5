"""The live probe: reads every NVIDIA GPU through NVML. The only module that imports pynvml.

A reading NVML cannot give (NotSupported on this GPU, missing in this driver, ...) becomes None
in the snapshot, never a guess and never an exception. Only what identifies a GPU (handle, UUID,
name, PCI bus id, memory size) is required; without it there is no snapshot, and the probe fails
with a HostError (exit 3). So does an NVML that cannot start, with a hint for each known cause.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

from provision.errors import HostError
from provision.hardware import system
from provision.hardware.rig import Gpu, NvLink, PcieLink, PowerLimits, Rig, Vendor

T = TypeVar("T")

# nvmlDeviceArchitecture_t; anything else (older, newer, NVML_DEVICE_ARCH_UNKNOWN) is None.
ARCHITECTURES: dict[int, str] = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
}

_NO_GPU_HINT = "or pass a recorded snapshot with --rig FILE"


class NvmlAbsent(HostError):
    """No NVIDIA driver on this host (library missing or module not loaded): on a box with
    other GPUs that is no error."""


def probe_rig() -> Rig:
    """Read every GPU in NVML index order and the host; raises HostError when NVML fails."""
    # pynvml is imported here, not at the top, so that commands reading --rig never load it.
    import pynvml

    _init(pynvml)
    try:
        driver, cuda, nvml_version = _read_nvml_host(pynvml)
        gpus = tuple(_read_gpu(pynvml, index) for index in range(_device_count(pynvml)))
    finally:
        with suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return Rig(host=system.read_host(driver, cuda, nvml_version), gpus=gpus)


def _init(nvml: Any) -> None:
    """nvmlInit, with one message and one hint per known cause of failure."""
    causes: list[tuple[type[Exception], str, str]] = [
        (
            nvml.NVMLError_LibraryNotFound,
            "NVIDIA driver library libnvidia-ml.so.1 not found or not loadable",
            f"install the NVIDIA driver, which ships it, {_NO_GPU_HINT}",
        ),
        (
            nvml.NVMLError_DriverNotLoaded,
            "NVIDIA driver not loaded: libnvidia-ml.so.1 is installed but the kernel module "
            "is not running",
            "load the kernel module ('modprobe nvidia'; check 'lsmod | grep nvidia'), "
            + _NO_GPU_HINT,
        ),
        (
            nvml.NVMLError_LibRmVersionMismatch,
            "NVIDIA driver/library version mismatch: the running kernel module and "
            "libnvidia-ml.so.1 come from different driver versions",
            "reboot after a driver upgrade (or unload and reload the nvidia kernel modules)",
        ),
        (
            nvml.NVMLError_NoPermission,
            "no permission to talk to the NVIDIA driver",
            "run as root, or check the permissions of /dev/nvidia* ('ls -l /dev/nvidia*')",
        ),
    ]
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        absent = (nvml.NVMLError_LibraryNotFound, nvml.NVMLError_DriverNotLoaded)
        for cause, message, hint in causes:
            if isinstance(exc, cause):
                error = NvmlAbsent if isinstance(exc, absent) else HostError
                raise error(f"{message} (NVML: {exc})", hint=hint) from None
        raise HostError(
            f"NVML failed to start: {exc}", hint=f"check that 'nvidia-smi' works, {_NO_GPU_HINT}"
        ) from None


def _or_none(nvml: Any, read: Callable[..., T], *args: Any) -> T | None:
    """One NVML reading, or None when NVML cannot give it on this GPU or driver."""
    try:
        return read(*args)
    except nvml.NVMLError:
        return None


def _required(nvml: Any, what: str, read: Callable[..., T], *args: Any) -> T:
    """A reading the snapshot cannot do without; failing to get it is a host error."""
    try:
        return read(*args)
    except nvml.NVMLError as exc:
        raise HostError(
            f"NVML cannot read {what}: {exc}",
            hint=f"check 'nvidia-smi -q' and the kernel log ('dmesg'), {_NO_GPU_HINT}",
        ) from None


def _device_count(nvml: Any) -> int:
    count: int = _required(nvml, "the number of GPUs", nvml.nvmlDeviceGetCount)
    return count


def _read_nvml_host(nvml: Any) -> tuple[str | None, str | None, str | None]:
    """driver version, CUDA driver version ("12.4"), NVML version."""
    cuda = _or_none(nvml, nvml.nvmlSystemGetCudaDriverVersion)
    return (
        _or_none(nvml, nvml.nvmlSystemGetDriverVersion),
        None if cuda is None else format_cuda_version(cuda),
        _or_none(nvml, nvml.nvmlSystemGetNVMLVersion),
    )


def format_cuda_version(version: int) -> str:
    """NVML's integer form (1000 * major + 10 * minor) -> "major.minor": 12040 -> "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _read_gpu(nvml: Any, index: int) -> Gpu:
    handle = _required(nvml, f"GPU {index}", nvml.nvmlDeviceGetHandleByIndex, index)
    pci = _required(nvml, f"the PCI bus id of GPU {index}", nvml.nvmlDeviceGetPciInfo, handle)
    bus_id = _bus_id(pci)
    memory = _required(
        nvml, f"the memory of GPU {index} ({bus_id})", nvml.nvmlDeviceGetMemoryInfo, handle
    )
    cc = _or_none(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle)
    arch = _or_none(nvml, nvml.nvmlDeviceGetArchitecture, handle)
    mig = _or_none(nvml, nvml.nvmlDeviceGetMigMode, handle)
    return Gpu(
        index=index,
        uuid=_text(_required(nvml, f"the UUID of GPU {index}", nvml.nvmlDeviceGetUUID, handle)),
        name=_text(_required(nvml, f"the name of GPU {index}", nvml.nvmlDeviceGetName, handle)),
        vendor=Vendor.NVIDIA,
        pci_bus_id=bus_id,
        memory_total_bytes=memory.total,
        memory_used_bytes=memory.used,
        compute_capability=None if cc is None else f"{cc[0]}.{cc[1]}",
        architecture=None if arch is None else ARCHITECTURES.get(arch),
        pcie=_read_pcie(nvml, handle),
        nvlink=_read_nvlinks(nvml, handle),
        power=_read_power(nvml, handle),
        display_active=_flag(_or_none(nvml, nvml.nvmlDeviceGetDisplayActive, handle)),
        persistence_mode=_flag(_or_none(nvml, nvml.nvmlDeviceGetPersistenceMode, handle)),
        mig_enabled=None if mig is None else mig[0] == nvml.NVML_DEVICE_MIG_ENABLE,
        amd=None,
    )


def _read_pcie(nvml: Any, handle: Any) -> PcieLink:
    return PcieLink(
        gen_max=_or_none(nvml, nvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
        width_max=_or_none(nvml, nvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
        gen_current=_or_none(nvml, nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
        width_current=_or_none(nvml, nvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
    )


def _read_nvlinks(nvml: Any, handle: Any) -> tuple[NvLink, ...]:
    """Active links only. GPUs without NVLink answer NotSupported for every link."""
    links = []
    for link in range(nvml.NVML_NVLINK_MAX_LINKS):
        if _or_none(nvml, nvml.nvmlDeviceGetNvLinkState, handle, link) != nvml.NVML_FEATURE_ENABLED:
            continue
        peer = _or_none(nvml, nvml.nvmlDeviceGetNvLinkRemotePciInfo, handle, link)
        # A link whose peer NVML cannot name is of no use to placement: leave it out.
        if peer is not None:
            links.append(NvLink(link=link, peer_pci_bus_id=_bus_id(peer)))
    return tuple(links)


def _read_power(nvml: Any, handle: Any) -> PowerLimits:
    constraints = _or_none(nvml, nvml.nvmlDeviceGetPowerManagementLimitConstraints, handle)
    min_mw, max_mw = (None, None) if constraints is None else constraints
    return PowerLimits(
        limit_w=_watts(_or_none(nvml, nvml.nvmlDeviceGetPowerManagementLimit, handle)),
        default_w=_watts(_or_none(nvml, nvml.nvmlDeviceGetPowerManagementDefaultLimit, handle)),
        min_w=_watts(min_mw),
        max_w=_watts(max_mw),
    )


def _watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else milliwatts / 1000


def _flag(state: int | None) -> bool | None:
    """nvmlEnableState_t (0 disabled, 1 enabled) -> bool."""
    return None if state is None else bool(state)


def _bus_id(pci: Any) -> str:
    """The 32-bit-domain form NVML prints ("00000000:01:00.0"); old drivers fill only the
    legacy 16-bit one."""
    return _text(pci.busId) or _text(pci.busIdLegacy)


def _text(value: str | bytes) -> str:
    # pynvml decodes most strings itself; older releases hand back bytes.
    return value.decode() if isinstance(value, bytes) else value
