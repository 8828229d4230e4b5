"""`provision probe`: read every GPU and the host (or a recorded snapshot), and classify the rig.

A module of its own so that `probe` loads only the hardware stage: no placement, no rendering.
"""

from __future__ import annotations

from pathlib import Path

import click

from provision.cli import envelope
from provision.cli.options import json_option, read_rig, rig_options
from provision.cli.report import probe_report
from provision.cli.terminal import echo
from provision.errors import HostError, InputError
from provision.hardware.classify import classify
from provision.hardware.rig import rig_to_plain, save_rig
from provision.typed_load import to_plain


@click.command()
@rig_options
@json_option
@click.option(
    "--save",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the snapshot to FILE (.json for JSON, YAML otherwise).",
)
@click.option(
    "--capture-sysfs",
    type=click.Path(file_okay=False, path_type=Path),
    help="Copy the sysfs files the AMD probe reads into DIR (a test fixture: --sysfs DIR).",
)
def probe(
    rig_file: Path | None,
    sysfs: Path,
    root: Path,
    as_json: bool,
    save: Path | None,
    capture_sysfs: Path | None,
) -> None:
    """Read every GPU and the host, and classify the rig."""
    if capture_sysfs is not None:
        _capture(sysfs, capture_sysfs, rig_file)
    rig = read_rig(rig_file, sysfs)
    traits = classify(rig)
    if save is not None:
        try:
            save_rig(rig, save)
        except OSError as exc:
            raise HostError(f"{save}: cannot write snapshot: {exc.strerror}") from None
    if as_json:
        # The snapshot itself (`--rig` reads this document back), with the derived traits.
        body = rig_to_plain(rig)
        body["traits"] = to_plain(traits.traits)
        envelope.emit(body, warnings=[t.reason for t in traits.warnings])
    elif save is None:
        echo(probe_report(rig, traits))
    else:
        echo(f"saved {len(rig.gpus)} GPU(s) to {save}")


def _capture(sysfs: Path, out: Path, rig_file: Path | None) -> None:
    # lazy: start-up speed (only a capture needs these here)
    from provision.hardware.amdgpu import probe_amd
    from provision.hardware.sysfs import Sysfs, capture

    if rig_file is not None:
        raise InputError("--capture-sysfs reads the live tree: it cannot be used with --rig")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--capture-sysfs {out}: not empty", hint="name a new directory")
    tree = Sysfs(sysfs)
    probe_amd(tree)
    try:
        copied = capture(tree, out)
    except OSError as exc:
        raise HostError(f"{out}: cannot write the capture: {exc.strerror}") from None
    echo(f"captured {copied} sysfs file(s) into {out} (replay: --sysfs {out})", err=True)
