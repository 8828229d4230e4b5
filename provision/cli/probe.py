"""`provision probe`: read every GPU and the host (or a recorded snapshot), and classify the rig.

A module of its own so that `probe` loads only the hardware stage: no placement, no rendering.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from provision.cli.options import json_option, read_rig, rig_options
from provision.cli.report import probe_report
from provision.errors import HostError
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
def probe(rig_file: Path | None, root: Path, as_json: bool, save: Path | None) -> None:
    """Read every GPU and the host, and classify the rig."""
    rig = read_rig(rig_file)
    traits = classify(rig)
    if save is not None:
        try:
            save_rig(rig, save)
        except OSError as exc:
            raise HostError(f"{save}: cannot write snapshot: {exc.strerror}") from None
    if as_json:
        document = rig_to_plain(rig)
        document["traits"] = to_plain(traits.traits)
        click.echo(json.dumps(document, indent=2))
    elif save is None:
        click.echo(probe_report(rig, traits))
    else:
        click.echo(f"saved {len(rig.gpus)} GPU(s) to {save}")
