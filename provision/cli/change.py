"""`provision diff`, `apply` and `rollback`: show, make and undo changes to the host.

All three print the same Plan object (provision.change.plan) that apply executes. Exit codes:
diff 0 in sync, 1 changes pending; 2 bad input; 3 host error or a refused target; apply 4
failed and rolled back. `--desired-json FILE` (hidden) reads a DesiredState serialized as JSON
instead of rendering one from --rig and --profile: a testing and automation aid (see
`provision.cli.options.desired_to_json`).
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from provision.change.actions import Action, Plan, describe
from provision.change.host import Host
from provision.change.observe import observe, stock_ollama_store
from provision.change.plan import make_plan
from provision.cli import envelope
from provision.cli.options import (
    SECONDS,
    desired_options,
    json_option,
    load_desired,
    rig_options,
)
from provision.cli.terminal import echo, printable
from provision.errors import ExitCode, HostError, InputError
from provision.paths import BACKUPS_DIR, KEEP_BACKUP_DAYS, KEEP_BACKUPS
from provision.systemd import Override

if TYPE_CHECKING:
    from provision.change.apply import Outcome

F = TypeVar("F", bound=Callable[..., Any])

# --- printing ------------------------------------------------------------------------------


def _action_to_plain(index: int | None, action: Action) -> dict[str, Any]:
    plain: dict[str, Any] = {"index": index} if index is not None else {}
    plain.update(kind=str(action.kind), target=action.target, reason=action.reason)
    plain.update(detail=action.detail, skipped_offline=action.skipped_offline)
    plain.update(refused=action.refused, forceable=action.forceable)
    plain.update(drops=list(action.drops))
    return plain


def _override_to_plain(override: Override) -> dict[str, Any]:
    return dataclasses.asdict(override)  # unit, key, ours, theirs, path: the schema's override


def print_warnings(warnings: tuple[str, ...]) -> None:
    """The plan's warnings on stderr, where --json output on stdout does not mix with them."""
    for warning in warnings:
        echo(f"warning: {warning}", err=True)


def plan_to_plain(plan: Plan, host: Host) -> dict[str, Any]:
    """The body of diff's (and apply --dry-run's) document; the warnings go in the envelope."""
    return {
        "root": str(host.root),
        "mode": "live" if host.live else "offline",
        "in_sync": plan.in_sync,
        "files": [
            {"path": d.path, "diff": d.text, "before": d.before, "after": d.after}
            for d in plan.diffs
        ],
        "actions": [_action_to_plain(i, a) for i, a in enumerate(plan.actions)],
        "noops": [_action_to_plain(None, a) for a in plan.noops],
        "not_checked": list(plan.not_checked),
        "overrides": [_override_to_plain(o) for o in plan.overrides],
        "summary": summary(plan, host),
    }


def summary(plan: Plan, host: Host) -> str:
    counts = Counter(str(a.kind) for a in plan.changes)
    if counts:
        text = f"{len(plan.changes)} change(s) pending: " + ", ".join(
            f"{n} {kind}" for kind, n in counts.items()
        )
    else:
        text = f"in sync: {host.root}"
    skipped = sum(a.skipped_offline for a in plan.actions)
    if skipped:
        text += f"; {skipped} live-only step(s) recorded as skipped (offline root)"
    if plan.not_checked:
        text += "; not checked offline: " + ", ".join(plan.not_checked)
    if plan.overrides:
        text += f"; {len(plan.overrides)} setting(s) overridden by files provision does not manage"
    return text


def _coloured(line: str, colour: bool) -> str:
    if not colour:
        return line
    if line.startswith(("+++", "---")):
        return click.style(line, bold=True)
    styles = {"+": "green", "-": "red", "@": "cyan"}
    return click.style(line, fg=styles[line[0]]) if line[:1] in styles else line


def _action_line(index: int, action: Action, force: bool) -> str:
    line = f"{index + 1:>3}. {describe(action)}"
    if action.skipped_offline:
        line += "  [skipped: offline root]"
    if action.refused and not (force and action.forceable):
        line += f"\n     refused: {action.refused}"
    return line


def print_plan(
    plan: Plan, host: Host, verbose: bool, force: bool = False, actions: bool = True
) -> None:
    """Diffs, actions (apply --yes lists them as it goes instead), no-ops with -v, summary."""
    colour = sys.stdout.isatty()
    for diff in plan.diffs:
        for line in diff.text.splitlines():
            click.echo(_coloured(printable(line), colour))  # escaped, then coloured
    if plan.actions and actions:
        echo("actions:")
        for index, action in enumerate(plan.actions):
            echo(_action_line(index, action, force))
    if verbose and plan.noops:
        echo("no-ops:")
        for action in plan.noops:
            echo(f"     {action.target}: {action.reason}")
    print_overrides(plan, force)
    echo(summary(plan, host))


def print_overrides(plan: Plan, force: bool) -> None:
    """Settings of ours that other files take away: apply refuses them without --force."""
    if not plan.overrides:
        return
    echo("overridden by files provision does not manage:")
    for override in plan.overrides:
        echo(f"     {override.describe()}")
    if not force:
        echo("     refused: apply needs --force, and these files keep winning after it")


def _refused_anyway(plan: Plan) -> None:
    """Targets that even --force will not touch make a host error (exit 3)."""
    hard = plan.refusals(force=True)
    if hard:
        more = f" (and {len(hard) - 1} more)" if len(hard) > 1 else ""
        raise HostError(f"apply would refuse: {hard[0].refused}{more}")


# --- commands ------------------------------------------------------------------------------


@click.command()
@rig_options
@json_option
@desired_options
@click.pass_context
def diff(
    ctx: click.Context,
    rig_file: Path | None,
    sysfs: Path,
    root: Path,
    as_json: bool,
    profile_ref: str | None,
    allow_partial: bool,
    desired_json: Path | None,
    verbose: bool,
) -> None:
    """Show what apply would change: a unified diff per file, the actions, a summary.

    Exit status 0 when the host is in sync, 1 when changes are pending.
    """
    host = Host.at(root)
    desired, warnings = load_desired(
        rig_file, sysfs, profile_ref, desired_json, allow_partial, root, stock_ollama_store(host)
    )
    plan = make_plan(desired, observe(host, desired))
    if as_json:
        envelope.emit(plan_to_plain(plan, host), warnings=(*warnings, *plan.warnings))
    else:
        print_warnings((*warnings, *plan.warnings))
        print_plan(plan, host, verbose)
    _refused_anyway(plan)
    ctx.exit(int(ExitCode.OK if plan.in_sync else ExitCode.CHANGES_PENDING))


def _warn(warnings: tuple[str, ...], as_json: bool) -> None:
    """apply's warnings on stderr (the --json document stays alone on stdout), and in the
    document too, where they stay even when an error ends the run."""
    print_warnings(warnings)
    if as_json:
        envelope.warn(warnings)


def _confirmation_possible(yes: bool) -> None:
    if not yes and not sys.stdin.isatty():
        raise InputError(
            "this changes the host and needs a confirmation, but there is no terminal to ask on",
            hint="pass --yes to go ahead without asking (or --dry-run to only look)",
        )


def _existing_root(host: Host) -> None:
    if not host.root.is_dir():
        raise HostError(f"--root {host.root} does not exist", hint="create it first")


def _reporter(as_json: bool) -> Callable[[str], None]:
    return lambda line: echo(line, err=as_json)


def change_options(func: F) -> F:
    func = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")(func)
    return click.option(
        "--lock-timeout",
        type=SECONDS,
        default=30.0,
        show_default=True,
        help="Seconds to wait for another run to release /run/lock/provision.lock.",
    )(func)


def _outcome_to_plain(outcome: Outcome | None, host: Host, plan: Plan) -> dict[str, Any]:
    done = outcome.done if outcome else ()
    skipped = outcome.skipped if outcome else ()
    return {
        "root": str(host.root),
        "mode": "live" if host.live else "offline",
        "changed": bool(done),
        "backup": outcome.backup if outcome else None,
        "done": [_action_to_plain(None, a) for a in done],
        "skipped": [_action_to_plain(None, a) for a in skipped],
        "overrides": [_override_to_plain(o) for o in plan.overrides],
        "summary": summary(plan, host),
    }


@click.command()
@rig_options
@json_option
@desired_options
@change_options
@click.option("--dry-run", is_flag=True, help="Show the plan and change nothing.")
@click.option("--force", is_flag=True, help="Replace files provision does not own (backed up).")
@click.option(
    "--check-timeout",
    type=SECONDS,
    default=60.0,
    show_default=True,
    help="Seconds for a restarted service to be active and answer on its port (live only).",
)
def apply(
    rig_file: Path | None,
    sysfs: Path,
    root: Path,
    as_json: bool,
    profile_ref: str | None,
    allow_partial: bool,
    desired_json: Path | None,
    verbose: bool,
    yes: bool,
    lock_timeout: float,
    dry_run: bool,
    force: bool,
    check_timeout: float,
) -> None:
    """Change the host to the desired state: back up, write, reload, restart, check.

    On any failure the backup is restored and the exit status is 4.
    """
    # lazy: the executor (sockets, locks, backups) is not needed by diff, which shares this module
    from provision.change.apply import Settings, execute, locked
    from provision.change.backup import Origin

    host = Host.at(root)
    desired, warnings = load_desired(
        rig_file, sysfs, profile_ref, desired_json, allow_partial, root, stock_ollama_store(host)
    )
    # Before anything else, and before the confirmation: what the plan warns about.
    _warn(warnings, as_json)
    if dry_run:
        plan = make_plan(desired, observe(host, desired))
        _warn(plan.warnings, as_json)
        _show(plan, host, as_json, verbose, force)
        _refused_anyway(plan)
        if not as_json:
            echo("dry run: nothing was changed")
        return
    _confirmation_possible(yes)
    _existing_root(host)
    report = _reporter(as_json)
    with locked(host, lock_timeout, report):
        plan = make_plan(desired, observe(host, desired))
        _warn(plan.warnings, as_json)
        if plan.in_sync:
            if not as_json:  # nothing to apply, but the host does not run what was planned
                print_overrides(plan, force=True)
            _done(None, host, plan, as_json)
            return
        if not as_json:
            print_plan(plan, host, verbose, force, actions=not yes)
        _ask(yes, f"apply {len(plan.changes)} change(s) to {host.root}?")
        units = {u.name: u for u in desired.units}
        settings = Settings(force=force, check_timeout_s=check_timeout)
        profile = str(desired_json) if desired_json else profile_ref or "(default)"
        outcome = execute(host, plan, units, settings, report, Origin(profile=profile))
    _done(outcome, host, plan, as_json)


def _show(plan: Plan, host: Host, as_json: bool, verbose: bool, force: bool) -> None:
    if as_json:
        envelope.emit(plan_to_plain(plan, host))
    else:
        print_plan(plan, host, verbose, force)


def _ask(yes: bool, question: str) -> None:
    if not yes:
        click.confirm(question, abort=True, err=True)


def _done(outcome: Outcome | None, host: Host, plan: Plan, as_json: bool) -> None:
    if as_json:
        envelope.emit(_outcome_to_plain(outcome, host, plan))
    elif outcome is None:
        echo(f"in sync: nothing to do under {host.root}")
    else:
        echo(
            f"applied {len(outcome.done)} change(s); {len(outcome.skipped)} skipped (offline); "
            f"backup {outcome.backup} ('provision rollback --to {outcome.backup}' undoes it)"
        )


ROLLBACK_EPILOG = (
    f"Backups live in {BACKUPS_DIR}/. After every completed apply or rollback, a backup is "
    f"pruned when it is neither among the {KEEP_BACKUPS} newest nor younger than "
    f"{KEEP_BACKUP_DAYS} days; the one the next rollback restores and the one the current "
    "manifest names are always kept."
)


@click.command(epilog=ROLLBACK_EPILOG)
@rig_options
@json_option
@change_options
@click.option(
    "--to",
    "stamp",
    metavar="TIMESTAMP",
    help="The backup to restore (default: one step back, as --list marks).",
)
@click.option("--list", "list_only", is_flag=True, help="List the complete backups and exit.")
@click.option(
    "--dry-run", is_flag=True, help="Show what would be restored and change nothing (exit 0/1)."
)
@click.pass_context
def rollback(
    ctx: click.Context,
    rig_file: Path | None,
    sysfs: Path,
    root: Path,
    as_json: bool,
    yes: bool,
    lock_timeout: float,
    stamp: str | None,
    list_only: bool,
    dry_run: bool,
) -> None:
    """Restore the files (and unit states) from before an apply, from its backup.

    A plain rollback steps back one apply at a time: run again, it goes one further back.
    """
    # lazy: as in apply, diff does not pay for the executor and the backups
    from provision.change.apply import Settings, execute, locked
    from provision.change.backup import Origin, load_backup, rollback_plan

    host = Host.at(root)
    if list_only:
        _list_backups(host, as_json)
        return
    if dry_run:
        backup = load_backup(host, stamp)
        plan = rollback_plan(host, backup)
        _show(plan, host, as_json, verbose=False, force=True)
        if not as_json:
            echo(f"dry run: nothing was changed (would restore backup {backup.stamp})")
        ctx.exit(int(ExitCode.OK if not plan.actions else ExitCode.CHANGES_PENDING))
    _confirmation_possible(yes)
    _existing_root(host)
    report = _reporter(as_json)
    with locked(host, lock_timeout, report):
        backup = load_backup(host, stamp)
        plan = rollback_plan(host, backup)
        if not plan.actions:
            _done(None, host, plan, as_json)
            return
        if not as_json:
            print_plan(plan, host, verbose=False, force=True)
        _ask(yes, f"restore {host.root} as it was before apply {backup.stamp}?")
        origin = Origin(undoes=backup.stamp)
        outcome = execute(host, plan, {}, Settings(force=True), report, origin)
    _done(outcome, host, plan, as_json)


def _list_backups(host: Host, as_json: bool) -> None:
    """One line per backup: when (its name, UTC), what it was, how much it touched."""
    from provision.change.history import summaries  # lazy, as the executor above

    entries = summaries(host)
    if as_json:
        listing = [
            {
                "backup": e.stamp,
                "rolled_back": e.failed,
                "profile": e.profile,
                "undoes": e.undoes,
                "files": e.files,
                "units": e.units,
                "next_rollback": e.next_rollback,
            }
            for e in entries
        ]
        envelope.emit({"backups": listing})
    else:
        echo("\n".join(e.line() for e in entries) or "no backups")
