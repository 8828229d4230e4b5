"""The `provision` command: the group, the error mapping and `main()`.

Each command lives in the module of its family (probe, inspect, change, verify) and is loaded
only when it runs: `provision probe --rig` must not pay for placement, pytest (verify) or the
change engine, nor `provision verify` for placement. That is click's documented lazy-loading
pattern; the other deferred imports say what they save on their line.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, NoReturn

import click

from provision import __version__
from provision.cli import envelope
from provision.cli.terminal import say
from provision.errors import ExitCode, ProvisionError

# command name -> (module, function): in the order `provision --help` lists them.
COMMANDS = {
    "probe": ("provision.cli.probe", "probe"),
    "fit": ("provision.cli.inspect", "fit"),
    "models": ("provision.cli.inspect", "models"),
    "plan": ("provision.cli.inspect", "plan"),
    "diff": ("provision.cli.change", "diff"),
    "apply": ("provision.cli.change", "apply"),
    "rollback": ("provision.cli.change", "rollback"),
    "verify": ("provision.cli.verify", "verify"),
}


class _Group(click.Group):
    """Loads commands on demand; expected errors become `error:` / `hint:` lines and their exit
    code, and `--debug` re-raises them. Under `--json` it prints the command's document when
    the command ends, with the error that ended it (provision.cli.envelope)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, name = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command), f"{module}.{name} is not a click command"
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
        except click.exceptions.Exit:  # diff and verify exit 1 with their document
            _print_document(ctx, None)
            raise
        except ProvisionError as exc:
            if ctx.params.get("debug"):
                raise
            say("error", exc.message)
            if exc.hint:
                say("hint", exc.hint)
            _print_document(ctx, exc)
            ctx.exit(int(exc.exit_code))
        _print_document(ctx, None)
        return result


def _print_document(ctx: click.Context, error: ProvisionError | None) -> None:
    document = envelope.finish(ctx, error)
    if document is not None:
        click.echo(document)


def _json_document(message: str, hint: str | None, status: int) -> None:
    """Under `--json`, a run that click stopped (a usage error, a declined confirmation, Ctrl-C)
    still answers with a document. The option's callback may not have run yet, so the command
    line is read as given: `--json` before any `--`, the first word that names a command."""
    args = sys.argv[1:]
    options = args[: args.index("--")] if "--" in args else args
    if "--json" not in options:
        return
    command = next((a for a in options if a in COMMANDS), None)
    error = envelope.error_to_plain(message, hint, status)
    click.echo(envelope.dumps(envelope.envelope(command, None, errors=[error])))


def _click_error(message: str, hint: str | None, status: int) -> NoReturn:
    say("error", message)
    if hint:
        say("hint", hint)
    _json_document(message, hint, status)
    sys.exit(status)


def _interrupted() -> NoReturn:
    click.echo("interrupted", err=True)
    _json_document("interrupted", None, int(ExitCode.HOST_ERROR))
    sys.exit(int(ExitCode.HOST_ERROR))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show a traceback for expected errors too.")
@click.version_option(__version__, prog_name="provision")
def cli(debug: bool) -> None:
    """Provision a multi-GPU Linux box as a local-LLM inference host."""


def main() -> None:
    """Run the command; click's own errors (usage, a bad option value) print the same `error:`
    and `hint:` lines as ours, with click's exit status (2 for usage)."""
    try:
        status = cli.main(prog_name="provision", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "provision"
        _click_error(exc.format_message(), f"'{where} --help' lists the options", exc.exit_code)
    except click.ClickException as exc:
        _click_error(exc.format_message(), None, exc.exit_code)
    except click.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            _interrupted()
        click.echo("aborted: nothing was changed", err=True)
        _json_document("aborted: nothing was changed", None, 1)
        sys.exit(1)
    except KeyboardInterrupt:
        _interrupted()
    sys.exit(status if isinstance(status, int) else 0)
