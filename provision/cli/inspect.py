"""`provision fit`, `models` and `plan`: the commands that decide, and change nothing.

Each reads the rig (a recorded snapshot, or NVML) and prints text for people, or one JSON
document with `--json`.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from provision import ollama
from provision.cli import envelope
from provision.cli.options import json_option, profile_option, read_rig, rig_options
from provision.cli.report import (
    catalog_to_plain,
    fit_text,
    fit_to_plain,
    placement_text,
    placement_to_plain,
)
from provision.cli.terminal import echo
from provision.errors import InputError, ProfileFieldError
from provision.models import catalog
from provision.models.estimate import KvType, Runtime
from provision.models.refs import resolve
from provision.pipeline import desired_state
from provision.placement.fit import fit_model
from provision.placement.place import one_model_settings
from provision.placement.profile import ModelEntry


@click.command()
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
    sysfs: Path,
    root: Path,
    as_json: bool,
) -> None:
    """Say whether MODEL fits this rig: one GPU, a split, partial offload, or not at all.

    MODEL is a .gguf path, an installed Ollama model (llama3.3:70b) or a catalog name.
    """
    for name, value in (("--ctx", ctx), ("--parallel", parallel)):
        # llama.cpp counts both in 32 bits; a larger one overflowed the estimate's floats
        if not 0 < value < 2**32:
            digits = len(str(abs(value)))
            shown = str(value) if digits <= 20 else f"a {digits}-digit number"
            raise InputError(
                f"{name} must be a positive number of tokens/requests below 2**32, got {shown}"
            )
    rig = read_rig(rig_file, sysfs)
    spec = resolve(model, os.environ, root)
    entry = ModelEntry(ref=model, ctx=ctx, parallel=parallel, kv_type=KvType(kv_type))
    try:
        settings, warnings = one_model_settings(rig, entry, Runtime(runtime), spec)
    except ProfileFieldError as exc:  # the field is this command's option here
        raise InputError(f"--kv-type {kv_type}: {exc.problem}", hint=exc.hint) from None
    for warning in warnings:
        echo(f"warning: {warning}", err=True)
    legacy = runtime == "ollama" and ollama.is_legacy_ollama(rig.host.runtimes.get("ollama"))
    result = fit_model(rig, spec, settings, legacy)
    if as_json:
        envelope.emit(fit_to_plain(result), warnings=warnings)
    else:
        echo(fit_text(result))
    if not spec.kv_known:
        raise InputError(
            f"{model}: architecture '{spec.architecture}' is not modelled: the weights are "
            "estimated from its tensors, the KV cache is unknown",
            hint="treat the verdict as a lower bound, or measure a real load",
        )


@click.command()
@rig_options
@profile_option
@json_option
def plan(
    rig_file: Path | None,
    sysfs: Path,
    root: Path,
    profile_ref: str | None,
    allow_partial: bool,
    as_json: bool,
) -> None:
    """Decide where each model runs, with reasons, and list the files it would write."""
    rig = read_rig(rig_file, sysfs)
    # lazy: the host reader, for plan alone (fit and models do not load the change engine)
    from provision.change.host import Host
    from provision.change.observe import stock_ollama_store

    # The same store diff and apply render for replicas: the target's own ollama.service's.
    store = stock_ollama_store(Host.at(root))
    placement, desired = desired_state(
        rig,
        profile_ref,
        os.environ,
        allow_partial,
        os.path.abspath(sysfs),
        root,
        ollama_store=store,
    )
    if as_json:
        envelope.emit(placement_to_plain(placement, desired), warnings=placement.warnings)
    else:
        echo(placement_text(placement, desired))


@click.command()
@json_option
def models(as_json: bool) -> None:
    """List the bundled catalog of Ollama library models usable before a pull."""
    if as_json:
        envelope.emit(catalog_to_plain({n: catalog.variants(n) for n in catalog.names()}))
        return
    for name in catalog.names():
        quants = ", ".join(v.quant for v in catalog.variants(name))
        echo(f"{name:<22} {quants}")
