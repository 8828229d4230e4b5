"""The power limits of a plan (pure): set what the plan wants, give a GPU that leaves it its
recorded default back, and stop the power unit while its old definition is loaded when a GPU
leaves it. Part of provision.change.plan's order (after enable, before the restarts)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from provision.change.actions import ActionKind, Observed, Section
from provision.desired import DesiredState
from provision.paths import AMDGPU_POWER_SCRIPT, POWER_UNIT, RUNNING_STATES, unit_file

POWER_TOLERANCE_W = 0.5  # nvidia-smi reports centiwatts; the driver rounds requested limits


def plan_power(desired: DesiredState, observed: Observed) -> Section:
    section = Section(observed.live)
    recorded = (observed.manifest or {}).get("power", ())
    wanted = {p.uuid for p in desired.power}
    targets = [(p.uuid, p.target_w, p.reason, p.device) for p in desired.power]
    # The AMD cap script goes with the last AMD cap: the power unit's ExecStop, run when the
    # unit is stopped, writes power1_cap_default back instead.
    amd_script = any(f.path == AMDGPU_POWER_SCRIPT for f in desired.files)
    for entry in recorded:
        uuid, default_w = str(entry.get("uuid")), entry.get("default_w")
        device = entry.get("device")
        if uuid not in wanted and isinstance(device, str) and not amd_script:
            section.noop(uuid, "no longer managed: the power unit's stop restores the default")
            continue
        if uuid not in wanted and isinstance(default_w, int | float):
            targets.append(
                (
                    uuid,
                    math.floor(default_w),  # whole watts, as the power unit's ExecStop
                    "no longer managed: restore the default",
                    device if isinstance(device, str) else None,
                )
            )
    for uuid, target_w, reason, device in targets:
        if observed.power_w is None:
            section.noop(uuid, f"offline: limit not read (wanted {target_w:g} W)")
            continue
        current = observed.power_w.get(uuid)
        if current is not None and abs(current - target_w) <= POWER_TOLERANCE_W:
            section.noop(uuid, f"limit is {current:g} W, as wanted")
            continue
        source = f"{device}/hwmon/*/power1_cap" if device else "nvidia-smi"
        refused = "" if current is not None else f"{source} gave no power limit for {uuid}"
        detail = f"{'?' if current is None else f'{current:g}'} W -> {target_w:g} W"
        section.act(
            ActionKind.SET_POWER,
            uuid,
            reason,
            detail=detail,
            watts=target_w,
            refused=refused,
            source=device or "",
        )
    return section


def plan_power_handover(desired: DesiredState, observed: Observed, dirty: set[str]) -> Section:
    """A GPU leaves the power unit: stop the unit while its old definition is loaded.

    Its restart later runs the ExecStop of the new definition, which no longer names that GPU,
    so the GPU would keep its planned limit until the next boot; the old ExecStop (and the AMD
    cap script, still there before the files are written) puts its recorded default back. The
    restart section then starts the unit under the new definition.
    """
    section = Section(observed.live)
    wanted = {p.uuid for p in desired.power}
    leaving = [
        str(p.get("uuid"))
        for p in (observed.manifest or {}).get("power", ())
        if isinstance(p, Mapping) and p.get("uuid") not in wanted
    ]
    unit = observed.units.get(POWER_UNIT)
    planned = any(u.name == POWER_UNIT and u.active for u in desired.units)
    if not (leaving and planned and unit_file(POWER_UNIT) in dirty):
        return section
    if unit is not None and unit.active in RUNNING_STATES:
        reason = f"{', '.join(leaving)} leave(s) it: its old ExecStop restores their default"
        section.act(ActionKind.STOP, POWER_UNIT, reason)
    return section
