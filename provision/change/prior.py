"""The state a unit had before provision first managed it, and giving it back (pure).

A service that was enabled or running before provision touched it (Debian's nginx, the stock
ollama.service) is put back as it was when a later plan no longer needs it, never stopped or
disabled on provision's account. The first plan that manages a unit records the state it sees;
each manifest carries the record on (`prior_units`) while the unit stays managed, and the
backup of each apply keeps a copy. A unit without a record (provision created it, or managed it
before records were kept) is stopped and disabled when it is no longer wanted, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision.change.actions import ActionKind, Observed, ObservedUnit, Section
from provision.desired import DesiredUnit
from provision.paths import ENABLED_BY_US, ENABLED_STATES, RUNNING_STATES

PRIOR_KEY = "prior_units"  # in the manifest and in a backup's index


@dataclass(frozen=True)
class PriorState:
    name: str
    enabled: str  # `systemctl is-enabled`'s word before provision first managed the unit
    active: str | None  # its ActiveState then; None: not read (an offline root)

    @property
    def was_enabled(self) -> bool:
        return self.enabled in ENABLED_BY_US

    @property
    def was_running(self) -> bool | None:
        return None if self.active is None else self.active in RUNNING_STATES

    def describe(self) -> str:
        return f"{self.enabled} and {self.active or 'running state not read'}"


def recorded(manifest: Mapping[str, Any] | None) -> dict[str, PriorState]:
    """The states the manifest carries; an entry of the wrong shape is no record."""
    states = {}
    for entry in (manifest or {}).get(PRIOR_KEY, ()):
        if not isinstance(entry, Mapping):
            continue
        name, enabled, active = entry.get("name"), entry.get("enabled"), entry.get("active")
        if isinstance(name, str) and isinstance(enabled, str) and isinstance(active, str | None):
            states[name] = PriorState(name, enabled, active)
    return states


def prior_states(units: Sequence[DesiredUnit], observed: Observed) -> tuple[PriorState, ...]:
    """The record the next manifest carries, for the units this plan manages: the old record
    of a unit the last apply managed too, what is seen now of one it did not."""
    before = recorded(observed.manifest)
    managed = {str(u.get("name")) for u in (observed.manifest or {}).get("units", ())}
    states = []
    for unit in units:
        seen = observed.units.get(unit.name)
        if unit.name in managed:
            if unit.name in before:
                states.append(before[unit.name])
        elif seen is not None and seen.enabled != "not-found":
            states.append(PriorState(unit.name, seen.enabled, seen.active))
    return tuple(states)


def to_plain(states: Sequence[PriorState]) -> list[dict[str, str | None]]:
    return [{"name": s.name, "enabled": s.enabled, "active": s.active} for s in states]


def given_back(units: Sequence[DesiredUnit], observed: Observed) -> dict[str, PriorState]:
    """Units the last apply managed and this plan does not, which were enabled or running
    before provision first managed them (and are still installed): they are put back so."""
    wanted = {u.name for u in units}
    states = recorded(observed.manifest)
    back = {}
    for name, state in states.items():
        seen = observed.units.get(name)
        if name in wanted or seen is None or seen.enabled == "not-found":
            continue
        if state.was_enabled or state.was_running is not False:
            back[name] = state
    return back


# --- the plan's steps that give units back (provision.change.plan places them) ------------


def give_back(section: Section, state: PriorState, seen: ObservedUnit) -> None:
    """Stop and disable only what was neither (enabling and starting come later in the plan)."""
    before = f"before provision first managed it ({state.describe()})"
    if state.was_running is False and seen.active in RUNNING_STATES:
        section.act(ActionKind.STOP, state.name, f"no longer wanted; not running {before}")
    if not state.was_enabled and seen.enabled in ENABLED_BY_US:
        section.act(ActionKind.DISABLE, state.name, f"no longer wanted; not enabled {before}")
    else:
        section.noop(state.name, f"no longer wanted: left {seen.enabled}, as {before}")


def enable_given_back(back: Mapping[str, PriorState], observed: Observed) -> Section:
    section = Section(observed.live)
    for name, state in sorted(back.items()):
        seen = observed.units[name].enabled
        if state.was_enabled and seen not in ENABLED_STATES and seen != "masked":
            why = f"no longer wanted; enabled before provision first managed it, now {seen}"
            section.act(ActionKind.ENABLE, name, why)
    return section


def start_given_back(
    section: Section,
    back: Mapping[str, PriorState],
    observed: Observed,
    restarted: set[str],
) -> None:
    for name, state in sorted(back.items()):
        active = observed.units[name].active
        if not state.was_running or name in restarted or active in RUNNING_STATES:
            continue
        before = "no longer wanted; running before provision first managed it"
        if active is None:
            section.noop(name, f"offline: active state not read; {before}")
        else:
            section.act(ActionKind.RESTART, name, f"{before}, now {active}")
