"""What files provision does not manage do to the settings it writes (pure).

A user's own drop-in (what `systemctl edit` writes, `override.conf`, any `*.conf` that sorts
after ours), an environment file it names, or a unit file that hides ours can take a setting
away from a unit provision configures: `overrides` lists each one for the plan, as systemd would
merge the files (provision.systemd). A file provision replaces under --force may have set more
than the new one does: `dropped_settings` lists what is lost.
"""

from __future__ import annotations

from provision.change.actions import Observed
from provision.desired import DesiredState
from provision.paths import SYSTEMD_DIR, instances_of, unit_of_path
from provision.systemd import Override, parse_env_file, settings_of
from provision.systemd import overrides as unit_overrides


def configured_units(desired: DesiredState) -> dict[str, tuple[str, ...]]:
    """unit -> the unit files and drop-ins of the desired state that configure it (a
    template's unit file configures each of its desired instances)."""
    names = [u.name for u in desired.units]
    found: dict[str, list[str]] = {}
    for f in desired.files:
        implied = unit_of_path(f.path)
        for unit in instances_of(implied, names) if implied else ():
            found.setdefault(unit, []).append(f.path)
    return {unit: tuple(paths) for unit, paths in found.items()}


def overrides(desired: DesiredState, observed: Observed, removed: set[str]) -> tuple[Override, ...]:
    """Settings our files give a unit that other files on the host take away
    (provision.systemd.overrides). `removed`: our files this plan deletes."""
    ours = {f.path: f.content for f in desired.files}
    others = {
        path: seen.data.decode("utf-8", "replace") if seen.kind == "file" else None
        for path, seen in observed.files.items()
        if path not in ours and path not in removed
    }
    # Every file is looked up by path: systemd's rules pick the unit's own among them.
    return tuple(
        o for unit in configured_units(desired) for o in unit_overrides(unit, ours, others)
    )


def dropped_settings(path: str, old: bytes, new: str) -> tuple[str, ...]:
    """What a file provision does not manage sets that its replacement does not: settings of a
    unit file or drop-in, variables of an environment file; () for other formats (the diff
    shows those)."""
    text = old.decode("utf-8", "replace")
    if path.startswith(SYSTEMD_DIR + "/"):
        before, after = settings_of(text), settings_of(new)
    elif path.endswith(".env"):
        before, after = parse_env_file(text), parse_env_file(new)
    else:
        return ()
    return tuple(f"{k}={v}" for k, v in before.items() if k not in after)
