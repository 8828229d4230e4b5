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


@cli.command()
@click.argument("model")
@click.option("--ctx", type=int, default=8192, show_default=True, help="Context per request.")
@click.option("--parallel", type=int, default=1, show_default=True, help="Concurrent requests.")
@click.option(
    "--kv-type", type=click.Choice(["f16", "q8_0", "q4_0"]), default="f16", show_default=True
)
@click.option(
    "--runtime",
    type=click.Choice(["ollama", "llama-server"]),
    default="ollama",
    show_default=True,
)
@rig_options
@json_option
def fit(
    model: str,
    ctx: int,
    parallel: int,
    kv_type: str,
    runtime: str,
    rig_file: Path | None,
    root: Path,
    as_json: bool,
) -> None:
    """Say whether MODEL fits this rig: one GPU, a split, partial offload, or not at all.

    MODEL is a .gguf path, an installed Ollama model (llama3.3:70b) or a catalog name.
    """
    import os

    from provision.errors import InputError
    from provision.estimate import KvType, RunSettings, Runtime
    from provision.fit import fit_model
    from provision.fit_report import fit_text, fit_to_plain
    from provision.models import resolve
    from provision.place import is_legacy_ollama

    for name, value in (("--ctx", ctx), ("--parallel", parallel)):
        if value <= 0:
            raise InputError(f"{name} must be a positive number of tokens/requests, got {value}")
    rig = _read_rig(rig_file)
    spec = resolve(model, os.environ)
    settings = RunSettings(
        ctx_tokens=ctx, parallel=parallel, kv_type=KvType(kv_type), runtime=Runtime(runtime)
    )
    legacy = runtime == "ollama" and is_legacy_ollama(rig.host.runtimes.get("ollama"))
    result = fit_model(rig, spec, settings, legacy)
    if as_json:
        click.echo(json.dumps(fit_to_plain(result), indent=2))
    else:
        click.echo(fit_text(result))
    if not spec.kv_known:
        raise InputError(
            f"{model}: architecture '{spec.architecture}' is not modelled: the weights are "
            "estimated from its tensors, the KV cache is unknown",
            hint="treat the verdict as a lower bound, or measure a real load",
        )


def profile_option(func: F) -> F:
    return click.option(
        "--profile",
        "profile_ref",
        metavar="NAME|FILE",
        help="A bundled profile name or a profile file (default: ollama-auto).",
    )(func)


@cli.command()
@rig_options
@profile_option
@json_option
def plan(rig_file: Path | None, root: Path, profile_ref: str | None, as_json: bool) -> None:
    """Decide where each model runs, with reasons, and list the files it would write."""
    import os

    from provision.pipeline import desired_state
    from provision.plan_report import plan_text, plan_to_plain

    placement, desired = desired_state(_read_rig(rig_file), profile_ref, os.environ)
    if as_json:
        click.echo(json.dumps(plan_to_plain(placement, desired), indent=2))
    else:
        click.echo(plan_text(placement, desired))


@cli.command()
def models() -> None:
    """List the bundled catalog of Ollama library models usable before a pull."""
    from provision import catalog

    for name in catalog.names():
        quants = ", ".join(v.quant for v in catalog.variants(name))
        click.echo(f"{name:<22} {quants}")


def main() -> None:
    try:
        cli(prog_name="provision")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(int(ExitCode.HOST_ERROR))


from provision import cli_change, cli_verify  # noqa: E402,F401
