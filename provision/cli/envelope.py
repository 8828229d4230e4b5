"""The one shape of every `--json` document (docs/JSON.md), and how it reaches stdout.

Every document is an object that opens with the envelope: `schema` (the version of this
command's document), `command`, `warnings` (the text output's `warning:` lines) and `errors`
(`{message, hint, exit_code}`; empty when the command did its job). A command hands its body to
`emit`; the group (`provision.cli.main._Group.invoke`) prints the document once the command has
ended, with the error that ended it, so that stdout carries exactly one document whether the
command succeeded, stopped after printing (diff refusing a target, fit with an unknown KV
cache) or stopped before (a missing --rig). The schemas are provision/data/json-schema/.

`error_to_plain`, `envelope` and `dumps` are pure. The rest is not: a run's document is built in
click's `Context.meta` (shared by the group's context and the command's) and read once, at the
end of that run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import click

from provision.cli.terminal import capped
from provision.errors import ProvisionError

# The version of each command's document: bumped only by a change that breaks a reader (a
# field removed, renamed or retyped); new fields keep it. `probe` prints the rig snapshot, so
# its version is the snapshot's (hardware/rig.py SCHEMA_VERSION, checked by a test).
SCHEMA_VERSIONS = {
    "probe": 2,
    "fit": 1,
    "models": 1,
    "plan": 1,
    "diff": 1,
    "apply": 1,
    "rollback": 1,
    "verify": 1,
}
# A document for a run click could not tie to a command (`provision nope --json`).
UNKNOWN_COMMAND_SCHEMA = 1
ENVELOPE_KEYS = ("schema", "command", "warnings", "errors")

_META_KEY = "provision.json"


@dataclass
class _Pending:
    """What one `--json` run has to say so far (a builder: lives for one run)."""

    command: str
    body: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def error_to_plain(message: str, hint: str | None, exit_code: int, **extra: Any) -> dict[str, Any]:
    """The `error` object: what `error:` and `hint:` lines say, and the exit status it means."""
    shown = capped(message), capped(hint) if hint else None
    return {"message": shown[0], "hint": shown[1], "exit_code": exit_code, **extra}


def envelope(
    command: str | None,
    body: dict[str, Any] | None,
    warnings: Iterable[str] = (),
    errors: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The document: the envelope first, then the command's own fields."""
    schema = SCHEMA_VERSIONS.get(command or "", UNKNOWN_COMMAND_SCHEMA)
    document: dict[str, Any] = {
        "schema": schema,
        "command": command,
        "warnings": list(warnings),
        "errors": list(errors),
    }
    for key, value in (body or {}).items():
        assert key not in ENVELOPE_KEYS or document[key] == value, f"body sets {key}"
        document.setdefault(key, value)
    return document


def dumps(document: dict[str, Any]) -> str:
    # ensure_ascii (the default): control characters from input leave as \u escapes, so a
    # document shown on a terminal cannot carry an escape sequence.
    return json.dumps(document, indent=2)


# --- one run -----------------------------------------------------------------------------------


def requested(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """The `--json` option's callback: from here on, this run answers with a document."""
    if value:
        ctx.meta[_META_KEY] = _Pending(command=ctx.info_name or "")
    return value


def _pending() -> _Pending:
    pending = click.get_current_context().meta.get(_META_KEY)
    assert isinstance(pending, _Pending), "emit() without --json"
    return pending


def emit(body: dict[str, Any], warnings: Iterable[str] = ()) -> None:
    """The command's document (printed by the group when the command ends)."""
    pending = _pending()
    pending.body = body
    pending.warnings += list(warnings)


def warn(warnings: Iterable[str]) -> None:
    """Warnings known before the body (apply's, printed before it asks): they are in the
    document even when an error ends the run."""
    _pending().warnings.extend(warnings)


def add_error(error: dict[str, Any]) -> None:
    """An error the command reports and goes on past (verify: a host it cannot reach)."""
    _pending().errors.append(error)


def finish(ctx: click.Context, error: ProvisionError | None) -> str | None:
    """The text of this run's document, with the error that ended it; None without --json."""
    pending = ctx.meta.pop(_META_KEY, None)
    if not isinstance(pending, _Pending):
        return None
    errors = list(pending.errors)
    if error is not None:
        errors.append(error_to_plain(error.message, error.hint, int(error.exit_code)))
    return dumps(envelope(pending.command, pending.body, pending.warnings, errors))
