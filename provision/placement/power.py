"""Power limits from a profile: per-GPU watts or a PSU budget, clamped to the driver's range
(NVML's for NVIDIA, hwmon's power1_cap_min/max for AMD), in whole watts. Pure.

Whole watts because that is what is applied: the power unit writes `nvidia-smi -pl N` (an
integer, see render/filters.py `watts`) and amdgpu takes whole watts
(amdgpu_hwmon_set_power_cap), so `plan`, the unit, `apply` and `verify` all use one number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from provision.errors import ProfileFieldError
from provision.hardware.amdgpu import pci_device_dir
from provision.hardware.classify import gpu_label
from provision.hardware.rig import Gpu, Rig, Vendor
from provision.placement.decisions import PowerDecision
from provision.placement.profile import Profile


@dataclass(frozen=True)
class PowerPlan:
    decisions: tuple[PowerDecision, ...]
    warnings: list[str]


def _source(gpu: Gpu) -> str:
    return "amdgpu's" if gpu.vendor == Vendor.AMD else "NVML's"


def _clamp(gpu: Gpu, watts: float) -> tuple[int, str]:
    """Whole watts within the driver's range: rounded down (a budget stays a budget), but
    never below the minimum (rounded up) nor above the maximum (rounded down)."""
    low, high = gpu.power.min_w, gpu.power.max_w
    whole = math.floor(watts)
    if low is not None and whole < low:
        return math.ceil(low), f"raised to {_source(gpu)} minimum {low:g} W"
    if high is not None and whole > high:
        return math.floor(high), f"lowered to {_source(gpu)} maximum {high:g} W"
    rounded = "" if whole == watts else f" (rounded down from {watts:.4g} W)"
    return whole, f"within {_source(gpu)} range {low or 0:g}-{high or 0:g} W{rounded}"


def decide(rig: Rig, profile: Profile, sysfs_root: str = "/sys") -> PowerPlan:
    power = profile.power
    if power is None:
        return PowerPlan((), [])
    gpus = [g for g in rig.gpus if g.power.min_w is not None or g.power.max_w is not None]
    skipped = [g for g in rig.gpus if g not in gpus]
    warnings = [
        f"{gpu_label(g)}: {_source(g)} reports no power range, its limit is left alone"
        for g in skipped
    ]
    if power.per_gpu_w is not None:
        asked = {g.index: (power.per_gpu_w, f"per_gpu_w {power.per_gpu_w:g} W") for g in gpus}
    else:
        asked, warning = _share_budget(gpus, power.psu_w or 0, power.platform_w or 0)
        if warning:
            warnings.append(warning)
    decisions = []
    for gpu in gpus:
        watts, why = asked[gpu.index]
        default = gpu.power.default_w
        if power.psu_w is not None and default is not None and watts > default:
            # A budget caps; it never raises a card above its stock limit.
            watts, why = (
                default,
                f"{why}; the budget allows more, kept at the default {default:g} W",
            )
        target, clamp = _clamp(gpu, watts)
        decisions.append(
            PowerDecision(
                gpu.index,
                gpu.uuid,
                target,
                gpu.power.default_w,
                f"{why}; {clamp}",
                device=(
                    pci_device_dir(sysfs_root, gpu.pci_bus_id) if gpu.vendor == Vendor.AMD else None
                ),
            )
        )
    return PowerPlan(tuple(decisions), warnings)


def _share_budget(
    gpus: list[Gpu], psu_w: float, platform_w: float
) -> tuple[dict[int, tuple[float, str]], str | None]:
    """Split what the PSU has left after the platform in proportion to each card's default."""
    budget = psu_w - platform_w
    weights = {g.index: g.power.default_w or g.power.max_w or 1.0 for g in gpus}
    total = sum(weights.values()) or 1.0
    asked = {
        g.index: (
            budget * weights[g.index] / total,
            f"{psu_w:g} W PSU - {platform_w:g} W platform = {budget:g} W shared by default "
            f"limit ({weights[g.index]:g} of {total:g} W)",
        )
        for g in gpus
    }
    floor = sum(g.power.min_w or 0 for g in gpus)
    if floor > budget:
        # No limit the drivers accept keeps the box inside the budget: planning anyway would
        # raise every card to its minimum and still overload the PSU, silently.
        raise ProfileFieldError(
            "power.psu_w",
            f"{psu_w:g} W PSU - {platform_w:g} W platform leaves {budget:g} W for the GPUs, "
            f"below the {floor:g} W their drivers' minimum limits add up to",
            hint="raise psu_w (or lower platform_w) to at least "
            f"{floor + platform_w:g} W, or leave some GPUs out of this box's plan",
        )
    return asked, None
