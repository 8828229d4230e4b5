"""Execute a plan: lock, back up, change, check, and restore the backup on any failure.

The plan runs exactly as `diff` printed it. Every file it touches is backed up first (a backup's
index is written last, so an index marks a complete backup); files are replaced atomically;
commands go through provision.command.run; the manifest is the plan's last action, so a manifest
always describes a completed apply and an interrupted one is simply re-planned.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from provision import __version__
from provision.change.actions import Action, ActionKind, Plan, describe
from provision.change.backup import (
    FILE_KINDS,
    Backup,
    Origin,
    create_backup,
    mark_rolled_back,
    restore_action,
    systemd_undo,
)
from provision.change.history import prune
from provision.change.host import Host, open_lock_file, remove_file, write_atomic
from provision.change.manifest import encode, units_from_manifest
from provision.change.observe import ollama_address, ollama_state, read_file, read_manifest
from provision.command import run
from provision.desired import DesiredFile, DesiredUnit
from provision.errors import HostError, ProvisionError, RolledBack
from provision.paths import AMDGPU_POWER_SCRIPT, LOCK_PATH, MANIFEST_PATH, SYSTEMD_DIR, reachable

KILL_AT_STEP_ENV = "PROVISION_TEST_KILL_AT_STEP"  # test hook: SIGKILL before action k
# After these the unit must be active and its port open.
CHECKED = frozenset({ActionKind.RESTART, ActionKind.RELOAD})
COMMAND_TIMEOUT_S = 120.0  # restarts of a big model server can take a while
PULL_TIMEOUT_S = 6 * 3600.0  # a 70B base model over a slow link

Report = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    force: bool = False
    check_timeout_s: float = 60.0  # for a restarted unit to be active and its port to answer


@dataclass(frozen=True)
class Outcome:
    backup: str | None
    done: tuple[Action, ...]
    skipped: tuple[Action, ...]


# --- the lock ------------------------------------------------------------------------------


@contextmanager
def locked(host: Host, timeout_s: float, report: Report) -> Iterator[None]:
    """Hold /run/lock/provision.lock (under the root); its content is the holder's PID."""
    fd = open_lock_file(host, LOCK_PATH)
    try:
        _acquire(host, fd, timeout_s, report)
        _holder(host, fd, f"{os.getpid()}\n")
        yield
        _holder(host, fd, "")
    finally:
        os.close(fd)  # closing the descriptor releases the flock, even on SIGKILL


def _holder(host: Host, fd: int, text: str) -> None:
    """Say who holds the lock (a full disk can refuse even these few bytes)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
    except OSError as exc:
        raise HostError(f"{host.path(LOCK_PATH)}: cannot write: {exc.strerror}") from None


def _acquire(host: Host, fd: int, timeout_s: float, report: Report) -> None:
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        if time.monotonic() >= deadline:
            raise HostError(
                f"another provision run (PID {holder}) holds {host.path(LOCK_PATH)}",
                hint=f"wait for it to finish, or allow longer with --lock-timeout "
                f"(waited {timeout_s:g} s)",
            )
        if not told:
            report(f"waiting up to {timeout_s:g} s for PID {holder}, which holds the lock")
            told = True
        time.sleep(0.05)


# --- executing -----------------------------------------------------------------------------


def execute(
    host: Host,
    plan: Plan,
    units: Mapping[str, DesiredUnit],
    settings: Settings,
    report: Report,
    origin: Origin | None = None,
) -> Outcome:
    """Run every action of the plan in order; on failure restore the backup and raise. Once
    done, backups beyond the retention are pruned (provision.change.history)."""
    _refuse(plan, settings.force)
    _preflight(host, plan)
    backup = create_backup(host, plan, origin or Origin())
    kill_at = _kill_step()
    done: list[Action] = []
    skipped: list[Action] = []
    for index, action in enumerate(plan.actions):
        if kill_at == index:
            os.kill(os.getpid(), signal.SIGKILL)
        step = f"[{index + 1}/{len(plan.actions)}]"
        if action.skipped_offline:
            unit = units.get(action.target) if action.kind in CHECKED else None
            check = f" (and the check of port {unit.listen[1]})" if unit and unit.listen else ""
            report(f"{step} skipped (offline root): {describe(action)}{check}")
            skipped.append(action)
            continue
        report(f"{step} {describe(action)}")
        try:
            _perform(host, plan, action, units, settings, backup.stamp)
        except BaseException as exc:
            _fail(host, backup, done, action, f"{step}", exc, report)
        done.append(action)
    _prune(host, report)
    return Outcome(backup.stamp, tuple(done), tuple(skipped))


def _prune(host: Host, report: Report) -> None:
    """The change is complete: a backup that cannot be removed is reported, not a failure."""
    try:
        removed = prune(host, datetime.now(UTC))
    except HostError as exc:
        report(f"warning: old backups not pruned: {exc.message}")
        return
    if removed:
        report(f"pruned {len(removed)} old backup(s): {', '.join(removed)}")


def _refuse(plan: Plan, force: bool) -> None:
    refusals = plan.refusals(force)
    if plan.overrides and not force:
        first = plan.overrides[0]
        more = f" (and {len(plan.overrides) - 1} more)" if len(plan.overrides) > 1 else ""
        raise HostError(
            f"refusing to apply: {first.describe()}{more}; nothing was changed",
            hint=f"remove the setting from {first.path} (then 'systemctl daemon-reload'), or "
            "pass --force to apply anyway: that file keeps winning",
        )
    if not refusals:
        return
    more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
    forceable = all(a.forceable for a in refusals)
    raise HostError(
        f"refusing to apply: {refusals[0].refused}{more}; nothing was changed",
        hint="--force backs such files up and replaces them" if forceable else None,
    )


def _preflight(host: Host, plan: Plan) -> None:
    """Every file the plan writes or removes can be: nothing but directories on the way, a
    regular file or nothing where it goes. Checked over every path before the backup is made,
    so that a plan (a rollback's too) that could only stop halfway changes nothing; a refusal
    names each path that blocks it. (What fails later, an account or a command, is undone
    from the backup: exit 4.)"""
    blocked = []
    for action in plan.actions:
        if action.kind not in FILE_KINDS:
            continue
        seen = read_file(host, action.target)
        if seen.kind in ("symlink", "other"):
            what = "a symlink" if seen.kind == "symlink" else "not a regular file"
            blocked.append(f"{host.path(action.target)} is {what}{seen.note}")
    if blocked:
        raise HostError(
            "refusing to start: nothing was changed; provision never writes through a symlink "
            "and replaces only regular files:\n  " + "\n  ".join(blocked),
            hint="move each of these aside (or put the real file there) and run it again",
        )


def _kill_step() -> int | None:
    value = os.environ.get(KILL_AT_STEP_ENV, "")
    return int(value) if value.strip().isdigit() else None


def _perform(
    host: Host,
    plan: Plan,
    action: Action,
    units: Mapping[str, DesiredUnit],
    settings: Settings,
    stamp: str,
) -> None:
    kind, target = action.kind, action.target
    if kind is ActionKind.WRITE_FILE:
        assert action.file is not None
        _write(host, action.file)
    elif kind is ActionKind.REMOVE_FILE:
        remove_file(host, target)
    elif kind is ActionKind.WRITE_MANIFEST:
        _write_manifest(host, plan, stamp)
    elif kind in (ActionKind.DAEMON_RELOAD, ActionKind.ENABLE, ActionKind.DISABLE, ActionKind.STOP):
        verb = str(kind)
        _command(
            host.systemctl(verb)
            if kind is ActionKind.DAEMON_RELOAD
            else host.systemctl(verb, target)
        )
    elif kind in (ActionKind.RESTART, ActionKind.RELOAD):
        verb = "restart" if kind is ActionKind.RESTART else "reload-or-restart"
        _command(host.systemctl(verb, target))
        _await_unit(host, target, units.get(target), settings.check_timeout_s)
    elif kind is ActionKind.SET_POWER:
        # Whole watts, as the plan decided them and as the power unit writes them at boot.
        watts = f"{int(action.watts or 0)}"
        if action.source:
            # The script the power unit runs at boot: one way to set an AMD cap, read back.
            _command(["/bin/sh", AMDGPU_POWER_SCRIPT, action.source, watts])
        else:
            _command(["nvidia-smi", "-i", target, "-pl", watts])
    elif kind in (ActionKind.PULL_MODEL, ActionKind.CREATE_MODEL, ActionKind.REMOVE_MODEL):
        await_ollama(ollama_address(units.values()), settings.check_timeout_s)
        _command(_ollama(units, kind, target, action.source), PULL_TIMEOUT_S)
    else:
        raise AssertionError(f"no way to perform {kind}")


def _write(host: Host, file: DesiredFile) -> None:
    uid, gid = host.ids(file.owner, file.group)
    write_atomic(host, file.path, encode(file.content), file.mode, uid, gid)


def _command(argv: Sequence[str], timeout_s: float = COMMAND_TIMEOUT_S) -> None:
    run(argv, timeout_s=timeout_s).check()


def _ollama(
    units: Mapping[str, DesiredUnit], kind: ActionKind, name: str, modelfile: str
) -> list[str]:
    # The CLI talks to OLLAMA_HOST; a rendered instance may listen elsewhere than the default.
    address = ollama_address(units.values())
    argv = ["env", f"OLLAMA_HOST={address[0]}:{address[1]}", "ollama"]
    if kind is ActionKind.PULL_MODEL:
        return [*argv, "pull", name]
    if kind is ActionKind.REMOVE_MODEL:
        return [*argv, "rm", name]  # unloads it, then DELETE /api/delete (cmd/cmd.go)
    return [*argv, "create", name, "-f", modelfile]


def _write_manifest(host: Host, plan: Plan, stamp: str) -> None:
    document = dict(plan.manifest)
    document["last_apply"] = {
        "applied_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "backup": stamp,
        "mode": "live" if host.live else "offline",
        "tool_version": __version__,
    }
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    write_atomic(host, MANIFEST_PATH, text.encode(), 0o644, *host.ids("root", "root"))


def _await_unit(host: Host, name: str, unit: DesiredUnit | None, timeout_s: float) -> None:
    """Live only: a (re)started unit must become active and its port must answer."""
    if not host.live or (unit is not None and unit.oneshot):
        return  # `systemctl restart` of a oneshot waits for it and fails if it failed
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = run(host.systemctl("is-active", name)).stdout.strip()
        if state in ("active", "failed"):
            break
        time.sleep(0.2)
    if state != "active":
        raise HostError(
            f"{name} is {state or 'unknown'}, not active, after its restart",
            hint=f"journalctl -u {name} -n 50 says why",
        )
    if unit is not None and unit.listen is not None:
        _await_port(name, unit.listen, deadline)


def await_ollama(address: tuple[str, int], timeout_s: float) -> None:
    """The Ollama the CLI will talk to answers as Ollama (its /api/tags), not merely something
    on its port: a restarted ollama.service is active before it listens, and one that lost its
    port to a listener still closing (nginx after a reload) exits and comes back after its
    RestartSec=3 (the installer's unit), by which time the port is free."""
    deadline = time.monotonic() + timeout_s
    while ollama_state(address)[1] is None:
        if time.monotonic() >= deadline:
            raise HostError(
                f"Ollama does not answer on {address[0]}:{address[1]} (asked for {timeout_s:g} s)",
                hint="journalctl -u ollama -n 50 says why (for replicas: ollama@N)",
            )
        time.sleep(0.5)


def _await_port(name: str, listen: tuple[str, int], deadline: float) -> None:
    address = reachable(listen)
    while True:
        try:
            with socket.create_connection(address, timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise HostError(
                    f"{name} is active but nothing answers on {address[0]}:{address[1]}",
                    hint=f"journalctl -u {name} -n 50 says why",
                ) from None
            time.sleep(0.2)


# --- failure -------------------------------------------------------------------------------


def _fail(
    host: Host,
    backup: Backup,
    done: list[Action],
    failed: Action,
    step: str,
    exc: BaseException,
    report: Report,
) -> None:
    """Restore the backup and what the apply changed in systemd, then raise (exit 4)."""
    cause = exc.message if isinstance(exc, ProvisionError) else f"{type(exc).__name__}: {exc}"
    report(f"{step} failed: {cause}")
    report(f"restoring from backup {backup.stamp}")
    problems: list[str] = []
    # The previous state's units, as its manifest (written last, so still intact) records them:
    # a restarted service must come back up and answer on its port, or the rollback failed too.
    try:
        previous = units_from_manifest(read_manifest(host))
    except ProvisionError as unreadable:  # the undo goes on without the units' port checks
        problems.append(unreadable.message)
        previous = {}
    # The failed step counts too: a restart that failed has still stopped the old process.
    targets = {k: tuple(a.target for a in [*done, failed] if a.kind is k) for k in ActionKind}
    bounced = targets[ActionKind.RESTART] + targets[ActionKind.RELOAD] + targets[ActionKind.STOP]
    first, last = systemd_undo(
        host, backup, bounced, targets[ActionKind.ENABLE], targets[ActionKind.DISABLE]
    )
    _run_quietly(host, first, backup, previous, report, problems)
    restored = restore_files(host, backup, problems)
    if host.live and any(p.startswith(SYSTEMD_DIR + "/") for p in restored):
        last.insert(0, Action(ActionKind.DAEMON_RELOAD, "systemd", "rollback"))
    _run_quietly(host, last, backup, previous, report, problems)
    mark_rolled_back(host, backup, problems)
    if not isinstance(exc, ProvisionError | KeyboardInterrupt):
        raise exc  # a bug: the host is restored, the traceback says where
    files = ", ".join(restored) or "no file had changed yet"
    message = f"apply failed at {step} {failed.kind} {failed.target}: {cause}\n"
    message += f"restored from backup {backup.stamp}: {files}"
    if first or last:
        message += "\nthen: " + "; ".join(f"{a.kind} {a.target}" for a in first + last)
    if problems:
        raise HostError(
            message + "\nbut the rollback did not complete:\n  " + "\n  ".join(problems),
            hint=f"fix the cause, then run 'provision rollback --to {backup.stamp}'",
        ) from None
    raise RolledBack(message, hint=exc.hint if isinstance(exc, ProvisionError) else None)


def _run_quietly(
    host: Host,
    actions: list[Action],
    backup: Backup,
    units: Mapping[str, DesiredUnit],
    report: Report,
    problems: list[str],
) -> None:
    """Run recovery steps, collecting failures: one failed step must not stop the others."""
    settings = Settings(check_timeout_s=10)
    for action in actions:
        if action.skipped_offline:
            continue
        report(f"  {describe(action)}")
        try:
            _perform(host, Plan.empty(), action, units, settings, backup.stamp)
        except ProvisionError as exc:
            problems.append(exc.message)


# --- restoring ---------------------------------------------------------------------------


def restore_files(host: Host, backup: Backup, problems: list[str]) -> list[str]:
    """Put back every backed-up file that differs now; the paths restored."""
    restored = []
    for entry in backup.files:
        try:
            action = restore_action(host, backup, entry)
            if action is not None:
                _perform(host, Plan.empty(), action, {}, Settings(), backup.stamp)
                restored.append(entry.path)
        except ProvisionError as exc:
            problems.append(exc.message)
    return restored
