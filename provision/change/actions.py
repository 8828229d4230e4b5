"""The plan's vocabulary: action kinds, actions, what the host was seen to hold, the plan itself.

Pure data, shared by plan.py (which builds a Plan), host.py (which observes) and apply.py
(which executes one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from provision.desired import DesiredFile
from provision.systemd import Override


class ActionKind(StrEnum):
    STOP = "stop"
    DISABLE = "disable"
    WRITE_FILE = "write-file"
    REMOVE_FILE = "remove-file"
    DAEMON_RELOAD = "daemon-reload"
    ENABLE = "enable"
    SET_POWER = "set-power"
    RESTART = "restart"
    RELOAD = "reload"
    PULL_MODEL = "pull-model"
    CREATE_MODEL = "create-model"
    REMOVE_MODEL = "remove-model"
    WRITE_MANIFEST = "write-manifest"
    NOOP = "no-op"


# These act on running processes or hardware: under an offline --root they are recorded, not run.
LIVE_ONLY = frozenset(
    {
        ActionKind.STOP,
        ActionKind.DAEMON_RELOAD,
        ActionKind.SET_POWER,
        ActionKind.RESTART,
        ActionKind.RELOAD,
        ActionKind.PULL_MODEL,
        ActionKind.CREATE_MODEL,
        ActionKind.REMOVE_MODEL,
    }
)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: str  # a path on the target host, a unit, a GPU UUID or a model name
    reason: str
    detail: str = ""  # e.g. "mode 0600 -> 0644", "350 W -> 300 W"
    skipped_offline: bool = False  # live-only step under an offline root: reported, not run
    refused: str = ""  # why apply must not do it as things stand
    forceable: bool = False  # --force lifts the refusal (a file provision does not own)
    file: DesiredFile | None = None  # what write-file writes
    watts: float | None = None  # what set-power sets
    # create-model: the Modelfile; set-power on an AMD card: its PCI device directory.
    source: str = ""
    # write-file over a file provision does not manage: its settings the new file lacks
    drops: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObservedFile:
    path: str
    kind: str  # "file", "missing", "symlink" (the path or a parent directory), "other"
    data: bytes = b""
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    note: str = ""  # e.g. which parent directory is a symlink


@dataclass(frozen=True)
class ObservedUnit:
    name: str
    enabled: str  # `systemctl is-enabled`'s word; "not-found" when there is no unit file
    active: str | None = None  # ActiveState, live only
    ran_ok: bool | None = None  # a oneshot ran and succeeded this boot (live only)
    needs_daemon_reload: bool = False


@dataclass(frozen=True)
class Observed:
    live: bool
    files: Mapping[str, ObservedFile]
    units: Mapping[str, ObservedUnit]
    power_w: Mapping[str, float] | None = None  # GPU UUID -> current limit; None: not read
    ollama_models: frozenset[str] | None = None  # None: not known (offline or unreachable)
    ollama_version: str | None = None
    manifest: Mapping[str, Any] | None = None
    # The stock ollama.service beside llama-server units: the devices its environment names
    # (CUDA_VISIBLE_DEVICES and the like; empty: none, so it sees every GPU); None: not read.
    stock_ollama_devices: tuple[str, ...] | None = None
    # unit -> every unit file and drop-in on the host that could configure it (also in files)
    unit_sources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class FileDiff:
    path: str
    text: str  # a unified diff; empty when only mode or owner differ
    # The whole texts (None: absent), for consumers that show diffs their own way (Ansible).
    before: str | None = None
    after: str | None = None


@dataclass(frozen=True)
class Plan:
    live: bool
    actions: tuple[Action, ...]  # in execution order, skipped-offline ones included
    noops: tuple[Action, ...]
    diffs: tuple[FileDiff, ...]
    manifest: dict[str, Any]  # the manifest apply writes last (without "last_apply")
    not_checked: tuple[str, ...] = ()  # offline: what could not be read, per category
    warnings: tuple[str, ...] = ()  # what the host holds that the plan does not change
    # Settings of ours that files provision does not manage override; apply needs --force.
    overrides: tuple[Override, ...] = ()

    @classmethod
    def empty(cls, live: bool = False) -> Plan:
        """No actions: recovery steps run one by one, and an in-sync rollback."""
        return cls(live=live, actions=(), noops=(), diffs=(), manifest={})

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if not a.skipped_offline)

    @property
    def in_sync(self) -> bool:
        return not self.changes

    def refusals(self, force: bool) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.refused and not (force and a.forceable))


def describe(action: Action) -> str:
    """One line for people: `restart ollama.service: inputs changed: ... (detail)`."""
    text = f"{action.kind} {action.target}: {action.reason}"
    text = f"{text} ({action.detail})" if action.detail else text
    if action.drops:
        text += "; drops what the old file set: " + ", ".join(action.drops)
    return text


@dataclass
class Section:
    """One part of a plan being built: the host's mode is set once, for every action in it."""

    live: bool  # a live host: LIVE_ONLY actions run; offline they are recorded as skipped
    actions: list[Action] = field(default_factory=list)
    noops: list[Action] = field(default_factory=list)
    diffs: list[FileDiff] = field(default_factory=list)

    def act(self, kind: ActionKind, target: str, reason: str, **kwargs: Any) -> None:
        offline = kind in LIVE_ONLY and not self.live
        self.actions.append(Action(kind, target, reason, skipped_offline=offline, **kwargs))

    def noop(self, target: str, reason: str) -> None:
        self.noops.append(Action(ActionKind.NOOP, target, reason))
