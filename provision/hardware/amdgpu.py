"""The AMD probe: every AMD GPU from sysfs (KFD topology, DRM, PCI, hwmon), no vendor library.

How the three trees join, as Ollama's own discovery and the kernel do it:
- a KFD topology node is a GPU when its vendor_id, device_id and drm_render_minor are all
  non-zero (Ollama discover/amd.go, kfdNodeProperties.isGPU); node 0 is the CPU, and the
  position among GPU nodes is the HIP ordinal;
- the node's render minor leads to the PCI device: class/drm/renderD<minor>/device
  (discover/amd.go, readROCmDRMDevice); the card is keyed by that PCI address and its
  unique_id, never by cardN or hwmonN numbers, which follow probe order;
- a card the amdgpu driver owns but KFD skipped (its PCIe path rejects atomics:
  amdkfd/kfd_device.c, kgd2kfd_device_init) is reported as not usable by ROCm, not dropped;
- the slot link is read on the card's own upstream switch port, walking up while the bridge
  is AMD's, because the GPU function always reports its internal x16 link (the kernel's
  amdgpu_device_partner_bandwidth does the same walk).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from provision import rocm
from provision.hardware.rig import AmdInfo, Gpu, PcieLink, PowerLimits, Vendor
from provision.hardware.sysfs import Sysfs
from provision.units import GIB, MICROWATTS

AMD_VENDOR = 0x1002
NVIDIA_VENDOR = 0x10DE
_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_SPEED = re.compile(r"^(\d+(?:\.\d+)?) ?GT/s")
_GENERATION = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6}
_KFD_NODES = ("class", "kfd", "kfd", "topology", "nodes")
_XGMI_LINK = 11  # CRAT_IOLINK_TYPE_XGMI (amdkfd/kfd_crat.h)

# Radeon boards have no FRU EEPROM, so no product_name file (amdgpu driver-misc.rst): the
# marketing name comes from the PCI device id (pci.ids).
_NAMES = {
    0x66A0: "Radeon Instinct MI50",
    0x66A1: "Radeon Instinct MI50",
    0x66AF: "Radeon VII / Instinct MI50",
    0x67DF: "Radeon RX 470/480/570/580",
    0x7388: "Instinct MI100",
    0x738C: "Instinct MI100",
    0x740C: "Instinct MI250X/MI250",
    0x740F: "Instinct MI210",
    0x73A5: "Radeon RX 6950 XT",
    0x73AF: "Radeon RX 6900 XT",
    0x73BF: "Radeon RX 6800/6800 XT/6900 XT",
    0x73DF: "Radeon RX 6700 XT",
    0x73FF: "Radeon RX 6600/6600 XT",
    0x744C: "Radeon RX 7900 XTX/7900 XT",
    0x7448: "Radeon PRO W7900",
    0x747E: "Radeon RX 7800 XT/7700 XT",
    0x7480: "Radeon RX 7600/7700S",
    0x7550: "Radeon RX 9070 XT/9070",
    0x74A1: "Instinct MI300X",
    0x15BF: "Radeon 780M (integrated)",
    0x164E: "Radeon Graphics (Raphael, integrated)",
    0x1586: "Radeon 8060S (Strix Halo, integrated)",
}


# Kernels before gfx_target_version (5.x) name no target: ROCr derived it from the device id.
# Only the old boards such kernels ran are listed.
_GFX_BY_DEVICE = {
    0x67DF: "gfx803",  # Polaris 10/20: RX 470/480/570/580
    0x67EF: "gfx803",  # Polaris 11
    0x6FDF: "gfx803",  # Polaris 20 XL
    0x687F: "gfx900",  # Vega 10: RX Vega 56/64
    0x66A0: "gfx906",
    0x66A1: "gfx906",
    0x66AF: "gfx906",  # Vega 20: Radeon VII, MI50/MI60
    0x738C: "gfx908",  # MI100
}


@dataclass(frozen=True)
class AmdProbe:
    gpus: tuple[Gpu, ...]  # index -1: the caller numbers them after the NVIDIA cards
    driver_version: str | None  # Host.amdgpu_version
    nvidia_devices: tuple[str, ...]  # PCI addresses of NVIDIA GPUs seen on the bus
    unbound: tuple[str, ...]  # AMD GPUs on the bus that the amdgpu driver does not own


def probe_amd(sysfs: Sysfs) -> AmdProbe:
    live = sysfs.text(sysfs.path("module", "amdgpu", "initstate")) == "live"
    version = sysfs.text(sysfs.path("module", "amdgpu", "version"))
    driver = version or ("in-tree" if live else None)
    gpus: list[Gpu] = []
    joined: set[str] = set()
    nodes = _kfd_gpu_nodes(sysfs)
    bdf_by_node = {n: b for n, (_, b) in nodes.items() if b is not None}
    for node, (props, bdf) in nodes.items():
        if bdf is None:
            continue
        joined.add(bdf)
        gpus.append(_read_gpu(sysfs, bdf, node, props, bdf_by_node, live))
    for bdf in _amdgpu_devices(sysfs):
        if bdf not in joined:
            gpus.append(_read_gpu(sysfs, bdf, None, {}, bdf_by_node, live))
    # NVIDIA cards the nvidia driver owns: one passed to a VM (vfio-pci) is not NVML's to read.
    nvidia = tuple(
        b for b in _display_devices(sysfs, NVIDIA_VENDOR) if _driver(sysfs, b) == "nvidia"
    )
    unbound = tuple(b for b in _display_devices(sysfs, AMD_VENDOR) if not _is_amdgpu(sysfs, b))
    return AmdProbe(tuple(gpus), driver, nvidia, unbound)


def _kfd_gpu_nodes(sysfs: Sysfs) -> dict[int, tuple[dict[str, int], str | None]]:
    """KFD node number -> (properties, PCI address) for the GPU nodes, in node order."""
    base = sysfs.path(*_KFD_NODES)
    found: dict[int, tuple[dict[str, int], str | None]] = {}
    for name in sorted((n for n in sysfs.entries(base) if n.isdigit()), key=int):
        props = sysfs.properties(base / name / "properties")
        if not all(props.get(k) for k in ("vendor_id", "device_id", "drm_render_minor")):
            continue  # a CPU node (or one whose properties could not be read)
        device = sysfs.real(sysfs.path("class", "drm", f"renderD{props['drm_render_minor']}"))
        bdf = _pci_address(sysfs, device / "device") if device is not None else None
        found[int(name)] = (props, bdf)
    return found


def _pci_address(sysfs: Sysfs, link: Path) -> str | None:
    target = sysfs.real(link)
    return target.name if target is not None and _BDF.match(target.name) else None


def _amdgpu_devices(sysfs: Sysfs) -> list[str]:
    """PCI addresses of the cards the amdgpu driver owns, from the DRM card nodes."""
    found = []
    for name in sysfs.entries(sysfs.path("class", "drm")):
        if not re.fullmatch(r"card\d+", name):
            continue
        bdf = _pci_address(sysfs, sysfs.path("class", "drm", name, "device"))
        if bdf is not None and _is_amdgpu(sysfs, bdf):
            found.append(bdf)
    return sorted(set(found))


def _device_dir(sysfs: Sysfs, bdf: str) -> Path:
    return sysfs.path("bus", "pci", "devices", bdf)


def _driver(sysfs: Sysfs, bdf: str) -> str | None:
    driver = sysfs.real(_device_dir(sysfs, bdf) / "driver")
    return driver.name if driver is not None else None


def _is_amdgpu(sysfs: Sysfs, bdf: str) -> bool:
    vendor = sysfs.number(_device_dir(sysfs, bdf) / "vendor", 16)
    return vendor == AMD_VENDOR and _driver(sysfs, bdf) == "amdgpu"


def _display_devices(sysfs: Sysfs, vendor: int) -> tuple[str, ...]:
    """PCI addresses of one vendor's display controllers (class 0x03xxxx), any driver."""
    found = []
    for bdf in sysfs.entries(sysfs.path("bus", "pci", "devices")):
        device = _device_dir(sysfs, bdf)
        if sysfs.number(device / "vendor", 16) != vendor:
            continue
        klass = sysfs.number(device / "class", 16)
        if klass is not None and klass >> 16 == 0x03:  # a display controller, not its audio
            found.append(bdf)
    return tuple(found)


def _read_gpu(
    sysfs: Sysfs,
    bdf: str,
    node: int | None,
    props: dict[str, int],
    bdf_by_node: dict[int, str],
    live: bool,
) -> Gpu:
    device = _device_dir(sysfs, bdf)
    unique_id = _unique_id(sysfs, device, props)
    gfx = rocm.gfx_target(props.get("gfx_target_version", 0))
    if gfx is None and "gfx_target_version" not in props:
        gfx = _GFX_BY_DEVICE.get(sysfs.number(device / "device", 16) or 0)
    total = sysfs.number(device / "mem_info_vram_total") or _kfd_memory(sysfs, node)
    vram_vendor = sysfs.exists(device / "mem_info_vram_vendor")
    board = sysfs.exists(device / "board_info")
    gtt = sysfs.number(device / "mem_info_gtt_total")
    usable, why = _rocm_usable(node, gfx, live)
    hive = props.get("hive_id") or sysfs.number(device / "xgmi_hive_info" / "xgmi_hive_id")
    amd = AmdInfo(
        gfx_target=gfx,
        kfd_node=node,
        render_minor=props.get("drm_render_minor"),
        unique_id=unique_id,
        xgmi_hive_id=hive or None,
        xgmi_peers=_xgmi_peers(sysfs, node, bdf_by_node),
        integrated=_integrated(total, gtt, vram_vendor or board),
        rocm_usable=usable,
        rocm_reason=why,
        memory_visible_bytes=sysfs.number(device / "mem_info_vis_vram_total"),
        gtt_total_bytes=gtt,
    )
    return Gpu(
        index=-1,
        uuid=f"GPU-{unique_id}" if unique_id else f"PCI-{bdf}",
        name=_name(sysfs, device),
        vendor=Vendor.AMD,
        pci_bus_id=bdf,
        memory_total_bytes=total or 0,
        memory_used_bytes=sysfs.number(device / "mem_info_vram_used"),
        compute_capability=None,
        architecture=rocm.architecture(gfx),
        pcie=slot_link(sysfs, device),
        nvlink=(),
        power=_power(sysfs, device),
        display_active=_display_active(sysfs, device),
        persistence_mode=None,
        mig_enabled=None,
        amd=amd,
    )


def _unique_id(sysfs: Sysfs, device: Path, props: dict[str, int]) -> str | None:
    """16 hex digits: DRM prints it in hex, KFD the same number in decimal (GFX9 and newer)."""
    drm = sysfs.number(device / "unique_id", 16)
    value = drm if drm is not None else props.get("unique_id")
    return None if not value else f"{value:016x}"


def _kfd_memory(sysfs: Sysfs, node: int | None) -> int | None:
    if node is None:
        return None
    banks = sysfs.path(*_KFD_NODES, str(node), "mem_banks")
    sizes = [
        sysfs.properties(banks / b / "properties").get("size_in_bytes")
        for b in sysfs.entries(banks)
    ]
    return sum(s for s in sizes if s) or None


def _integrated(total: int | None, gtt: int | None, discrete_marker: bool) -> bool:
    """Ollama's rule (discover/amd.go): a card with a VRAM vendor or board_info file is
    discrete; otherwise integrated when VRAM <= 4 GiB and GTT >= 8 GiB and >= 4x VRAM."""
    if discrete_marker or total is None or gtt is None:
        return False
    return total <= 4 * GIB and gtt >= 8 * GIB and gtt >= 4 * total


def _rocm_usable(node: int | None, gfx: str | None, live: bool) -> tuple[bool, str | None]:
    if not live:
        return False, "the amdgpu driver is not loaded (/sys/module/amdgpu/initstate is not live)"
    if node is None:
        return False, (
            "not in the KFD topology: ROCm cannot see it (the kernel skips a card whose PCIe "
            "path rejects atomics: look for 'skipped device' in dmesg; try another slot)"
        )
    if gfx is not None and rocm.too_old(gfx):
        return False, f"{gfx} is older than GFX9, ROCm's floor"
    return True, None


def _xgmi_peers(sysfs: Sysfs, node: int | None, bdf_by_node: dict[int, str]) -> tuple[str, ...]:
    if node is None:
        return ()
    links = sysfs.path(*_KFD_NODES, str(node), "io_links")
    peers = []
    for link in sysfs.entries(links):
        props = sysfs.properties(links / link / "properties")
        if props.get("type") == _XGMI_LINK and props.get("node_to") in bdf_by_node:
            peers.append(bdf_by_node[props["node_to"]])
    return tuple(sorted(set(peers)))


def _name(sysfs: Sysfs, device: Path) -> str:
    fru = sysfs.text(device / "product_name")
    if fru:
        return fru
    device_id = sysfs.number(device / "device", 16)
    if device_id is not None and device_id in _NAMES:
        return f"AMD {_NAMES[device_id]}"
    return f"AMD GPU 1002:{device_id or 0:04x}"


def _generation(speed: str | None) -> int | None:
    """'16.0 GT/s PCIe' (or '8 GT/s' from old kernels) -> 4; 'Unknown' -> None."""
    match = _SPEED.match(speed or "")
    return _GENERATION.get(float(match.group(1))) if match else None


def _link(sysfs: Sysfs, device: Path, which: str) -> tuple[int | None, int | None]:
    gen = _generation(sysfs.text(device / f"{which}_link_speed"))
    width = sysfs.number(device / f"{which}_link_width")
    return gen, width or None


def _is_pci_device(path: Path) -> bool:
    return bool(_BDF.match(path.name))


def slot_link(sysfs: Sysfs, device: Path) -> PcieLink:
    """The link into the slot: read on the top-most AMD bridge above the GPU (the card's own
    switch), capped by the first other bridge's capability (the platform's slot)."""
    gpu = sysfs.real(device)
    if gpu is None:
        return PcieLink(None, None, None, None)
    port = gpu
    parent = gpu.parent
    while (
        _is_pci_device(parent)
        and sysfs.number(parent / "vendor", 16) == AMD_VENDOR
        and (sysfs.number(parent / "class", 16) or 0) >> 8 == 0x0604
    ):
        port, parent = parent, parent.parent
    gen_cur, width_cur = _link(sysfs, port, "current")
    gen_cap, width_cap = _link(sysfs, port, "max")
    if _is_pci_device(parent):
        gen_slot, width_slot = _link(sysfs, parent, "max")
        gen_cap = _least(gen_cap, gen_slot)
        width_cap = _least(width_cap, width_slot)
    return PcieLink(
        gen_max=gen_cap, width_max=width_cap, gen_current=gen_cur, width_current=width_cur
    )


def _least(a: int | None, b: int | None) -> int | None:
    known = [v for v in (a, b) if v is not None]
    return min(known) if known else None


def _power(sysfs: Sysfs, device: Path) -> PowerLimits:
    """hwmon power1_cap*, microwatts, printed as whole watts x 10^6 (pm/amdgpu_pm.c)."""
    for hwmon in sysfs.entries(device / "hwmon"):
        base = device / "hwmon" / hwmon
        if not sysfs.exists(base / "power1_cap_max"):
            continue  # hidden on most APUs and under SR-IOV (hwmon_attributes_visible)

        def watts(name: str, base: Path = base) -> float | None:
            value = sysfs.number(base / name)
            return None if value is None else float(value // MICROWATTS)

        return PowerLimits(
            limit_w=watts("power1_cap"),
            default_w=watts("power1_cap_default"),
            min_w=watts("power1_cap_min"),
            max_w=watts("power1_cap_max"),
        )
    return PowerLimits(None, None, None, None)


def _display_active(sysfs: Sysfs, device: Path) -> bool | None:
    """A connector of the card that is connected and enabled (drm_sysfs.c status/enabled)."""
    cards = [n for n in sysfs.entries(device / "drm") if re.fullmatch(r"card\d+", n)]
    if not cards:
        return None
    for card in cards:
        for connector in sysfs.entries(device / "drm" / card):
            if not connector.startswith(f"{card}-"):
                continue
            base = device / "drm" / card / connector
            if (
                sysfs.text(base / "status") == "connected"
                and sysfs.text(base / "enabled") == "enabled"
            ):
                return True
    return False


def pci_device_dir(sysfs_root: str, bdf: str) -> str:
    """The card's PCI device directory on the target: its power cap is written to the
    hwmon/hwmonN below it, N looked up when the cap is set (N follows probe order)."""
    domain, rest = bdf.split(":", 1)
    # sysfs names the 16-bit domain form (0000:03:00.0), NVML-style files the 32-bit one.
    return f"{sysfs_root.rstrip('/')}/bus/pci/devices/{int(domain, 16):04x}:{rest.lower()}"
