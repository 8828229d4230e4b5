"""Rig + profile reference -> (Placement, DesiredState): the one path every command takes.

Loads the profile, resolves each model reference (a GGUF file, an installed Ollama model or the
bundled catalog), places and renders, and stamps the digests the manifest records so that
`verify` knows which plan it checks. Reads files; never the host's services.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import fields, replace

from provision.desired import DesiredState
from provision.errors import InputError
from provision.hardware.rig import Rig, dump_rig
from provision.models.refs import resolve
from provision.placement.decisions import Placement
from provision.placement.place import place
from provision.placement.profile import Profile, load_profile
from provision.render.files import render
from provision.typed_load import to_plain


def desired_state(
    rig: Rig,
    profile_ref: str | None,
    environ: Mapping[str, str],
    allow_partial: bool = False,
    sysfs_root: str = "/sys",
) -> tuple[Placement, DesiredState]:
    """A model that cannot be placed is an error (exit 2) unless `allow_partial`: a plan that
    silently serves less than the profile asks for is what an operator finds out too late.
    `sysfs_root` is where the target's sysfs is: AMD power caps are written below it."""
    profile = load_profile(profile_ref)
    specs = {entry.ref: resolve(entry.ref, environ) for entry in profile.models}
    placement = place(rig, profile, specs, sysfs_root)
    _refuse_dropped(placement, allow_partial)
    desired = replace(
        render(placement), profile_digest=profile_digest(profile), rig_digest=rig_digest(rig)
    )
    return placement, desired


def _refuse_dropped(placement: Placement, allow_partial: bool) -> None:
    dropped = [m for m in placement.models if not m.placed]
    if not dropped or (allow_partial and len(dropped) < len(placement.models)):
        return
    first = dropped[0]
    more = f" (and {len(dropped) - 1} more)" if len(dropped) > 1 else ""
    fits = "; ".join(first.fit.suggestions) or "nothing on this rig"
    if len(dropped) == len(placement.models):
        hint = "change the profile as suggested: no model of it can be placed on this rig"
    else:
        hint = "change the profile as suggested, or pass --allow-partial to serve the others"
    raise InputError(
        f"{first.entry.ref} cannot be placed{more}: {first.fit.reason}; what would fit: {fits}",
        hint=hint,
    )


def profile_digest(profile: Profile) -> str:
    """sha256 of the resolved profile data (after `extends:`), not of where it was read from."""
    data = {
        f.name: to_plain(getattr(profile, f.name))
        for f in fields(profile)
        if f.name not in ("name", "source")
    }
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def rig_digest(rig: Rig) -> str:
    """sha256 of the canonical snapshot JSON, without the readings that move while the box
    runs: the desktop's VRAM, the idle link generation and the power limit apply itself sets
    (a live probe right after apply reads the limit it wrote: the host must stay in sync)."""
    gpus = []
    for gpu in rig.gpus:
        changes: dict[str, object] = {"memory_used_bytes": None}
        changes["pcie"] = replace(gpu.pcie, gen_current=None)
        changes["power"] = replace(gpu.power, limit_w=None)
        gpus.append(replace(gpu, **changes))  # type: ignore[arg-type]
    stable = replace(rig, gpus=tuple(gpus))
    return hashlib.sha256(dump_rig(stable, "json").encode()).hexdigest()
