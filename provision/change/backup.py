"""Backups of what an apply touches, and restoring them (after a failure, or on `rollback`).

A backup lives in /var/lib/provision/backups/<UTC timestamp>/: the files as they were, and an
index.json written last, so an index marks a complete backup. An apply that failed and was
undone leaves a marker, and a plain `rollback` skips such a backup.

A rollback is a change too and makes its own backup, whose index names the backup it restored
(`undoes`). A plain `rollback` steps back one apply at a time: it skips a rollback's backup and
everything from the backup that rollback restored on, so a second rollback goes one further
back instead of undoing the first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from provision.change.actions import Action, ActionKind, Plan
from provision.change.host import Host, list_dir, make_dir, write_atomic
from provision.change.manifest import encode, sha256
from provision.change.observe import read_file, recorded_paths, unit_states
from provision.change.plan import file_diff
from provision.change.prior import PRIOR_KEY
from provision.desired import DesiredFile
from provision.documents import load_json
from provision.errors import HostError, InputError
from provision.paths import BACKUPS_DIR, ENABLED_BY_US, SYSTEMD_DIR

ROLLED_BACK_MARKER = "rolled-back"  # in a backup directory: its apply failed and was undone
FILE_KINDS = frozenset({ActionKind.WRITE_FILE, ActionKind.REMOVE_FILE, ActionKind.WRITE_MANIFEST})


@dataclass(frozen=True)
class BackupFile:
    path: str
    existed: bool
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Backup:
    stamp: str  # the directory name under BACKUPS_DIR, a UTC timestamp
    files: tuple[BackupFile, ...]
    restarted: tuple[str, ...] = ()  # units the apply restarts, reloads or stops
    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    was_active: tuple[str, ...] | None = None  # of those units, live; None: offline
    # Each unit's state before provision first managed it (provision.change.prior), as the
    # manifest this apply writes carries it on.
    prior_units: tuple[Mapping[str, str | None], ...] = ()
    profile: str | None = None  # what the apply installed: a profile name or file, as given
    undoes: str | None = None  # a rollback's backup: the backup it restored


@dataclass(frozen=True)
class Origin:
    """What a change is, recorded in its backup: the profile it installs, or the backup a
    rollback restores."""

    profile: str | None = None
    undoes: str | None = None


def create_backup(host: Host, plan: Plan, origin: Origin = Origin()) -> Backup:
    """Copy every file the plan will touch; the index, written last, marks it complete."""
    stamp = _new_stamp(host)
    base = f"{BACKUPS_DIR}/{stamp}"
    entries = []
    for path in dict.fromkeys(a.target for a in plan.actions if a.kind in FILE_KINDS):
        seen = read_file(host, path)
        if seen.kind != "file":
            entries.append(BackupFile(path, existed=False))
            continue
        write_atomic(host, f"{base}/files{path}", seen.data, 0o600, os.geteuid(), os.getegid())
        entries.append(BackupFile(path, True, seen.mode, seen.owner, seen.group, sha256(seen.data)))
    targets = {k: [a.target for a in plan.actions if a.kind is k] for k in ActionKind}
    units = [*targets[ActionKind.RESTART], *targets[ActionKind.RELOAD], *targets[ActionKind.STOP]]
    touched = list(
        dict.fromkeys([*units, *targets[ActionKind.ENABLE], *targets[ActionKind.DISABLE]])
    )
    was_active = None
    if host.live:  # what a rollback must start again
        states = unit_states(host, touched)
        was_active = tuple(u for u in touched if states[u].active in ("active", "reloading"))
    backup = Backup(
        stamp=stamp,
        files=tuple(entries),
        restarted=tuple(units),
        enabled=tuple(targets[ActionKind.ENABLE]),
        disabled=tuple(targets[ActionKind.DISABLE]),
        was_active=was_active,
        prior_units=tuple(plan.manifest.get(PRIOR_KEY, ())),
        profile=origin.profile,
        undoes=origin.undoes,
    )
    index = json.dumps(_backup_to_plain(backup), indent=2) + "\n"
    write_atomic(host, f"{base}/index.json", index.encode(), 0o600, os.geteuid(), os.getegid())
    return backup


def mark_rolled_back(host: Host, backup: Backup, problems: list[str]) -> None:
    """A backup whose apply was undone is not what a plain `provision rollback` should restore."""
    text = "restored right after its apply failed\n" + "".join(f"{p}\n" for p in problems)
    marker = f"{BACKUPS_DIR}/{backup.stamp}/{ROLLED_BACK_MARKER}"
    write_atomic(host, marker, text.encode(), 0o600, os.geteuid(), os.getegid())


def _new_stamp(host: Host) -> str:
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        stamp = now if n == 1 else f"{now}-{n}"
        if make_dir(host, f"{BACKUPS_DIR}/{stamp}"):
            return stamp
    raise HostError(f"{host.path(BACKUPS_DIR)}: cannot create a backup directory for {now}")


def _backup_to_plain(backup: Backup) -> dict[str, object]:
    files = [{**vars(f), "mode": None if f.mode is None else f"{f.mode:04o}"} for f in backup.files]
    return {"schema": 1, **vars(backup), "files": files}


def stamp_order(stamp: str) -> tuple[str, int]:
    """Backups sort by time, then by the -N of a second backup within the same second."""
    time, _, n = stamp.partition("-")
    return time, int(n) if n.isdigit() else 1


def list_backups(host: Host) -> list[str]:
    """Complete backups (those with an index), oldest first."""
    stamps = [
        s
        for s in list_dir(host, BACKUPS_DIR)
        if read_file(host, f"{BACKUPS_DIR}/{s}/index.json").kind == "file"
    ]
    return sorted(stamps, key=stamp_order)


def rolled_back(host: Host, stamp: str) -> bool:
    return read_file(host, f"{BACKUPS_DIR}/{stamp}/{ROLLED_BACK_MARKER}").kind == "file"


def undoes(host: Host, stamp: str) -> str | None:
    """The backup that the rollback which made `stamp` restored; None for an apply's backup
    (or an index too damaged to say: loading it for a restore reports that)."""
    try:
        value = json.loads(read_file(host, f"{BACKUPS_DIR}/{stamp}/index.json").data).get("undoes")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def next_to_restore(
    stamps: Sequence[str], failed: set[str], undone_by: dict[str, str]
) -> str | None:
    """What a plain `rollback` restores, stepping back one apply at a time (pure).

    Newest first: a backup whose apply failed (and was undone at once) is skipped; a rollback's
    backup is skipped with everything from the backup it restored on (that state is gone
    already), so repeated rollbacks walk back instead of undoing each other.
    """
    floor: tuple[str, int] | None = None  # skip every backup at or after this one
    for stamp in reversed(stamps):
        if floor is not None and stamp_order(stamp) >= floor:
            continue
        if stamp in failed:
            continue
        if stamp in undone_by:
            restored = stamp_order(undone_by[stamp])
            floor = restored if floor is None else min(floor, restored)
            continue
        return stamp
    return None


def rollback_target(host: Host) -> str | None:
    stamps = list_backups(host)
    failed = {s for s in stamps if rolled_back(host, s)}
    restores = {s: u for s in stamps if (u := undoes(host, s)) is not None}
    return next_to_restore(stamps, failed, restores)


def load_backup(host: Host, stamp: str | None) -> Backup:
    """The backup `stamp`, or the one a plain rollback restores (see next_to_restore)."""
    stamps = list_backups(host)
    if not stamps:
        raise HostError(f"no complete backup under {host.path(BACKUPS_DIR)}")
    if stamp is None:
        stamp = rollback_target(host)
        if stamp is None:
            raise HostError(
                "no earlier backup to step back to: every backup is of an apply that was "
                "rolled back or undone already",
                hint="'provision rollback --list' shows them; '--to TIMESTAMP' restores any one",
            )
    elif stamp not in stamps:
        raise InputError(
            f"no complete backup {stamp} under {host.path(BACKUPS_DIR)}",
            hint="backups: " + ", ".join(stamps[-10:]),
        )
    where = host.path(f"{BACKUPS_DIR}/{stamp}/index.json")
    hint = "this backup cannot be restored: pick another with 'provision rollback --to'"
    try:
        data = load_json(read_file(host, f"{BACKUPS_DIR}/{stamp}/index.json").data)
        recorded_paths(data["files"], f"{where}: files", hint)
        files = tuple(
            BackupFile(**{**f, "mode": None if f["mode"] is None else int(f["mode"], 8)})
            for f in data["files"]
        )
        lists = {k: tuple(data[k]) for k in ("restarted", "enabled", "disabled")}
        was_active = None if data["was_active"] is None else tuple(data["was_active"])
        prior_units = tuple(dict(u) for u in data.get(PRIOR_KEY, ()))  # older indexes: none
        profile, undone = data.get("profile"), data.get("undoes")  # absent in older indexes
        if not all(v is None or isinstance(v, str) for v in (profile, undone)):
            raise TypeError(f"profile and undoes must be strings: {profile!r}, {undone!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # truncated, wrong types
        raise HostError(f"{where}: not a backup index: {exc!r}"[:400], hint=hint) from None
    return Backup(
        stamp,
        files,
        **lists,
        was_active=was_active,
        prior_units=prior_units,
        profile=profile,
        undoes=undone,
    )


def saved_file(host: Host, backup: Backup, entry: BackupFile) -> DesiredFile | None:
    """The backed-up file as a file to write back; None when it did not exist before."""
    if not entry.existed:
        return None
    copy = read_file(host, f"{BACKUPS_DIR}/{backup.stamp}/files{entry.path}")
    data = copy.data if copy.kind == "file" else b""  # gone or replaced: the digest says so
    if sha256(data) != entry.sha256:
        raise HostError(f"backup {backup.stamp}: {entry.path} does not match its recorded sha256")
    content = data.decode("utf-8", "surrogateescape")  # restores non-UTF-8 bytes exactly
    mode = 0o644 if entry.mode is None else entry.mode
    return DesiredFile(entry.path, content, mode, entry.owner or "root", entry.group or "root")


# --- planning a restore ----------------------------------------------------------------------


def restore_action(host: Host, backup: Backup, entry: BackupFile) -> Action | None:
    saved = saved_file(host, backup, entry)
    seen = read_file(host, entry.path)
    why = f"as before apply {backup.stamp}"
    if saved is None:
        return (
            Action(ActionKind.REMOVE_FILE, entry.path, f"absent {why}")
            if seen.kind == "file"
            else None
        )
    same = (seen.data, seen.mode, seen.owner, seen.group) == (
        encode(saved.content),
        saved.mode,
        saved.owner,
        saved.group,
    )
    return None if same else Action(ActionKind.WRITE_FILE, entry.path, f"restore {why}", file=saved)


def systemd_undo(
    host: Host,
    backup: Backup,
    bounced: Sequence[str],
    enabled: Sequence[str],
    disabled: Sequence[str],
) -> tuple[list[Action], list[Action]]:
    """Steps before and after restoring files to put units back as they were before the apply:
    reverse the enablement, restart what was running, stop what was not."""
    why = f"as before apply {backup.stamp}"
    first = [Action(ActionKind.DISABLE, u, why) for u in enabled]
    last = [Action(ActionKind.ENABLE, u, why) for u in disabled]
    for unit in dict.fromkeys([*bounced, *enabled, *disabled]):
        if backup.was_active is None:  # offline: nothing ran, nothing to undo
            if unit in bounced:
                last.append(Action(ActionKind.RESTART, unit, why, skipped_offline=True))
        elif unit in backup.was_active:
            last.append(Action(ActionKind.RESTART, unit, why))
        else:
            first.insert(
                0, Action(ActionKind.STOP, unit, f"not running before apply {backup.stamp}")
            )
    return first, last


def rollback_plan(host: Host, backup: Backup) -> Plan:
    """`provision rollback`: units and files as they were before the apply that made `backup`."""
    files = [a for e in backup.files if (a := restore_action(host, backup, e)) is not None]
    states = unit_states(host, [*backup.enabled, *backup.disabled])
    enabled = [u for u in backup.enabled if states[u].enabled in ENABLED_BY_US]
    disabled = [u for u in backup.disabled if states[u].enabled not in ENABLED_BY_US]
    if not (files or enabled or disabled):
        return Plan.empty(host.live)
    first, last = systemd_undo(host, backup, backup.restarted, enabled, disabled)
    if any(a.target.startswith(SYSTEMD_DIR + "/") for a in files):
        why = f"as before apply {backup.stamp}"
        last.insert(
            0, Action(ActionKind.DAEMON_RELOAD, "systemd", why, skipped_offline=not host.live)
        )
    diffs = []
    for action in files:
        old = read_file(host, action.target)
        new = encode(action.file.content) if action.file else None
        diffs.append(file_diff(action.target, old.data if old.kind == "file" else None, new))
    return Plan(host.live, tuple(first + files + last), (), tuple(diffs), manifest={})
