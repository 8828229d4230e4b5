"""What the commands share: their common options, reading the rig, and loading a desired state.

Imports no command module, so every command module can import this one. The rig, pipeline and
typed-load modules are imported inside the functions that use them (start-up speed: `probe
--rig` and `diff --desired-json` must not pay for placement and rendering).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from provision.cli import envelope
from provision.desired import DesiredState, DesiredUnit
from provision.documents import load_json, read_document
from provision.errors import InputError

if TYPE_CHECKING:
    from provision.hardware.rig import Rig

F = TypeVar("F", bound=Callable[..., Any])


# ParamType is generic only in recent click, at type-check time: subscripted there only.
class Seconds(click.ParamType):  # type: ignore[type-arg]
    """A duration in seconds: finite, 0 to a day. click's FloatRange lets `nan` through,
    and a lock wait of nan never ends."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not 0 <= seconds <= 86400:  # False for nan
            self.fail(f"{value!r} is not between 0 and 86400 seconds", param, ctx)
        return seconds


SECONDS = Seconds()


def rig_options(func: F) -> F:
    """`--rig`, `--sysfs` and `--root`."""
    func = click.option(
        "--sysfs",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("/sys"),
        show_default=True,
        help="Read AMD GPUs from this tree as /sys; the power unit writes caps below it.",
    )(func)
    func = click.option(
        "--root",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("/"),
        show_default=True,
        help="Operate on this filesystem tree instead of /.",
    )(func)
    return click.option(
        "--rig",
        "rig_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Read this recorded snapshot instead of probing the GPUs.",
    )(func)


def json_option(func: F) -> F:
    """`--json`: one document on stdout (docs/JSON.md), errors included."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        callback=envelope.requested,
        help="Print one JSON document (docs/JSON.md), errors included.",
    )(func)


def profile_option(func: F) -> F:
    """`--profile` and `--allow-partial`, for the commands that place a profile's models."""
    func = click.option(
        "--allow-partial",
        is_flag=True,
        help="Go on when a model cannot be placed: serve the others (it is left out).",
    )(func)
    return click.option(
        "--profile",
        "profile_ref",
        metavar="NAME|FILE",
        help="A bundled profile name or a profile file (default: ollama-auto).",
    )(func)


def desired_options(func: F) -> F:
    func = click.option("-v", "--verbose", is_flag=True, help="Also list the no-ops and why.")(func)
    func = click.option(
        "--desired-json",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        hidden=True,  # testing/automation aid: a DesiredState as JSON instead of rendering
    )(func)
    return profile_option(func)


def read_rig(rig_file: Path | None, sysfs: Path = Path("/sys")) -> Rig:
    """The recorded snapshot, or a live probe (NVML, and `sysfs` for AMD cards)."""
    if rig_file is not None:
        from provision.hardware.rig import load_rig  # lazy: start-up speed (yaml)

        return load_rig(rig_file)
    # lazy: start-up speed (a --rig command never loads the probe)
    from provision.hardware.probe import probe_box
    from provision.hardware.sysfs import Sysfs

    return probe_box(Sysfs(sysfs))


def load_desired(
    rig_file: Path | None,
    sysfs: Path,
    profile_ref: str | None,
    desired_json: Path | None,
    allow_partial: bool = False,
    root: Path | None = None,
    ollama_store: str | None = None,
) -> tuple[DesiredState, tuple[str, ...]]:
    """The desired state for the tree at `root` and the plan's warnings (none for a desired
    state read as JSON). The files the units will load must be there (diff, apply).
    `ollama_store`: the model store the target's own ollama.service sets, for replicas."""
    if desired_json is not None:
        return desired_from_json(desired_json), ()
    from provision.pipeline import desired_state  # lazy: the engine alone needs no placement

    rig = read_rig(rig_file, sysfs)
    # Absolute: the power unit runs from / and the manifest must name the same place.
    sysfs_root = os.path.abspath(sysfs)
    placement, desired = desired_state(
        rig,
        profile_ref,
        os.environ,
        allow_partial,
        sysfs_root,
        root,
        files_must_exist=True,
        ollama_store=ollama_store,
    )
    return desired, placement.warnings


def desired_to_json(state: DesiredState) -> str:
    from provision.typed_load import to_plain  # lazy: start-up speed

    return json.dumps(to_plain(state), indent=2)


def desired_from_json(path: Path) -> DesiredState:
    from provision.typed_load import from_plain  # lazy: start-up speed

    try:
        data = load_json(read_document(path))
        units = data.get("units", []) if isinstance(data, dict) else []
        # from_plain reads tuples as homogeneous lists: `listen` ([host, port]) is done here.
        listens = [u.pop("listen", None) if isinstance(u, dict) else None for u in units]
        state = from_plain(DesiredState, data)
        fixed = tuple(
            _with_listen(u, listen) for u, listen in zip(state.units, listens, strict=True)
        )
    except (OSError, ValueError, AttributeError) as exc:  # FieldError, DocumentError: ValueError
        raise InputError(f"{path}: not a desired state: {exc}") from None
    return DesiredState(**{**vars(state), "units": fixed})


def _with_listen(unit: DesiredUnit, listen: object) -> DesiredUnit:
    if listen is None:
        return unit
    ok = isinstance(listen, list) and len(listen) == 2
    if not (ok and isinstance(listen[0], str) and type(listen[1]) is int):  # type: ignore[index]
        raise ValueError(f"units: {unit.name}: listen must be [host, port], got {listen!r}")
    return DesiredUnit(**{**vars(unit), "listen": (listen[0], listen[1])})  # type: ignore[index]
