"""Fake Linux ``/sys`` trees for AMD (and mixed NVIDIA) GPU rigs, laid out as the kernel does.

Written from ``shared/reference/amd-rocm.md`` only (§1.1-1.5, §3), never from the product's probe,
so that tests built on it can catch the probe's mistakes. ``build(sys_dir, rig)`` writes real files,
each ending in "\\n" as the kernel prints it, and relative symlinks in kernfs style: up to the first
common ancestor, then down by name (``drm/card0/device -> ../../../0000:03:00.0``, §1.5).

What the tree holds, per §1.5: ``module/amdgpu``; the KFD topology (node 0 the CPU, then one node
per ROCm-usable GPU in PCI order); the PCI chain from the root port down to each GPU with link files
on every bridge; amdgpu's ``mem_info_*``, ``unique_id``, ``hwmon`` and ``drm`` entries; and the
``class/{drm,hwmon,kfd}`` and ``bus/pci/{devices,drivers}`` links into it. Two non-GPU hwmon devices
(hwmon0 acpitz, hwmon1 k10temp on PCI 0000:00:18.3) come first, so GPUs start at hwmon2 as in §1.5
and a probe that keys on hwmon numbers or assumes every PCI device is a GPU goes wrong.

Unreadable files: every name in ``AmdGpu.unreadable`` / ``Bridge.unreadable`` (a file directly in
the PCI device dir, or ``hwmon/<file>`` for the GPU's hwmon dir) is written as a *directory* of that
name, so opening it for reading fails with IsADirectoryError even as root (``exists()`` stays true,
``is_file()`` is false). This stands in for the EPERM that amdgpu returns during reset or suspend
(§1.5 "Read errors"). A name that matches no file the builder writes raises ValueError.

Values marked "illustrative" are made up but format-correct; the others cite amd-rocm.md. Four
layout details marked "not in the reference" come from general kernel knowledge instead: boot_vga
only on VGA-class devices, the shared xgmi_hive_info dir, nvidia-drm nodes, class/drm/version.
Run ``python -m tests.fakesysfs`` for a table of every rig's BDF / KFD node / card / render / hwmon.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

GEN3, GEN4, GEN5 = "8.0 GT/s PCIe", "16.0 GT/s PCIe", "32.0 GT/s PCIe"  # pci_speed_string(), §1.3
GIB = 1 << 30
_BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]")
_FIRST_GPU_HWMON = 2  # hwmon0/1 are acpitz and k10temp; §1.5 has the GPUs at hwmon2/hwmon3


@dataclass(frozen=True)
class Bridge:
    """A PCI bridge above a GPU: root port, chipset port, or the card's own AMD switch port."""

    bdf: str
    vendor: int  # 0x1022 AMD CPU/chipset, 0x1002 the switch on a Radeon card (§1.3)
    device: int
    max_link_speed: (
        str  # exact kernel string: "16.0 GT/s PCIe"; old kernels "8 GT/s", "Unknown speed"
    )
    max_link_width: int
    current_link_speed: str
    current_link_width: int
    unreadable: tuple[str, ...] = ()  # file names in this bridge's dir that must fail to read


@dataclass(frozen=True)
class Connector:
    name: str  # "DP-1": the number is global per connector type, so unique across cards (§1.5)
    status: str = "disconnected"  # connected / disconnected / unknown (§1.4)
    enabled: str = "disabled"  # enabled / disabled


@dataclass(frozen=True)
class AmdGpu:
    bdf: str
    device_id: int  # PCI device id, e.g. 0x744c
    bridges: tuple[Bridge, ...]  # root port first, the GPU's parent last
    gfx_target_version: int | None  # KFD value, e.g. 110000; None = old kernel, key absent (§1.2)
    unique_id: int | None  # None = GFX8: absent from both KFD and DRM (§1.4)
    vram_total: int
    vram_used: int
    vis_vram_total: int  # == vram_total with Resizable BAR (§1.4)
    gtt_total: int
    vram_vendor: str | None  # None: file absent (APUs, §1.4)
    # hwmon power files as printed, minus "\n": "" = SMU error (empty line), None = absent (§3)
    power_cap_uw: str | None  # None also drops power1_label/power1_average (APUs hide them, §3)
    power_cap_default_uw: str | None
    power_cap_min_uw: str | None
    power_cap_max_uw: str | None
    connectors: tuple[Connector, ...] = ()
    boot_vga: bool = False
    in_kfd: bool = True  # False: amdgpu (DRM) has it, KFD skipped it for PCIe atomics (§1.1)
    hive_id: int = 0  # XGMI hive; KFD prints it decimal, DRM as xgmi_hive_info/xgmi_hive_id (§1.4)
    class_code: int = 0x030000  # 0x038000 for Instinct (§1.3)
    card_link_speed: str = GEN4  # the GPU function's own link: internal to the AMD switch (§1.5)
    card_link_width: int = 16
    card_max_link_speed: str = GEN4
    card_max_link_width: int = 16
    subsystem_vendor: int = 0x1002
    subsystem_device: int = 0x0E3B  # reference 7900 XTX (§1.5)
    revision: int = 0xC8
    kfd_name: str = "ip discovery"  # lowercased amdgpu_asic_name[] (§1.2)
    gpu_id: int | None = None  # None: a 16-bit hash of the BDF (illustrative)
    cu_count: int = 96  # 7900 XTX (§1.5 note 2)
    shader_engines: int = 6
    arrays_per_engine: int = 2
    wave_front_size: int = 32  # 64 on GCN/CDNA
    max_engine_clk_mhz: int = 2526  # §1.5 note 3
    vram_width: int = 384
    mem_clk_max_mhz: int = 1250
    gtt_used: int = 22044672  # §1.5
    product_name: str | None = None  # FRU, Instinct only; absent on Radeon (§1.4)
    unreadable: tuple[str, ...] = ()  # see the module docstring


@dataclass(frozen=True)
class NvidiaGpu:
    """A GPU amdgpu does not own: PCI dir, ``nvidia`` driver link, nvidia-drm nodes, no KFD node."""

    bdf: str
    device_id: int
    bridges: tuple[Bridge, ...]
    boot_vga: bool = False
    link_speed: str = GEN4
    link_width: int = 16


Gpu = AmdGpu | NvidiaGpu


@dataclass(frozen=True)
class FakeRig:
    gpus: tuple[Gpu, ...]
    amdgpu_initstate: str | None = "live"  # None: module not loaded, so no driver/KFD/DRM/hwmon
    amdgpu_version: str | None = None  # DKMS driver only (§1.4)
    ppfeaturemask: str = "0xfff7bfff"  # default, OverDrive bit 0x4000 off (§1.5 note 1)
    description: str = ""  # one line: what the rig is and what a probe must find


@dataclass(frozen=True)
class Numbering:
    """Where ``build`` put one GPU; the numbers a probe must not key on, but must report."""

    bdf: str
    kfd_node: int | None  # topology/nodes/<N>; also HSA_OVERRIDE_GFX_VERSION_<N> (§2.2)
    card: int | None  # drm/card<N>
    render_minor: int | None  # drm/renderD<N>, KFD drm_render_minor
    hwmon: int | None
    unique_id: int | None


def layout(rig: FakeRig) -> tuple[Numbering, ...]:
    """Number the GPUs as ``build`` does: everything in PCI (BDF) order."""
    loaded = rig.amdgpu_initstate is not None
    out: list[Numbering] = []
    card = node = 0
    hwmon = _FIRST_GPU_HWMON
    for gpu in sorted(rig.gpus, key=lambda g: g.bdf):
        if isinstance(gpu, NvidiaGpu):  # nvidia-drm card + render node (not in the reference)
            out.append(Numbering(gpu.bdf, None, card, 128 + card, None, None))
            card += 1
        elif not loaded:
            out.append(Numbering(gpu.bdf, None, None, None, None, None))
        else:
            node += gpu.in_kfd
            kfd_node = node if gpu.in_kfd else None
            out.append(Numbering(gpu.bdf, kfd_node, card, 128 + card, hwmon, gpu.unique_id))
            card, hwmon = card + 1, hwmon + 1
    return tuple(out)


def _rel(link_dir: Path, target: Path) -> str:
    """Relative link text as kernfs makes it: up to a strict ancestor of target, then down."""
    base, ups = link_dir, 0
    while base not in target.parents:
        base, ups = base.parent, ups + 1
    return "../" * ups + target.relative_to(base).as_posix()


def _pci_loc(bdf: str) -> tuple[int, int]:
    """(domain, location_id) as KFD prints them: location_id = (bus << 8) | devfn (§1.1)."""
    dev, fn = bdf[8:].split(".")
    return int(bdf[:4], 16), int(bdf[5:7], 16) << 8 | int(dev, 16) << 3 | int(fn)


class _Tree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.unreadable: set[Path] = set()
        self._hit: set[Path] = set()

    def put(self, path: Path, text: str | int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path in self.unreadable:
            path.mkdir(exist_ok=True)
            self._hit.add(path)
        else:
            path.write_text(f"{text}\n")

    def files(self, d: Path, values: dict[str, str | int]) -> None:
        for name, text in values.items():
            self.put(d / name, text)

    def link(self, path: Path, target: Path) -> None:
        if not target.is_relative_to(self.root):
            raise ValueError(f"link target outside the tree: {target}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_symlink():
            os.symlink(_rel(path.parent, target), path)

    def check_unreadable(self) -> None:
        if missing := self.unreadable - self._hit:
            names = sorted(str(p.relative_to(self.root)) for p in missing)
            raise ValueError(f"unreadable names match no file: {names}")


def _pci_dirs(root: Path, rig: FakeRig) -> dict[str, Path]:
    """Each device's and bridge's dir under devices/pci<domain>:<root bus>/, checked for clashes."""
    dirs: dict[str, Path] = {}
    bridges: dict[str, Bridge] = {}
    for gpu in rig.gpus:
        top = gpu.bridges[0].bdf if gpu.bridges else gpu.bdf  # its bus is the root bus
        d = root / "devices" / f"pci{top[:4]}:{top[5:7]}"
        for b in gpu.bridges:
            d = d / b.bdf
            if dirs.setdefault(b.bdf, d) != d or bridges.setdefault(b.bdf, b) != b:
                raise ValueError(f"bridge {b.bdf} differs between GPUs")
        if gpu.bdf in dirs:
            raise ValueError(f"duplicate BDF {gpu.bdf}")
        dirs[gpu.bdf] = d / gpu.bdf
    if bad := [b for b in dirs if not _BDF.fullmatch(b)]:
        raise ValueError(f"BDFs must be DDDD:BB:DD.F in lower case: {bad}")
    return dirs


def _link_files(speed: str, width: int, max_speed: str, max_width: int) -> dict[str, str | int]:
    return {
        "current_link_speed": speed,
        "current_link_width": width,
        "max_link_speed": max_speed,
        "max_link_width": max_width,
    }


def _pci_files(vendor: int, device: int, cls: int, **extra: str | int) -> dict[str, str | int]:
    ids: dict[str, str | int] = {"vendor": f"0x{vendor:04x}", "device": f"0x{device:04x}"}
    return ids | {"class": f"0x{cls:06x}"} | extra  # "0x%04x" / "0x%06x" (§1.3)


def _misc(t: _Tree, root: Path) -> None:
    """The non-GPU hwmon devices and class/drm/version, which a careless glob picks up."""
    zone = root / "devices/virtual/thermal/thermal_zone0"
    k10 = root / "devices/pci0000:00/0000:00:18.3"  # illustrative: CPU data-fabric function
    t.files(k10, _pci_files(0x1022, 0x14E3, 0x060000, numa_node=-1))
    t.link(root / "bus/pci/devices" / k10.name, k10)
    for n, (hw, dev, name) in enumerate(
        [(zone / "hwmon0", zone, "acpitz"), (k10 / "hwmon/hwmon1", k10, "k10temp")]
    ):
        t.files(hw, {"name": name, "temp1_input": 27800 + 17450 * n})  # illustrative
        t.link(hw / "device", dev)
        t.link(root / f"class/hwmon/hwmon{n}", hw)
    t.put(root / "class/drm/version", "drm 1.1.0 20060810")  # not in the reference


def _drm(t: _Tree, root: Path, dev: Path, n: Numbering, connectors: tuple[Connector, ...]) -> None:
    assert n.card is not None and n.render_minor is not None
    card, render = dev / f"drm/card{n.card}", dev / f"drm/renderD{n.render_minor}"
    for d in (card, render):
        t.link(d / "device", dev)
        t.link(root / "class/drm" / d.name, d)
    for c in connectors:
        cd = card / f"card{n.card}-{c.name}"
        t.files(cd, {"status": c.status, "enabled": c.enabled})
        t.link(root / "class/drm" / cd.name, cd)


def _driver(t: _Tree, root: Path, dev: Path, name: str) -> None:
    drv = root / "bus/pci/drivers" / name
    t.link(dev / "driver", drv)
    t.link(drv / dev.name, dev)


def _present(values: dict[str, str | int | None]) -> dict[str, str | int]:
    return {k: v for k, v in values.items() if v is not None}


def _amd_device(t: _Tree, root: Path, dev: Path, gpu: AmdGpu, n: Numbering) -> None:
    """amdgpu's attributes in the PCI dir (§1.4), hwmon (§3), drm nodes (§1.5)."""
    _driver(t, root, dev, "amdgpu")
    t.files(
        dev,
        _present(
            {
                "mem_info_vram_total": gpu.vram_total,
                "mem_info_vram_used": gpu.vram_used,
                "mem_info_vis_vram_total": gpu.vis_vram_total,
                "mem_info_vis_vram_used": min(gpu.vram_used, gpu.vis_vram_total),
                "mem_info_gtt_total": gpu.gtt_total,
                "mem_info_gtt_used": gpu.gtt_used,
                "mem_info_vram_vendor": gpu.vram_vendor,
                "unique_id": None if gpu.unique_id is None else f"{gpu.unique_id:016x}",
                "product_name": gpu.product_name,
            }
        ),
    )
    hw = dev / f"hwmon/hwmon{n.hwmon}"
    has_power = gpu.power_cap_uw is not None
    t.files(
        hw,
        _present(
            {
                "name": "amdgpu",
                "temp1_input": 38000,  # §1.5
                "power1_label": "PPT" if has_power else None,
                "power1_average": "24000000" if has_power else None,
                "power1_cap": gpu.power_cap_uw,
                "power1_cap_default": gpu.power_cap_default_uw,
                "power1_cap_min": gpu.power_cap_min_uw,
                "power1_cap_max": gpu.power_cap_max_uw,
            }
        ),
    )
    t.link(hw / "device", dev)
    t.link(root / "class/hwmon" / hw.name, hw)
    _drm(t, root, dev, n, gpu.connectors)


def _xgmi(t: _Tree, dirs: dict[str, Path], rig: FakeRig) -> None:
    """Hive members: xgmi_device_id, and one hive dir (under the first member) that the others
    link to, holding xgmi_hive_id and node<k> links (§1.4 names the files; the layout is not in
    the reference)."""
    for hive in sorted({g.hive_id for g in rig.gpus if isinstance(g, AmdGpu) and g.hive_id}):
        members = sorted(g.bdf for g in rig.gpus if isinstance(g, AmdGpu) and g.hive_id == hive)
        hive_dir = dirs[members[0]] / "xgmi_hive_info"
        t.put(hive_dir / "xgmi_hive_id", hive)
        for k, bdf in enumerate(members, 1):
            t.put(dirs[bdf] / "xgmi_device_id", 0x1000 * k)  # illustrative
            t.link(hive_dir / f"node{k}", dirs[bdf])  # node numbering illustrative
            if k > 1:
                t.link(dirs[bdf] / "xgmi_hive_info", hive_dir)


# Key order of a KFD node's properties (§1.2): every node, GPU nodes only, then every node again.
_NODE_KEYS = [
    "cpu_cores_count",
    "simd_count",
    "mem_banks_count",
    "caches_count",
    "io_links_count",
    "p2p_links_count",
    "cpu_core_id_base",
    "simd_id_base",
    "max_waves_per_simd",
    "lds_size_in_kb",
    "gds_size_in_kb",
    "num_gws",
    "wave_front_size",
    "array_count",
    "simd_arrays_per_engine",
    "cu_per_simd_array",
    "simd_per_cu",
    "max_slots_scratch_cu",
    "gfx_target_version",
    "vendor_id",
    "device_id",
    "location_id",
    "domain",
    "drm_render_minor",
    "hive_id",
    "num_sdma_engines",
    "num_sdma_xgmi_engines",
    "num_sdma_queues_per_engine",
    "num_cp_queues",
]
_GPU_KEYS = [
    "max_engine_clk_fcompute",
    "local_mem_size",  # printed as 0 (§1.2)
    "fw_version",
    "capability",
    "sdma_fw_version",
    "unique_id",
]
_LAST_KEY = "max_engine_clk_ccompute"
_LINK_KEYS = [
    "type",
    "version_major",
    "version_minor",
    "node_from",
    "node_to",
    "weight",
    "min_latency",
    "max_latency",
    "min_bandwidth",
    "max_bandwidth",
    "recommended_transfer_size",
    "flags",
]  # iolink_show (§1.2)
_MEM_KEYS = ["heap_type", "size_in_bytes", "flags", "width", "mem_clk_max"]  # mem_show (§1.2)
_Links = list[tuple[int, int]]  # (node_to, link type)
# Old kernels (a 5.x kfd_topology.c) lack these keys on every node, and have no p2p_links (§1.2).
_NEW_KEYS = {"gfx_target_version", "domain", "p2p_links_count", "unique_id"}


def _iolink(kind: int, src: int, dst: int) -> dict[str, int | None]:
    """type 2 PCIe (values §1.5) or 11 XGMI (weight and bandwidth illustrative); flags 1 enabled."""
    pcie = kind == 2
    bw = 312 if pcie else 50000, 31250 if pcie else 50000
    return {
        "type": kind,
        "node_from": src,
        "node_to": dst,
        "weight": 20 if pcie else 15,
        "min_bandwidth": bw[0],
        "max_bandwidth": bw[1],
        "flags": 1,
    }


def _kfd(t: _Tree, root: Path, rig: FakeRig, nums: dict[str, Numbering]) -> None:
    """The KFD topology (§1.2, §1.5): node 0 the CPU, GPU nodes 1.. in PCI order."""
    t.link(root / "class/kfd/kfd", root / "devices/virtual/kfd/kfd")
    topo = root / "devices/virtual/kfd/kfd/topology"
    t.put(topo / "generation_id", 3)  # illustrative
    t.put(topo / "system_properties", "platform_oem 0\nplatform_id 0\nplatform_rev 0")
    gpus = [g for g in rig.gpus if isinstance(g, AmdGpu) and nums[g.bdf].kfd_node is not None]
    gpus.sort(key=lambda g: g.bdf)
    node_of = {g.bdf: nums[g.bdf].kfd_node or 0 for g in gpus}
    new = all(g.gfx_target_version is not None for g in gpus)

    def props(path: Path, keys: list[str], values: dict[str, int | None]) -> None:
        if unknown := values.keys() - keys:
            raise AssertionError(f"not KFD keys: {unknown}")
        pairs = [(k, values.get(k, 0)) for k in keys if new or k not in _NEW_KEYS]
        t.put(path, "\n".join(f"{k} {v}" for k, v in pairs if v is not None))  # decimal (§1.2)

    def node(
        n: int, gpu_id: int, name: str, values: dict[str, int | None], **links: _Links
    ) -> Path:
        d = topo / f"nodes/{n}"
        t.files(d, {"gpu_id": gpu_id, "name": name})
        gpu_keys = _GPU_KEYS if gpu_id else []
        counts = {f"{sub}_count": len(to) for sub, to in links.items()}
        props(d / "properties", [*_NODE_KEYS, *gpu_keys, _LAST_KEY], {**values, **counts})
        (d / "caches").mkdir()
        for sub, to in links.items():
            if sub == "p2p_links" and not new:
                continue
            (d / sub).mkdir()
            for k, (dst, kind) in enumerate(to):
                row = _iolink(kind, n, dst)
                if sub == "p2p_links":
                    row["weight"] = 40  # §1.5
                props(d / sub / f"{k}/properties", _LINK_KEYS, row)
        return d

    cpu = node(
        0,
        0,
        "",
        {"cpu_cores_count": 16, "mem_banks_count": 1, _LAST_KEY: 5700},
        io_links=[(node_of[g.bdf], 2) for g in gpus],
        p2p_links=[],
    )
    mem: dict[str, int | None] = {"heap_type": 0, "size_in_bytes": 64 * GIB, "width": 64}
    props(cpu / "mem_banks/0/properties", _MEM_KEYS, mem | {"mem_clk_max": 4800})  # illustrative

    # §1.5 gives the first GPU's simd_id_base; later ones add the CUs before them (illustrative)
    simd_id_base = 0x80001000
    gpu_ids: set[int] = set()
    for g in gpus:
        me = node_of[g.bdf]
        hive = [node_of[p.bdf] for p in gpus if p is not g and g.hive_id and p.hive_id == g.hive_id]
        # Indirect PCIe peers (§1.2): outside the hive, both with a large BAR, dGPUs (illustrative)
        peers = [
            (node_of[p.bdf], 2)
            for p in gpus
            if p is not g
            and node_of[p.bdf] not in hive
            and all(x.vis_vram_total == x.vram_total and x.vram_vendor for x in (g, p))
        ]
        gpu_id = g.gpu_id or (zlib.crc32(g.bdf.encode()) & 0xFFFF) or 1  # illustrative hash
        while gpu_id in gpu_ids:
            gpu_id += 1
        gpu_ids.add(gpu_id)
        simd_per_cu = 2 if g.wave_front_size == 32 else 4  # RDNA vs GCN/CDNA (illustrative)
        arrays = g.shader_engines * g.arrays_per_engine
        domain, location = _pci_loc(g.bdf)
        values: dict[str, int | None] = {
            "simd_count": g.cu_count * simd_per_cu,
            "mem_banks_count": 1,
            "simd_id_base": simd_id_base,
            "max_waves_per_simd": 16 if g.wave_front_size == 32 else 10,
            "lds_size_in_kb": 64,
            "num_gws": 64,
            "wave_front_size": g.wave_front_size,
            "array_count": arrays,
            "simd_arrays_per_engine": g.arrays_per_engine,
            "cu_per_simd_array": g.cu_count // arrays,
            "simd_per_cu": simd_per_cu,
            "max_slots_scratch_cu": 32,
            "gfx_target_version": g.gfx_target_version,
            "vendor_id": 0x1002,
            "device_id": g.device_id,
            "location_id": location,
            "domain": domain,
            "drm_render_minor": nums[g.bdf].render_minor,
            "hive_id": g.hive_id,
            "num_sdma_engines": 2,
            "num_sdma_queues_per_engine": 6,
            "num_cp_queues": 8,
            "max_engine_clk_fcompute": g.max_engine_clk_mhz,
            "fw_version": 2100,
            "capability": 746881664,
            "sdma_fw_version": 21,
            "unique_id": g.unique_id,
            _LAST_KEY: 5700,
        }
        io = [(0, 2), *((h, 11) for h in hive)]  # to the CPU node, then XGMI peers (§1.2)
        d = node(me, gpu_id, g.kfd_name, values, io_links=io, p2p_links=peers)
        simd_id_base += g.cu_count
        mem = {
            "heap_type": 1,  # FB public (§1.2)
            "size_in_bytes": g.vram_total,
            "width": g.vram_width,
            "mem_clk_max": g.mem_clk_max_mhz,
        }
        props(d / "mem_banks/0/properties", _MEM_KEYS, mem)


def build(sys_dir: Path, rig: FakeRig) -> Path:
    """Write ``rig`` as a /sys tree with ``sys_dir`` (created if missing) as /sys; return it."""
    sys_dir.mkdir(parents=True, exist_ok=True)
    root = sys_dir.resolve()
    t = _Tree(root)
    dirs = _pci_dirs(root, rig)
    names = [c.name for g in rig.gpus if isinstance(g, AmdGpu) for c in g.connectors]
    if len(set(names)) != len(names):  # DRM numbers connectors per type system-wide (§1.5)
        raise ValueError(f"connector names must be unique across cards: {names}")
    nums = {n.bdf: n for n in layout(rig)}
    loaded = rig.amdgpu_initstate is not None
    if rig.amdgpu_initstate is not None:
        mod = root / "module/amdgpu"
        t.put(mod / "initstate", rig.amdgpu_initstate)
        t.put(mod / "parameters/ppfeaturemask", rig.ppfeaturemask)
        if rig.amdgpu_version is not None:
            t.put(mod / "version", rig.amdgpu_version)
        (root / "bus/pci/drivers/amdgpu").mkdir(parents=True)
    _misc(t, root)
    for gpu in sorted(rig.gpus, key=lambda g: g.bdf):
        dev = dirs[gpu.bdf]
        for b in gpu.bridges:
            t.unreadable |= {dirs[b.bdf] / name for name in b.unreadable}
            t.files(
                dirs[b.bdf],
                _pci_files(b.vendor, b.device, 0x060400)
                | _link_files(
                    b.current_link_speed, b.current_link_width, b.max_link_speed, b.max_link_width
                ),
            )
            t.link(root / "bus/pci/devices" / b.bdf, dirs[b.bdf])
        t.link(root / "bus/pci/devices" / gpu.bdf, dev)
        if isinstance(gpu, NvidiaGpu):
            t.files(
                dev,
                _pci_files(
                    0x10DE,
                    gpu.device_id,
                    0x030000,
                    subsystem_vendor="0x10de",
                    subsystem_device="0x147d",
                    revision="0xa1",  # illustrative
                    boot_vga=int(gpu.boot_vga),
                    numa_node=-1,
                ),
            )
            t.files(
                dev, _link_files(gpu.link_speed, gpu.link_width, gpu.link_speed, gpu.link_width)
            )
            _driver(t, root, dev, "nvidia")
            _drm(t, root, dev, nums[gpu.bdf], ())
            continue
        hw = dev / f"hwmon/hwmon{nums[gpu.bdf].hwmon}"
        t.unreadable |= {hw / n[6:] if n.startswith("hwmon/") else dev / n for n in gpu.unreadable}
        extra: dict[str, str | int] = {
            "subsystem_vendor": f"0x{gpu.subsystem_vendor:04x}",
            "subsystem_device": f"0x{gpu.subsystem_device:04x}",
            "revision": f"0x{gpu.revision:02x}",
            "numa_node": -1,
        }
        if gpu.class_code >> 8 == 0x0300:  # VGA class only (not in the reference)
            extra["boot_vga"] = int(gpu.boot_vga)
        t.files(dev, _pci_files(0x1002, gpu.device_id, gpu.class_code, **extra))
        t.files(
            dev,
            _link_files(
                gpu.card_link_speed,
                gpu.card_link_width,
                gpu.card_max_link_speed,
                gpu.card_max_link_width,
            ),
        )
        if loaded:
            _amd_device(t, root, dev, gpu, nums[gpu.bdf])
    if loaded:
        _xgmi(t, dirs, rig)
        _kfd(t, root, rig, nums)
    t.check_unreadable()
    return sys_dir


# ---------------------------------------------------------------------------------------------
# Named rigs. Bridge device ids are illustrative (§1.5 note 5: a probe tests vendor and class only).


def _root_port(bdf: str, width: int = 16, max_speed: str = GEN5, speed: str = GEN4) -> Bridge:
    return Bridge(bdf, 0x1022, 0x14DB, max_speed, width, speed, width)  # §1.5 CPU root port


def _navi_switch(
    up: str, down: str, slot_width: int = 16, cap_width: int = 16
) -> tuple[Bridge, ...]:
    """The AMD switch on a Radeon card (§1.3): the upstream port's current link is the slot link."""
    return (
        Bridge(up, 0x1002, 0x1478, GEN4, cap_width, GEN4, slot_width),
        Bridge(down, 0x1002, 0x1479, GEN4, 16, GEN4, 16),  # internal link, illustrative
    )


def _vega_switch(up: str, down: str) -> tuple[Bridge, ...]:
    return (  # Vega 20 / Arcturus boards carry an AMD switch too (illustrative)
        Bridge(up, 0x1002, 0x14A0, GEN4, 16, GEN4, 16),
        Bridge(down, 0x1002, 0x14A1, GEN4, 16, GEN4, 16),
    )


# §1.5: GPU0 in a CPU x16 slot; GPU1 behind the chipset, whose downstream port is x4.
_CPU_SLOT = (_root_port("0000:00:01.1"), *_navi_switch("0000:01:00.0", "0000:02:00.0"))
_CHIPSET_SLOT = (
    Bridge("0000:00:02.1", 0x1022, 0x14DA, GEN4, 4, GEN4, 4),  # root port -> chipset (illustrative)
    Bridge("0000:04:00.0", 0x1022, 0x43F4, GEN4, 4, GEN4, 4),  # chipset upstream (illustrative)
    Bridge("0000:05:08.0", 0x1022, 0x43F5, GEN4, 4, GEN4, 4),  # chipset downstream: max x4 (§1.5)
    *_navi_switch("0000:0a:00.0", "0000:0b:00.0", slot_width=4),  # current x4, max x16 (§1.5)
)

_XTX0 = AmdGpu(  # RX 7900 XTX, all values §1.5 / §3 except gpu_id (illustrative hash from §1.5)
    bdf="0000:03:00.0", device_id=0x744C, bridges=_CPU_SLOT, gfx_target_version=110000,
    unique_id=0x9F781DC6258D77A7, vram_total=25753026560, vram_used=612368384,
    vis_vram_total=25753026560, gtt_total=33668050944, vram_vendor="samsung",
    power_cap_uw="327000000", power_cap_default_uw="327000000", power_cap_min_uw="294000000",
    power_cap_max_uw="327000000", boot_vga=True, gpu_id=45231,
    connectors=(Connector("DP-1", "connected", "enabled"), Connector("HDMI-A-1")),
)  # fmt: skip
_XTX1 = replace(  # the second card of §1.5: chipset x4 slot, headless (36 MiB used, note 10)
    _XTX0, bdf="0000:0c:00.0", bridges=_CHIPSET_SLOT, unique_id=0x4A2B1C3D5E6F7081,
    vram_used=37748736, boot_vga=False, gpu_id=None, connectors=(Connector("DP-2"),),
)  # fmt: skip
_HEADLESS = (Connector("DP-1"), Connector("HDMI-A-1"))

_6900XT = replace(  # RX 6900 XT, Navi 21; values illustrative except gfx (§1.2)
    _XTX0, device_id=0x73BF, gfx_target_version=100300, unique_id=0x2C41D7E09A3B5F12,
    vram_total=17163091968, vis_vram_total=17163091968, vram_used=612368384, cu_count=80,
    shader_engines=4, vram_width=256, max_engine_clk_mhz=2250, mem_clk_max_mhz=1000,
    subsystem_device=0x0E3A, revision=0xC0, kfd_name="sienna_cichlid", gpu_id=None,
    power_cap_uw="255000000", power_cap_default_uw="255000000", power_cap_min_uw="230000000",
    power_cap_max_uw="255000000",
)  # fmt: skip

_MI100 = replace(  # Instinct MI100 (gfx908, §1.2); sizes, power and FRU name illustrative
    _XTX0, device_id=0x738C, gfx_target_version=90008, class_code=0x038000, vram_total=34342961152,
    vis_vram_total=34342961152, vram_used=11534336, gtt_total=128 * GIB, connectors=(),
    boot_vga=False, cu_count=120, shader_engines=8, arrays_per_engine=1, wave_front_size=64,
    max_engine_clk_mhz=1502, vram_width=4096, mem_clk_max_mhz=1200, subsystem_device=0x0C34,
    revision=0x01, kfd_name="arcturus", gpu_id=None, product_name="Instinct MI100",
    power_cap_uw="290000000", power_cap_default_uw="290000000", power_cap_min_uw="0",
    power_cap_max_uw="290000000",
)  # fmt: skip


def _mi100(k: int) -> AmdGpu:
    """Card k of a 4-socket-style server: one root complex per card (pci0000:00/40/80/c0)."""
    rb = 0x40 * k
    bus = [f"0000:{rb + i:02x}:00.0" for i in range(4)]
    chain = (_root_port(f"0000:{rb:02x}:01.1", max_speed=GEN4), *_vega_switch(bus[1], bus[2]))
    uid, hive = 0x6C3A1D2E4F5B0A01 + k, 0x5A1B2C3D4E5F6071  # illustrative
    return replace(_MI100, bdf=bus[3], bridges=chain, unique_id=uid, hive_id=hive)


_IGPU_PORT = Bridge("0000:00:08.1", 0x1022, 0x14DD, GEN4, 16, GEN4, 16)  # internal; illustrative
_IGPU = AmdGpu(  # Raphael iGPU, gfx1036 (§1.5 "Extra fixtures"); device id and clocks illustrative
    bdf="0000:c6:00.0", device_id=0x164E, bridges=(_IGPU_PORT,), gfx_target_version=100306,
    unique_id=0x1F2E3D4C5B6A7988, vram_total=536870912,
    vram_used=25165824, vis_vram_total=536870912, gtt_total=32 * GIB, vram_vendor=None,
    connectors=(Connector("DP-2"), Connector("HDMI-A-2")), cu_count=2, shader_engines=1,
    arrays_per_engine=1, max_engine_clk_mhz=2200, vram_width=128, mem_clk_max_mhz=2400,
    subsystem_device=0x0123, revision=0xC1, gtt_used=4194304, power_cap_uw=None,
    power_cap_default_uw=None, power_cap_min_uw=None, power_cap_max_uw=None,
)  # fmt: skip

# RX 580 (Polaris, GFX8) on an old kernel; illustrative except the §1.3 link strings
_RX580 = AmdGpu(
    bdf="0000:01:00.0", device_id=0x67DF,
    bridges=(Bridge("0000:00:03.1", 0x1022, 0x1453, "Unknown speed", 16, "8 GT/s", 16),),
    gfx_target_version=None, unique_id=None, vram_total=8573157376, vram_used=314572800,
    vis_vram_total=268435456, gtt_total=8 * GIB, vram_vendor="hynix", power_cap_uw="185000000",
    power_cap_default_uw="185000000", power_cap_min_uw="0", power_cap_max_uw="185000000",
    connectors=(Connector("DP-1", "connected", "enabled"),), boot_vga=True,
    card_link_speed="8 GT/s", card_max_link_speed="8 GT/s", subsystem_vendor=0x1DA2,
    subsystem_device=0xE366, revision=0xE7, kfd_name="polaris10", cu_count=36, shader_engines=4,
    arrays_per_engine=1, wave_front_size=64, max_engine_clk_mhz=1340, vram_width=256,
    mem_clk_max_mhz=2000,
)  # fmt: skip

_6700XT = replace(  # RX 6700 XT, Navi 22, gfx1031 (§1.2); small BAR; rest illustrative
    _XTX0, device_id=0x73DF, gfx_target_version=100301, unique_id=0x3D5E7F9011A2B3C4,
    vram_total=12868124672, vis_vram_total=268435456, vram_vendor="hynix", cu_count=40,
    shader_engines=2, vram_width=192, max_engine_clk_mhz=2581, mem_clk_max_mhz=2000,
    subsystem_device=0x0E36, revision=0xC1, kfd_name="navy_flounder", gpu_id=None,
    power_cap_uw="186000000", power_cap_default_uw="186000000", power_cap_min_uw="167000000",
    power_cap_max_uw="186000000",
)  # fmt: skip

_MI50 = replace(  # Instinct MI50, gfx906 (§1.2); no FRU name; rest illustrative
    _MI100, bdf="0000:03:00.0", bridges=(_root_port("0000:00:01.1"),
    *_vega_switch("0000:01:00.0", "0000:02:00.0")), device_id=0x66AF, gfx_target_version=90006,
    unique_id=0x0F1E2D3C4B5A6978, vram_total=17163091968, vis_vram_total=17163091968,
    gtt_total=64 * GIB, cu_count=60, shader_engines=4, max_engine_clk_mhz=1725,
    mem_clk_max_mhz=1000, subsystem_device=0x0834, kfd_name="vega20", product_name=None,
    power_cap_uw="300000000", power_cap_default_uw="300000000", power_cap_max_uw="300000000",
)  # fmt: skip

# RX 7700S: zero-width power range, all four 100 W (§1.5 note 9, §3); the rest illustrative
_7700S = replace(
    _XTX0, bridges=(_root_port("0000:00:01.1", width=8, max_speed=GEN4),
    *_navi_switch("0000:01:00.0", "0000:02:00.0", slot_width=8, cap_width=8)), device_id=0x7480,
    gfx_target_version=110002, unique_id=0x5B6C7D8E9FA0B1C2, vram_total=8573157376,
    vis_vram_total=8573157376, vram_used=37748736, cu_count=32, shader_engines=2,
    vram_width=128, max_engine_clk_mhz=2208, subsystem_device=0x0E4D, gpu_id=None,
    connectors=(Connector("DP-1"),), power_cap_uw="100000000", power_cap_default_uw="100000000",
    power_cap_min_uw="100000000", power_cap_max_uw="100000000",
)  # fmt: skip

# x8/x8 bifurcation: two CPU root ports, each x8 (illustrative)
_X8A = (_root_port("0000:00:01.1", width=8), *_navi_switch("0000:01:00.0", "0000:02:00.0", 8))
_X8B = (_root_port("0000:00:01.2", width=8), *_navi_switch("0000:04:00.0", "0000:05:00.0", 8))

RIGS: dict[str, FakeRig] = {
    "2x7900xtx": FakeRig(
        (_XTX0, _XTX1),
        description="§1.5 exactly: GPU0 CPU x16 slot with desktop on DP-1; GPU1 chipset slot, slot "
        "link x4 (read at AMD upstream 0a:00.0, platform cap x4 at 05:08.0), headless",
    ),
    "4xmi100-xgmi": FakeRig(
        tuple(_mi100(k) for k in range(4)),
        amdgpu_version="6.8.5",  # illustrative DKMS version
        description="4x MI100 (gfx908), one XGMI hive (same hive_id, type-11 io_links between all "
        "pairs, no p2p_links), class 0x038000, no boot_vga, root complexes pci0000:00/40/80/c0",
    ),
    "6900xt-7900xtx": FakeRig(
        (
            replace(_6900XT, bridges=_X8A),
            replace(
                _XTX1,
                bdf="0000:06:00.0",
                bridges=_X8B,
                connectors=(Connector("DP-2"), Connector("HDMI-A-2")),
            ),
        ),
        description="RX 6900 XT (gfx1030, node 1) + RX 7900 XTX (gfx1100, node 2) on x8/x8 CPU "
        "lanes: slot link x8, width_max 8, not downtrained; mixed gfx needs per-node overrides",
    ),
    "apu-7900xtx": FakeRig(
        (_XTX0, _IGPU),
        description="dGPU 7900 XTX at 03:00.0 (node 1, card0) + Raphael iGPU gfx1036 at c6:00.0 "
        "(node 2, card1): 512 MiB VRAM, 32 GiB GTT, no vram_vendor, no power files -> integrated",
    ),
    "3090-7900xtx": FakeRig(
        (
            NvidiaGpu("0000:01:00.0", 0x2204, (_root_port("0000:00:01.1"),), boot_vga=True),
            replace(_XTX1, connectors=_HEADLESS),
        ),
        description="RTX 3090 at 01:00.0 (nvidia driver, card0/renderD128, no KFD node) + 7900 XTX "
        "at 0c:00.0 behind chipset x4 (KFD node 1, card1, drm_render_minor 129)",
    ),
    "kfd-skipped": FakeRig(
        (_XTX0, replace(_XTX1, in_kfd=False)),
        description="two 7900 XTX; the chipset-slot one (0c:00.0) is in DRM (card1) but not in KFD "
        "(PCIe atomics rejected): present, not ROCm-usable; KFD has only node 1",
    ),
    "old-kernel": FakeRig(
        (_RX580,),
        description="RX 580 (GFX8) on a 5.x-era kernel: no gfx_target_version/unique_id/domain/"
        "p2p_links_count keys, no DRM unique_id, links '8 GT/s'/'Unknown speed', power1_cap_min 0",
    ),
    "read-errors": FakeRig(
        (
            replace(
                _XTX0,
                power_cap_uw="",
                unreadable=("mem_info_vram_used",),
                bridges=(
                    _CPU_SLOT[0],
                    replace(_CPU_SLOT[1], unreadable=("current_link_width",)),
                    _CPU_SLOT[2],
                ),
            ),
        ),
        description="one 7900 XTX: power1_cap reads an empty line, mem_info_vram_used and the AMD "
        "upstream port's current_link_width fail to read (directories); all three must be null",
    ),
    "6700xt": FakeRig(
        (_6700XT,),
        description="one RX 6700 XT (gfx1031, needs HSA_OVERRIDE_GFX_VERSION 10.3.0), small BAR "
        "(256 MiB visible of 12272 MiB)",
    ),
    "mi50": FakeRig(
        (_MI50,),
        description="one Instinct MI50 (gfx906; dropped by Ollama >= 0.12.4), class 0x038000, no "
        "boot_vga file, no FRU product_name",
    ),
    "7900xtx-od": FakeRig(
        (replace(_XTX0, power_cap_max_uw="376000000"),),
        ppfeaturemask="0xffffffff",
        description="one 7900 XTX with OverDrive on (ppfeaturemask bit 0x4000): power1_cap_max "
        "376 W above the 327 W default",
    ),
    "7700s-fixed": FakeRig(
        (_7700S,),
        description="one RX 7700S (gfx1102) with a zero-width power range: cap = default = min = "
        "max = 100 W, nothing to tune; x8 slot",
    ),
    "amdgpu-absent": FakeRig(
        (_XTX0,),
        amdgpu_initstate=None,
        description="a 7900 XTX on the PCI bus with the amdgpu module not loaded: no driver link, "
        "no KFD, no drm/hwmon; a probe must report the driver missing, not 'no GPU'",
    ),
}


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3:  # python -m tests.fakesysfs NAME DIR: write one tree, for --sysfs
        print(build(Path(sys.argv[2]), RIGS[sys.argv[1]]))
        raise SystemExit(0)
    for rig_name, rig in RIGS.items():
        print(f"{rig_name}: {rig.description}")
        for n in layout(rig):
            uid = "-" if n.unique_id is None else f"{n.unique_id:016x}"
            print(
                f"  {n.bdf} node={n.kfd_node} card={n.card} render={n.render_minor} "
                f"hwmon={n.hwmon} unique_id={uid}"
            )
