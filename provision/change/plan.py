"""Desired state vs observed host -> an ordered plan of actions, each with its reason (pure).

`diff` prints a Plan and `apply` executes the very same object, so a dry run cannot disagree with
a real run. The observations are plain data filled in by provision.change.host; nothing here touches
the host. Order of a plan: stop and disable what is no longer wanted, write and remove files, one
daemon-reload, enable, power limits, restarts (a unit given back reloads first: it lets go of a
port the restarted one binds), reloads, models (created, then the ones provision created and no
longer wants removed), and the manifest last. Power limits and models have modules of their own
(plan_power, plan_models).

Beside the actions, a plan lists the settings of ours that files provision does not manage
override (`Plan.overrides`: a `systemctl edit` override.conf, a drop-in sorting after ours):
apply refuses them without --force, as it refuses to replace such a file.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from provision.change import prior
from provision.change.actions import (
    ActionKind,
    FileDiff,
    Observed,
    ObservedFile,
    ObservedUnit,
    Plan,
    Section,
)
from provision.change.foreign import dropped_settings, overrides
from provision.change.manifest import build_manifest, comparable, encode, sha256
from provision.change.plan_models import plan_model_removals, plan_models, stock_ollama_warning
from provision.change.plan_power import plan_power, plan_power_handover
from provision.desired import MANAGED_HEADER, DesiredFile, DesiredState, DesiredUnit
from provision.paths import (
    ENABLED_BY_US,
    ENABLED_STATES,
    MANIFEST_PATH,
    RUNNING_STATES,
    SYSTEMD_DIR,
    instances_of,
    template_of,
    unit_file,
    unit_of_path,
)

# The header sits on the first line, or just after a shebang or a format's own first line.
HEADER_SEARCH_LINES = 5
FOREIGN = (
    "{path} is not managed by provision (no header, not in the manifest): "
    "apply needs --force, which backs it up first"
)


def carries_header(data: bytes) -> bool:
    lines = data.decode("utf-8", "replace").splitlines()[:HEADER_SEARCH_LINES]
    return any(line.strip() == MANAGED_HEADER for line in lines)


def make_plan(desired: DesiredState, observed: Observed) -> Plan:
    """Compare attribute by attribute; every action and every no-op says why.

    Refusals are recorded on the actions either way; `Plan.refusals(force)` decides.
    """
    previous = _previous_files(observed.manifest)
    files = _plan_files(desired, observed, previous)
    written = {a.target for a in files.actions}
    dirty = _dirty_paths(desired, previous, written)
    back = prior.given_back(desired.units, observed)
    sections = [
        _plan_obsolete_units(desired, observed, back),
        plan_power_handover(desired, observed, dirty),
        files,
        _plan_daemon_reload(dirty, observed),
        _plan_enable(desired, observed),
        prior.enable_given_back(back, observed),
        plan_power(desired, observed),
        _plan_restarts(desired, observed, dirty, previous, back),
    ]
    models, created = plan_models(desired, observed, dirty)
    removals, kept = plan_model_removals(desired, observed)
    sections += [models, removals]
    manifest = build_manifest(desired, created | kept)
    states = prior.prior_states(desired.units, observed)
    if states:
        manifest[prior.PRIOR_KEY] = prior.to_plain(states)
    sections.append(_plan_manifest(manifest, observed))
    actions = tuple(a for s in sections for a in s.actions)
    return Plan(
        live=observed.live,
        actions=actions,
        noops=tuple(a for s in sections for a in s.noops),
        diffs=tuple(files.diffs),
        manifest=manifest,
        not_checked=_not_checked(desired, observed),
        warnings=stock_ollama_warning(desired, observed, actions),
        overrides=overrides(desired, observed, removed=set(previous) - wanted_paths(desired)),
    )


def wanted_paths(desired: DesiredState) -> set[str]:
    return {f.path for f in desired.files}


def _previous_files(manifest: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    if not manifest:
        return {}
    return {str(f["path"]): f for f in manifest.get("files", ()) if isinstance(f, Mapping)}


def _plan_files(
    desired: DesiredState, observed: Observed, previous: Mapping[str, Mapping[str, Any]]
) -> Section:
    section = Section(observed.live)
    wanted = {f.path for f in desired.files}
    for desired_file in sorted(desired.files, key=lambda f: f.path):
        _plan_file(section, desired_file, observed.files[desired_file.path], previous)
    for path in sorted(set(previous) - wanted):
        _plan_removal(section, observed.files[path], previous[path])
    return section


def _plan_file(
    section: Section,
    want: DesiredFile,
    have: ObservedFile,
    previous: Mapping[str, Mapping[str, Any]],
) -> None:
    data = encode(want.content)
    if have.kind in ("symlink", "other"):
        what = "a symlink" if have.kind == "symlink" else "not a regular file"
        refused = f"{have.path} is {what}{have.note}: provision never writes through it"
        section.act(ActionKind.WRITE_FILE, want.path, "target is in the way", refused=refused)
        return
    if have.kind == "missing":
        section.act(ActionKind.WRITE_FILE, want.path, "missing", file=want)
        section.diffs.append(file_diff(want.path, None, data))
        return
    changes = _attribute_changes(want, data, have)
    if not changes:
        section.noop(want.path, f"in sync (sha256 {sha256(data)[:12]})")
        return
    ours = carries_header(have.data) or want.path in previous
    reason = ", ".join(changes) if ours else "replaces a file provision does not manage"
    refused = "" if ours else FOREIGN.format(path=want.path)
    detail = _mode_owner_detail(want, have)
    section.act(
        ActionKind.WRITE_FILE,
        want.path,
        reason,
        detail=detail,
        refused=refused,
        forceable=True,
        file=want,
        drops=() if ours else dropped_settings(want.path, have.data, want.content),
    )
    if "content changed" in changes:
        section.diffs.append(file_diff(want.path, have.data, data))


def _attribute_changes(want: DesiredFile, data: bytes, have: ObservedFile) -> list[str]:
    changes = []
    if have.data != data:
        changes.append("content changed")
    if have.mode != want.mode:
        changes.append("mode differs")
    if (have.owner, have.group) != (want.owner, want.group):
        changes.append("owner differs")
    return changes


def _mode_owner_detail(want: DesiredFile, have: ObservedFile) -> str:
    parts = []
    if have.mode != want.mode:
        old = "?" if have.mode is None else f"{have.mode:04o}"
        parts.append(f"mode {old} -> {want.mode:04o}")
    if (have.owner, have.group) != (want.owner, want.group):
        parts.append(f"owner {have.owner}:{have.group} -> {want.owner}:{want.group}")
    return ", ".join(parts)


def _plan_removal(section: Section, have: ObservedFile, recorded: Mapping[str, Any]) -> None:
    if have.kind == "missing":
        section.noop(have.path, "no longer wanted and already absent")
    elif have.kind != "file":
        section.noop(have.path, f"no longer wanted, but {have.kind}{have.note}: left alone")
    elif carries_header(have.data) or sha256(have.data) == recorded.get("sha256"):
        section.act(ActionKind.REMOVE_FILE, have.path, "no longer wanted (listed in the manifest)")
        section.diffs.append(file_diff(have.path, have.data, None))
    else:
        section.noop(have.path, "no longer wanted, but edited by hand without the header: left")


def file_diff(path: str, old: bytes | None, new: bytes | None) -> FileDiff:
    """The unified diff from ``old`` to ``new`` (None: the file is absent), and both texts."""
    before = None if old is None else old.decode("utf-8", "replace")
    after = None if new is None else new.decode("utf-8", "replace")

    def lines(text: str | None) -> list[str]:
        return [] if text is None else text.splitlines(keepends=True)

    old_name = "/dev/null" if old is None else f"a{path}"
    new_name = "/dev/null" if new is None else f"b{path}"
    text = "".join(difflib.unified_diff(lines(before), lines(after), old_name, new_name))
    if text and not text.endswith("\n"):
        text += "\n\\ No newline at end of file\n"
    return FileDiff(path, text, before, after)


def _dirty_paths(
    desired: DesiredState, previous: Mapping[str, Mapping[str, Any]], written: set[str]
) -> set[str]:
    """Files whose change has not yet reached the services that read them.

    A path is dirty when this plan writes or removes it, or when the last completed apply (the
    manifest) recorded other bytes: an apply killed after its writes must still restart.
    """
    dirty = set(written)
    for want in desired.files:
        if previous.get(want.path, {}).get("sha256") != sha256(encode(want.content)):
            dirty.add(want.path)
    wanted = {f.path for f in desired.files}
    dirty.update(set(previous) - wanted)
    return dirty


def _plan_daemon_reload(dirty: set[str], observed: Observed) -> Section:
    section = Section(observed.live)
    unit_files = sorted(p for p in dirty if p.startswith(SYSTEMD_DIR + "/"))
    stale = sorted(u.name for u in observed.units.values() if u.needs_daemon_reload)
    if unit_files or stale:
        reason = "changed: " + ", ".join(unit_files or stale)
        section.act(ActionKind.DAEMON_RELOAD, "systemd", reason)
    else:
        section.noop("systemd", "no unit file or drop-in changed: no daemon-reload")
    return section


def _provided(unit: str, desired: DesiredState) -> bool:
    written = {f.path for f in desired.files}
    return any(unit_file(name) in written for name in (unit, template_of(unit)))


def _missing_unit(unit: str, desired: DesiredState, observed: Observed) -> str:
    seen = observed.units.get(unit)
    if seen is None or seen.enabled != "not-found" or _provided(unit, desired):
        return ""
    return f"{unit} does not exist on the host and provision does not write it"


def _plan_enable(desired: DesiredState, observed: Observed) -> Section:
    section = Section(observed.live)
    for unit in desired.units:
        state = observed.units[unit.name].enabled
        missing = _missing_unit(unit.name, desired, observed)
        if unit.enabled and state == "masked":
            refused = f"{unit.name} is masked: unmask it deliberately first"
            section.act(ActionKind.ENABLE, unit.name, "masked", refused=refused)
        elif unit.enabled and state not in ENABLED_STATES:
            section.act(ActionKind.ENABLE, unit.name, f"is {state}", refused=missing)
        elif not unit.enabled and state in ENABLED_BY_US:
            section.act(ActionKind.DISABLE, unit.name, f"is {state}, wanted disabled")
        else:
            section.noop(unit.name, f"is {state}, as wanted")
    return section


def _recorded_units(observed: Observed) -> list[str]:
    return [str(u.get("name")) for u in (observed.manifest or {}).get("units", ())]


def _plan_obsolete_units(
    desired: DesiredState, observed: Observed, back: Mapping[str, prior.PriorState]
) -> Section:
    """Units the last apply managed that the desired state no longer has: stop, then disable;
    one that was enabled or running before provision first managed it is given back instead."""
    section = Section(observed.live)
    wanted = {u.name for u in desired.units}
    for name in sorted(set(_recorded_units(observed)) - wanted):
        seen = observed.units[name]
        if name in back:
            prior.give_back(section, back[name], seen)
            continue
        if seen.active in RUNNING_STATES:
            section.act(ActionKind.STOP, name, "no longer wanted (listed in the manifest)")
        if seen.enabled in ENABLED_BY_US:
            section.act(ActionKind.DISABLE, name, "no longer wanted (listed in the manifest)")
        else:
            section.noop(name, f"no longer wanted and {seen.enabled}")
    for unit in desired.units:
        seen = observed.units[unit.name]
        if not unit.active and seen.active in RUNNING_STATES:
            section.act(ActionKind.STOP, unit.name, f"is {seen.active}, wanted stopped")
    return section


def _inputs(
    desired: DesiredState, dirty: set[str], previous: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """unit -> the dirty files it restarts on, and unit -> the dirty files it reloads on."""
    by_path = {f.path: f for f in desired.files}
    names = [u.name for u in desired.units]
    restarts: dict[str, list[str]] = {}
    reloads: dict[str, list[str]] = {}
    for path in sorted(dirty):
        want = by_path.get(path)
        record = previous.get(path, {})
        restart_units = list(want.restarts if want else record.get("restarts", ()))
        implied = unit_of_path(path)
        if implied:
            restart_units += [n for n in instances_of(implied, names) if n not in restart_units]
        for unit in restart_units:
            restarts.setdefault(unit, []).append(path)
        for unit in want.reloads if want else record.get("reloads", ()):
            reloads.setdefault(unit, []).append(path)
    return restarts, reloads


def _plan_restarts(
    desired: DesiredState,
    observed: Observed,
    dirty: set[str],
    previous: Mapping[str, Mapping[str, Any]],
    back: Mapping[str, prior.PriorState],
) -> Section:
    section = Section(observed.live)
    restarts, reloads = _inputs(desired, dirty, previous)
    units = {u.name: u for u in desired.units}
    # Units the last apply managed and this one drops are stopped, not restarted; those given
    # back running still take the changes of their inputs (nginx: a removed site).
    running_back = {n for n, s in back.items() if s.was_running is not False}
    dropped = set(_recorded_units(observed)) - set(units) - running_back
    order = [u.name for u in desired.units] + sorted(set(restarts) - set(units) - dropped)
    restarted = set()
    # A unit given back (nginx once its site is removed) lets go of the ports those files had
    # it listen on: reloaded before the restarts, so that the unit taking the port over (the
    # stock Ollama on 11434) can bind it.
    released = sorted(set(reloads) - dropped - set(units) - set(restarts))
    for name in released:
        section.act(ActionKind.RELOAD, name, "inputs changed: " + ", ".join(reloads[name]))
        restarted.add(name)
    for name in order:
        verdict = _restart_verdict(units.get(name), observed.units.get(name), restarts.get(name))
        if verdict is None:
            continue
        needed, reason = verdict
        if not needed:
            section.noop(name, reason)
            continue
        missing = _missing_unit(name, desired, observed)
        section.act(ActionKind.RESTART, name, reason, refused=missing)
        restarted.add(name)
    for name in sorted(set(reloads) - dropped - set(released)):
        if name in restarted:
            section.noop(name, "reload not needed: restarted anyway")
        elif units.get(name) is None or units[name].active:
            reason = "inputs changed: " + ", ".join(reloads[name])
            section.act(ActionKind.RELOAD, name, reason)
            restarted.add(name)
    prior.start_given_back(section, back, observed, restarted)
    return section


def _restart_verdict(
    unit: DesiredUnit | None, seen: ObservedUnit | None, inputs: list[str] | None
) -> tuple[bool, str] | None:
    """(restart needed, why) for the unit; None when there is nothing to say about it."""
    if unit is not None and not unit.active:
        return None
    if inputs:
        return True, "inputs changed: " + ", ".join(inputs)
    if unit is None:
        return None
    if seen is None or seen.active is None:
        return False, "offline: active state not read; inputs unchanged"
    if seen.active == "active" or (unit.oneshot and seen.ran_ok):
        return False, f"{seen.active}; inputs unchanged"
    return True, f"is {seen.active}"


def _plan_manifest(manifest: dict[str, Any], observed: Observed) -> Section:
    section = Section(observed.live)
    if comparable(observed.manifest) == manifest:
        section.noop(MANIFEST_PATH, "records this desired state already")
    else:
        why = "absent" if observed.manifest is None else "records another state"
        section.act(ActionKind.WRITE_MANIFEST, MANIFEST_PATH, f"{why}; written last")
    return section


def _not_checked(desired: DesiredState, observed: Observed) -> tuple[str, ...]:
    if observed.live:
        return ()
    counts = [
        (len(desired.power), "power limit(s)"),
        (len(desired.models), "Ollama model(s)"),
        (sum(u.active for u in desired.units), "running state(s)"),
    ]
    return tuple(f"{n} {what}" for n, what in counts if n)
