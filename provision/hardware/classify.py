"""Rig -> traits: what kind of rig this is and what to watch out for, each with a reason.

Pure: reads only the Rig. Every trait names the GPUs it is about and says why, so that `probe`
and `plan` can show the operator the evidence and placement can cite it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from provision import rocm
from provision.hardware.rig import Gpu, Rig, Vendor
from provision.units import gib

# Same VRAM within this ratio counts as equal: vBIOS reservations differ by a few MiB.
VRAM_TOLERANCE = 1.02
# Layer split across a link below this loses 30-40% throughput (docs/ARCHITECTURE.md §5).
MIN_PCIE_GEN = 4
MIN_PCIE_WIDTH = 8
# Usable GB/s per lane by PCIe generation (8b/10b coding up to gen 2, 128b/130b from gen 3):
# a link is as fast as gen x width, so 3.0 x16 matches 4.0 x8 and only a slower one is narrow.
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
LEGACY_BELOW_CC = (5, 0)
# A card below this compute capability slows every token in a mixed rig (no bf16/fast fp16 path).
MODERN_CC = (8, 0)
# Ollama's support floor (docs/ARCHITECTURE.md §5): CC 5.0 with driver >= 550; CC 5.0-6.2
# need >= 570.
OLLAMA_MIN_CC = (5, 0)
OLLAMA_MIN_DRIVER = 550
OLLAMA_OLD_CC_MAX = (6, 2)
OLLAMA_OLD_CC_MIN_DRIVER = 570


class TraitKind(StrEnum):
    GPU_COUNT = "gpu_count"
    SYMMETRIC = "symmetric"
    ASYMMETRIC_VRAM = "asymmetric_vram"
    MIXED_COMPUTE = "mixed_compute"
    NVLINK = "nvlink"
    NARROW_PCIE = "narrow_pcie"
    DOWNTRAINED_LINK = "downtrained_link"
    DISPLAY_GPU = "display_gpu"
    LEGACY_GPU = "legacy_gpu"
    BELOW_RUNTIME_FLOOR = "below_runtime_floor"
    MIG_ENABLED = "mig_enabled"
    MIXED_VENDOR = "mixed_vendor"
    MIXED_AMD_ARCH = "mixed_amd_arch"
    XGMI_HIVE = "xgmi_hive"
    AMD_NEEDS_GFX_OVERRIDE = "amd_needs_gfx_override"
    AMD_IGPU = "amd_igpu"
    AMD_NOT_IN_KFD = "amd_not_in_kfd"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"


@dataclass(frozen=True)
class Trait:
    kind: TraitKind
    severity: Severity
    gpus: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class RigTraits:
    traits: tuple[Trait, ...]

    def has(self, kind: TraitKind) -> bool:
        return any(t.kind == kind for t in self.traits)

    def get(self, kind: TraitKind) -> Trait | None:
        return next((t for t in self.traits if t.kind == kind), None)

    @property
    def kinds(self) -> frozenset[TraitKind]:
        return frozenset(t.kind for t in self.traits)

    @property
    def warnings(self) -> tuple[Trait, ...]:
        return tuple(t for t in self.traits if t.severity == Severity.WARNING)


def classify(rig: Rig) -> RigTraits:
    gpus = rig.gpus
    # An iGPU's few hundred MiB of carve-out say nothing about how the real cards compare.
    discrete = [g for g in gpus if not (g.amd and g.amd.integrated)]
    found: list[Trait | None] = [
        _gpu_count(gpus),
        _symmetric(discrete),
        _asymmetric_vram(discrete),
        _mixed_compute(gpus),
        _nvlink(rig),
        _narrow_pcie(gpus),
        _downtrained_link(gpus),
        _display_gpu(gpus),
        _legacy_gpu(gpus),
        _below_ollama_floor(rig),
        _mig_enabled(gpus),
        _mixed_vendor(gpus),
        _mixed_amd_arch(gpus),
        _xgmi_hive(gpus),
        _needs_gfx_override(rig),
        _amd_igpu(gpus),
        _not_in_kfd(gpus),
    ]
    return RigTraits(tuple(t for t in found if t is not None))


def short_name(gpu: Gpu) -> str:
    """'NVIDIA GeForce RTX 3090' -> 'RTX 3090': the part an operator recognises."""
    return gpu.name.removeprefix("NVIDIA ").removeprefix("GeForce ").removeprefix("AMD ")


def gpu_label(gpu: Gpu) -> str:
    return f"GPU {gpu.index} ({short_name(gpu)})"


def gpu_labels(gpus: Iterable[Gpu]) -> str:
    """`GPU 0 (RTX 3090), GPU 1 (RTX 3090)`: for reasons that name several cards."""
    return ", ".join(gpu_label(g) for g in gpus)


def gpu_list(gpus: Iterable[Gpu]) -> str:
    labels = [gpu_label(g) for g in gpus]
    if len(labels) <= 1:
        return "".join(labels)
    return ", ".join(labels[:-1]) + " and " + labels[-1]


def _trait(kind: TraitKind, severity: Severity, gpus: Iterable[Gpu], reason: str) -> Trait:
    return Trait(kind, severity, tuple(g.index for g in gpus), reason)


def _gpu_count(gpus: Sequence[Gpu]) -> Trait:
    if not gpus:
        return Trait(TraitKind.GPU_COUNT, Severity.WARNING, (), "no GPUs found: nothing to place")
    by_model: dict[str, int] = defaultdict(int)
    for gpu in gpus:
        by_model[f"{gpu.name} ({gpu.vendor})"] += 1
    models = ", ".join(f"{n}x {name}" for name, n in by_model.items())
    noun = "GPU" if len(gpus) == 1 else "GPUs"
    return _trait(TraitKind.GPU_COUNT, Severity.INFO, gpus, f"{len(gpus)} {noun}: {models}")


def _same_vram(gpus: Sequence[Gpu]) -> bool:
    sizes = [g.memory_total_bytes for g in gpus]
    return max(sizes) <= min(sizes) * VRAM_TOLERANCE


def _symmetric(gpus: Sequence[Gpu]) -> Trait | None:
    if len(gpus) < 2 or len({g.name for g in gpus}) != 1 or not _same_vram(gpus):
        return None
    reason = (
        f"all {len(gpus)} GPUs are {short_name(gpus[0])} with "
        f"{gib(gpus[0].memory_total_bytes)}: a split can spread layers evenly"
    )
    return _trait(TraitKind.SYMMETRIC, Severity.INFO, gpus, reason)


def _asymmetric_vram(gpus: Sequence[Gpu]) -> Trait | None:
    if len(gpus) < 2 or _same_vram(gpus):
        return None
    sizes = ", ".join(f"{gpu_label(g)} {gib(g.memory_total_bytes)}" for g in gpus)
    reason = f"VRAM differs ({sizes}): split proportions follow each card's usable VRAM"
    return _trait(TraitKind.ASYMMETRIC_VRAM, Severity.INFO, gpus, reason)


def _compute_key(gpu: Gpu) -> tuple[str | None, str | None]:
    return gpu.compute_capability, gpu.architecture


def _mixed_compute(gpus: Sequence[Gpu]) -> Trait | None:
    # NVIDIA against NVIDIA: AMD cards have mixed_amd_arch, both vendors mixed_vendor.
    known = [
        g
        for g in gpus
        if g.vendor == Vendor.NVIDIA
        and (g.compute_capability is not None or g.architecture is not None)
    ]
    if len({_compute_key(g) for g in known}) < 2:
        return None
    described = ", ".join(
        f"{gpu_label(g)} CC {g.compute_capability or '?'} {g.architecture or ''}".rstrip()
        for g in known
    )
    reason = (
        f"compute differs ({described}): every token passes through each card's layers in turn, "
        "so list the faster card first and give it more layers where its VRAM allows"
    )
    slow = [g for g in known if (cc := g.compute_capability_tuple) is not None and cc < MODERN_CC]
    if slow:
        reason += (
            f"; {gpu_list(slow)} is below compute capability 8.0 and slows every token "
            "that passes through it"
        )
    severity = Severity.WARNING if slow else Severity.INFO
    return _trait(TraitKind.MIXED_COMPUTE, severity, known, reason)


def normalize_bus_id(bus_id: str) -> str:
    """NVML's 32-bit domain form and the 16-bit sysfs form name the same device."""
    domain, bus, device_function = bus_id.lower().split(":")
    return f"{int(domain, 16):08x}:{bus}:{device_function}"


def nvlink_pairs(rig: Rig) -> frozenset[tuple[int, int]]:
    """GPU index pairs joined by NVLink, directly (a bridge) or through a shared NVSwitch."""
    index_by_bus = {normalize_bus_id(g.pci_bus_id): g.index for g in rig.gpus}
    gpus_by_switch: dict[str, set[int]] = defaultdict(set)
    pairs: set[tuple[int, int]] = set()
    for gpu in rig.gpus:
        for link in gpu.nvlink:
            peer = normalize_bus_id(link.peer_pci_bus_id)
            if peer in index_by_bus:
                if index_by_bus[peer] != gpu.index:
                    a, b = sorted((gpu.index, index_by_bus[peer]))
                    pairs.add((a, b))
            else:
                gpus_by_switch[peer].add(gpu.index)
    for members in gpus_by_switch.values():
        ordered = sorted(members)
        pairs.update((a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :])
    return frozenset(pairs)


def _nvlink(rig: Rig) -> Trait | None:
    pairs = nvlink_pairs(rig)
    if not pairs:
        return None
    linked = sorted({i for pair in pairs for i in pair})
    gpu_ids = {normalize_bus_id(g.pci_bus_id) for g in rig.gpus}
    switches = {
        normalize_bus_id(link.peer_pci_bus_id)
        for g in rig.gpus
        for link in g.nvlink
        if normalize_bus_id(link.peer_pci_bus_id) not in gpu_ids
    }
    via = f"through {len(switches)} NVSwitch devices" if switches else "over a bridge"
    listed = ", ".join(f"{a}-{b}" for a, b in sorted(pairs))
    reason = (
        f"NVLink {via} joins GPU pairs {listed}: prefer a linked subset when a split needs "
        "only some GPUs; it helps tensor-parallel runtimes (vLLM), layer split gains only 1-3%"
    )
    return _trait(TraitKind.NVLINK, Severity.INFO, (rig.gpu(i) for i in linked), reason)


def _link_text(gen: int | None, width: int | None) -> str:
    return f"PCIe {gen or '?'}.0 x{width or '?'}"


def link_gbps(gen: int, width: int) -> float:
    """Usable bandwidth of a PCIe link in GB/s, one direction."""
    return PCIE_LANE_GBPS.get(gen, PCIE_LANE_GBPS[max(PCIE_LANE_GBPS)]) * width


def _max_link_gbps(gpu: Gpu) -> float | None:
    """What card and slot allow together; an unknown generation is taken as gen 4, an unknown
    width as x16 (a reading NVML did not give must not raise a warning by itself)."""
    gen, width = gpu.pcie.gen_max, gpu.pcie.width_max
    if gen is None and width is None:
        return None
    return link_gbps(gen or MIN_PCIE_GEN, width or 16)


def _narrow_pcie(gpus: Sequence[Gpu]) -> Trait | None:
    floor = link_gbps(MIN_PCIE_GEN, MIN_PCIE_WIDTH)
    narrow = [g for g in gpus if (bw := _max_link_gbps(g)) is not None and bw < floor]
    if not narrow:
        return None
    links = ", ".join(
        f"{gpu_label(g)} at most {_link_text(g.pcie.gen_max, g.pcie.width_max)}" for g in narrow
    )
    reason = (
        f"narrow PCIe link: {links} (below the {floor:.1f} GB/s of gen {MIN_PCIE_GEN} "
        f"x{MIN_PCIE_WIDTH}); "
        "a split across such a link has shown 30-40% lower throughput, so keep models "
        "that fit one card off it"
    )
    return _trait(TraitKind.NARROW_PCIE, Severity.WARNING, narrow, reason)


def _downtrained_link(gpus: Sequence[Gpu]) -> Trait | None:
    # Idle GPUs drop the link *generation* to save power, so only the width is compared.
    down = [
        g
        for g in gpus
        if g.pcie.width_current is not None
        and g.pcie.width_max is not None
        and g.pcie.width_current < g.pcie.width_max
    ]
    if not down:
        return None
    links = ", ".join(
        f"{gpu_label(g)} runs x{g.pcie.width_current} of x{g.pcie.width_max}" for g in down
    )
    reason = (
        f"PCIe link trained below its maximum width: {links}; check the riser, slot and "
        "seating (generation is not compared: idle cards lower it on purpose)"
    )
    return _trait(TraitKind.DOWNTRAINED_LINK, Severity.WARNING, down, reason)


def _display_gpu(gpus: Sequence[Gpu]) -> Trait | None:
    displays = [g for g in gpus if g.display_active]
    if not displays:
        return None
    used = ", ".join(
        f"{gpu_label(g)} ({gib(g.memory_used_bytes)} already in use)"
        if g.memory_used_bytes is not None
        else gpu_label(g)
        for g in displays
    )
    reason = (
        f"drives a display: {used}; its desktop use is subtracted and it gets fewer layers, "
        "and the desktop may stutter under load"
    )
    return _trait(TraitKind.DISPLAY_GPU, Severity.WARNING, displays, reason)


def _legacy_gpu(gpus: Sequence[Gpu]) -> Trait | None:
    legacy = [
        g for g in gpus if (cc := g.compute_capability_tuple) is not None and cc < LEGACY_BELOW_CC
    ]
    if not legacy:
        return None
    ccs = ", ".join(sorted({g.compute_capability or "?" for g in legacy}))
    reason = (
        f"legacy GPU: {gpu_list(legacy)} at compute capability {ccs}, below 5.0: current CUDA "
        "builds of Ollama and llama.cpp no longer support it, so it needs a legacy build; its "
        "compute buffers are estimated with the Kepler correction (measured 15-20% smaller)"
    )
    return _trait(TraitKind.LEGACY_GPU, Severity.WARNING, legacy, reason)


def _driver_major(driver_version: str | None) -> int | None:
    if not driver_version:
        return None
    head = driver_version.split(".")[0]
    return int(head) if head.isdigit() else None


def _ollama_rocm_problem(gpu: Gpu, version: str | None) -> str | None:
    """An AMD card Ollama's ROCm build has no kernels for, and no override maps onto one: it
    drops the card ("no rocblas support for gfx target", discover/amd.go)."""
    amd = gpu.amd
    if amd is None or amd.gfx_target is None or amd.kfd_node is None or amd.integrated:
        return None  # reported by amd_not_in_kfd / amd_igpu instead
    gfx = amd.gfx_target
    if rocm.too_old(gfx):
        return f"{gfx} is older than GFX9, ROCm's floor: no current ROCm runtime supports it"
    if gfx in rocm.ollama_targets(version) or rocm.override_for(gfx, version):
        return None
    return (
        f"{gfx} has no ROCm kernels in Ollama {version or '(current)'} and no supported "
        "neighbour to map it onto: Ollama runs it through Vulkan or not at all (a llama.cpp "
        f"build with GPU_TARGETS={gfx} still can)"
    )


def _ollama_floor_problem(
    gpu: Gpu, driver_major: int | None, driver: str | None, version: str | None
) -> str | None:
    """Why this GPU is below Ollama's floor, in words shared by every GPU with the same problem."""
    if gpu.amd is not None:
        return _ollama_rocm_problem(gpu, version)
    cc = gpu.compute_capability_tuple
    if cc is None:
        return None
    if cc < OLLAMA_MIN_CC:
        return f"compute capability {gpu.compute_capability} is below Ollama's floor of 5.0"
    needed = OLLAMA_OLD_CC_MIN_DRIVER if cc <= OLLAMA_OLD_CC_MAX else OLLAMA_MIN_DRIVER
    if driver_major is not None and driver_major < needed:
        return (
            f"compute capability {gpu.compute_capability} needs driver >= {needed} "
            f"for Ollama, found {driver}"
        )
    return None


def _below_ollama_floor(rig: Rig) -> Trait | None:
    driver = rig.host.driver_version
    major = _driver_major(driver)
    by_problem: dict[str, list[Gpu]] = defaultdict(list)
    for gpu in rig.gpus:
        problem = _ollama_floor_problem(gpu, major, driver, rig.host.runtimes.get("ollama"))
        if problem is not None:
            by_problem[problem].append(gpu)
    if not by_problem:
        return None
    reason = "below Ollama's support floor: " + "; ".join(
        f"{gpu_list(gpus)}: {problem}" for problem, gpus in by_problem.items()
    )
    affected = sorted((g for gpus in by_problem.values() for g in gpus), key=lambda g: g.index)
    return _trait(TraitKind.BELOW_RUNTIME_FLOOR, Severity.WARNING, affected, reason)


def _mig_enabled(gpus: Sequence[Gpu]) -> Trait | None:
    mig = [g for g in gpus if g.mig_enabled]
    if not mig:
        return None
    reason = (
        f"MIG enabled on {gpu_list(mig)}: runtimes see MIG slices, not the whole card; "
        "disable it (nvidia-smi -i N -mig 0, then reset the GPU) to place models on whole GPUs"
    )
    return _trait(TraitKind.MIG_ENABLED, Severity.WARNING, mig, reason)


def _amd(gpus: Sequence[Gpu]) -> list[Gpu]:
    return [g for g in gpus if g.amd is not None]


def _mixed_vendor(gpus: Sequence[Gpu]) -> Trait | None:
    vendors = {g.vendor for g in gpus}
    if len(vendors) < 2:
        return None
    by_vendor = "; ".join(
        f"{vendor}: {gpu_labels(g for g in gpus if g.vendor == vendor)}"
        for vendor in sorted(vendors)
    )
    reason = (
        f"NVIDIA and AMD GPUs in one box ({by_vendor}): a model is never split across vendors "
        "(Ollama and llama.cpp keep CUDA and ROCm devices apart); each unit names its cards "
        "with its vendor's variable, and AMD units set HIP_VISIBLE_DEVICES because HIP also "
        "obeys CUDA_VISIBLE_DEVICES (to be checked on real hardware)"
    )
    return _trait(TraitKind.MIXED_VENDOR, Severity.WARNING, gpus, reason)


def _mixed_amd_arch(gpus: Sequence[Gpu]) -> Trait | None:
    amd = [g for g in _amd(gpus) if g.amd and g.amd.gfx_target and not g.amd.integrated]
    if len({g.architecture for g in amd}) < 2:
        return None
    described = ", ".join(
        f"{gpu_label(g)} {g.amd.gfx_target if g.amd else '?'} {g.architecture or ''}".rstrip()
        for g in amd
    )
    reason = (
        f"AMD architectures differ ({described}): a split needs a runtime built for every "
        "target, overrides are set per KFD node (HSA_OVERRIDE_GFX_VERSION_<node>), and the "
        "slower card sets the pace: keep models that fit the faster card on it"
    )
    return _trait(TraitKind.MIXED_AMD_ARCH, Severity.WARNING, amd, reason)


def _xgmi_hive(gpus: Sequence[Gpu]) -> Trait | None:
    hives: dict[int, list[Gpu]] = defaultdict(list)
    for g in _amd(gpus):
        if g.amd and g.amd.xgmi_hive_id:
            hives[g.amd.xgmi_hive_id].append(g)
    members = [g for hive in hives.values() if len(hive) > 1 for g in hive]
    if not members:
        return None
    reason = (
        f"XGMI (Infinity Fabric) hive joins {gpu_list(members)}: it helps tensor-parallel "
        "runtimes; a layer split passes little data between cards and gains little"
    )
    return _trait(TraitKind.XGMI_HIVE, Severity.INFO, members, reason)


def _needs_gfx_override(rig: Rig) -> Trait | None:
    version = rig.host.runtimes.get("ollama")
    needing = [
        (g, value)
        for g in _amd(rig.gpus)
        if g.amd
        and g.amd.gfx_target
        and g.amd.rocm_usable
        and not g.amd.integrated
        and (value := rocm.override_for(g.amd.gfx_target, version))
    ]
    if not needing:
        return None
    listed = ", ".join(
        f"{gpu_label(g)} ({g.amd.gfx_target if g.amd else '?'}, KFD node "
        f"{g.amd.kfd_node if g.amd else '?'}) as {value}"
        for g, value in needing
    )
    reason = (
        f"ROCm has no kernels for these targets, but for a neighbour in their family: {listed} "
        "through HSA_OVERRIDE_GFX_VERSION (rendered per card where cards differ)"
    )
    return _trait(TraitKind.AMD_NEEDS_GFX_OVERRIDE, Severity.INFO, (g for g, _ in needing), reason)


def _amd_igpu(gpus: Sequence[Gpu]) -> Trait | None:
    igpus = [g for g in _amd(gpus) if g.amd and g.amd.integrated]
    if not igpus:
        return None
    reason = (
        f"integrated GPU: {gpu_list(igpus)} shares system memory and is left out of every "
        "unit (ROCR_VISIBLE_DEVICES names only the discrete cards): pulled into a split it "
        "slows or crashes it"
    )
    return _trait(TraitKind.AMD_IGPU, Severity.INFO, igpus, reason)


def _not_in_kfd(gpus: Sequence[Gpu]) -> Trait | None:
    skipped = [g for g in _amd(gpus) if g.amd and g.amd.kfd_node is None]
    if not skipped:
        return None
    reasons = "; ".join(
        f"{gpu_label(g)} at {g.pci_bus_id}: {g.amd.rocm_reason if g.amd else ''}" for g in skipped
    )
    reason = f"present but not usable by ROCm, left out: {reasons}"
    return _trait(TraitKind.AMD_NOT_IN_KFD, Severity.WARNING, skipped, reason)
