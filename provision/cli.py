"""The `provision` command: the only place that prints or exits.

Heavy modules (pynvml, sh, jinja2, gguf) are imported inside the commands that need them so that
`provision probe --rig FILE` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from provision import __version__
from provision.errors import ExitCode, ProvisionError

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Expected errors become `error:` / `hint:` lines and their exit code; `--debug` re-raises."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProvisionError as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            ctx.exit(int(exc.exit_code))


def rig_options(func: F) -> F:
    """`--rig` and `--root`, which every command accepts (DESIGN.md §3)."""
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
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(func)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show a traceback for expected errors too.")
@click.version_option(__version__, prog_name="provision")
def cli(debug: bool) -> None:
    """Provision a multi-GPU Linux box as a local-LLM inference host."""


def _read_rig(rig_file: Path | None) -> Any:
    if rig_file is not None:
        from provision.rig import load_rig

        return load_rig(rig_file)
    from provision.probe.nvml import probe_rig

    return probe_rig()


@cli.command()
@rig_options
@json_option
@click.option(
    "--save",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the snapshot to FILE (.json for JSON, YAML otherwise).",
)
def probe(rig_file: Path | None, root: Path, as_json: bool, save: Path | None) -> None:
    """Read every GPU and the host, and classify the rig."""
    from provision.classify import classify
    from provision.errors import HostError
    from provision.rig import rig_to_plain, save_rig

    rig = _read_rig(rig_file)
    traits = classify(rig)
    if save is not None:
        try:
            save_rig(rig, save)
        except OSError as exc:
            raise HostError(f"{save}: cannot write snapshot: {exc.strerror}") from None
    if as_json:
        from provision.typed_load import to_plain

        document = rig_to_plain(rig)
        document["traits"] = to_plain(traits.traits)
        click.echo(json.dumps(document, indent=2))
    elif save is None:
        from provision.show import probe_report

        click.echo(probe_report(rig, traits))
    else:
        click.echo(f"saved {len(rig.gpus)} GPU(s) to {save}")


def main() -> None:
    try:
        cli(prog_name="provision")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(int(ExitCode.HOST_ERROR))
