"""The one way text reaches the terminal: every line the commands print goes through `echo`
(or `say`, for `error:` and `hint:` lines), which escapes control characters.

Model names, descriptions, paths, file contents in a diff and error messages all quote input.
A terminal acts on what it receives: an escape sequence from a profile or a foreign file could
recolour, retitle or hide lines, a carriage return overwrite one, a bidi override reorder one.
So each such character is shown as its Python escape (`\\x1b`), never sent; newline and tab stay.
The colours of a diff are added after escaping (cli/change.py), so they are the only ones.
"""

from __future__ import annotations

import re

import click

# C0 but newline and tab, DEL, C1, and the bidi embeddings, overrides and isolates.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# An error quotes what it was given (a path, a field's value): as much as a person reads.
MESSAGE_LIMIT = 2000


def printable(text: str) -> str:
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def echo(text: str = "", err: bool = False) -> None:
    click.echo(printable(text), err=err)


def capped(text: str) -> str:
    """An error's text as long as a person reads (the --json document's too)."""
    if len(text) > MESSAGE_LIMIT:
        return f"{text[:MESSAGE_LIMIT]}... ({len(text) - MESSAGE_LIMIT} more characters)"
    return text


def say(label: str, text: str) -> None:
    """One `error:` or `hint:` line on stderr, escaped and capped in length."""
    click.echo(f"{label}: {capped(printable(text))}", err=True)
