"""Quoting filters for the templates: every value leaves through one of these. Pure.

Each format has its own rules; a value that cannot be represented safely (a newline or another
control character, which would start a new line and so a new directive) raises ValueError
naming the value, and `render` turns that into an InputError (exit 2). Profiles already refuse
such values at load time: this is the second line of defence, for values that come from
anywhere else (a rig snapshot, a future field).

References: systemd.syntax(7) and systemd.service(5) "Command lines" (specifiers `%`, quoting,
C escapes, `$` expansion), systemd.exec(5) `EnvironmentFile=` (shell-like double quotes with
backslash before `"` `\\` `` ` `` `$`), Ollama's parser/parser.go (a value runs to the end of
the line; surrounding double quotes are stripped without escape processing), nginx's
configuration syntax (a quoted string with `\\` escapes; `$` starts a variable).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from provision.paths import host_port

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Characters that need no quoting in an ExecStart= word (after % and $ are doubled).
_PLAIN_ARG = re.compile(r"^[A-Za-z0-9_@%+=:,./$-]+$")
_PLAIN_NGINX = re.compile(r"^[A-Za-z0-9_.:/\[\]-]+$")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.(service|target|socket)$")


def _one_line(value: object, what: str) -> str:
    text = str(value)
    if _CONTROL.search(text):
        raise ValueError(
            f"{what} {text!r} contains a newline or control character, which would add a line "
            "to the rendered file"
        )
    return text


def env_name(name: object) -> str:
    """An environment variable name: letters, digits and underscores, not starting with a digit."""
    text = _one_line(name, "environment variable name")
    if not _ENV_NAME.match(text):
        raise ValueError(f"environment variable name {text!r} is not a valid name")
    return text


def _backslash_quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def systemd_env(pair: Sequence[str]) -> str:
    """`("K", "V")` -> `"K=V"` for an `Environment=` line.

    systemd expands specifiers (`%`) in the whole value, then splits it into words, honouring
    double quotes and C escapes. So: double every `%`, escape backslash and double quote, and
    quote the assignment as one word. `$` is not expanded in Environment=.
    """
    key, value = pair
    text = _one_line(value, f"value of {env_name(key)}")
    return f'"{key}={_backslash_quote(text)}"'.replace("%", "%%")


def systemd_arg(word: object) -> str:
    """One word of an `ExecStart=` command line.

    Specifiers (`%`) are expanded first, then the line is split into words (double quotes and C
    escapes), then `$VAR` / `${VAR}` are expanded: double `%` and `$`, and quote any word with
    other characters than a plain path or flag has. A lone `;` would separate two commands.
    """
    text = _one_line(word, "command-line argument")
    escaped = text.replace("%", "%%").replace("$", "$$")
    if text == ";":
        return "\\;"
    if _PLAIN_ARG.match(text):
        return escaped
    return f'"{_backslash_quote(escaped)}"'


def unit_name(name: object) -> str:
    """A unit name in a dependency list (`Before=`, `After=`): the characters systemd allows."""
    text = _one_line(name, "unit name")
    if not _UNIT_NAME.match(text):
        raise ValueError(f"unit name {text!r} is not a valid systemd unit name")
    return text


def systemd_text(value: object) -> str:
    """Free text in a unit setting such as `Description=`: one line, `%` doubled, and no
    backslash at its end, where systemd would continue the line into the next setting."""
    text = _one_line(value, "unit text")
    if text.rstrip().endswith("\\"):
        raise ValueError(
            f"unit text {text!r} ends in a backslash, which would join the next line of the "
            "unit to it"
        )
    return text.replace("%", "%%")


def env_file_value(value: object) -> str:
    """The value of a `KEY=value` line in an `EnvironmentFile=`: always double-quoted.

    Inside double quotes systemd (like a shell) unescapes `\\"`, `\\\\`, `` \\` `` and `\\$` and
    keeps every other character; specifiers are not expanded in the file.
    """
    text = _one_line(value, "environment file value")
    escaped = re.sub(r'(["\\`$])', r"\\\1", text)
    return f'"{escaped}"'


def modelfile_value(value: object) -> str:
    """A Modelfile argument (`FROM x`, `PARAMETER num_ctx x`).

    Ollama takes the rest of the line, trims surrounding whitespace and strips one pair of
    surrounding double quotes (or triple quotes) without any escape processing, and keeps only
    the runes Go's strconv.IsPrint accepts (parser/parser.go, ParseFile): so a value must be
    one line, must not start with a quote, must not have surrounding whitespace and must be
    printable (Python's isprintable is the same rule: no Other or Separator but the ASCII
    space), or it would be read back differently.
    """
    text = _one_line(value, "Modelfile value")
    if not text or text != text.strip() or text.startswith('"') or not text.isprintable():
        raise ValueError(
            f"Modelfile value {text!r} would be read back differently by Ollama "
            "(empty, surrounding whitespace, a leading double quote, or a character it drops)"
        )
    return text


def nginx_value(value: object) -> str:
    """One nginx directive argument: plain when safe, else a double-quoted string.

    `$` always starts a variable in nginx, even inside quotes, and cannot be escaped portably:
    it is refused.
    """
    text = _one_line(value, "nginx value")
    if "$" in text:
        raise ValueError(f"nginx value {text!r} contains '$', which nginx reads as a variable")
    if _PLAIN_NGINX.match(text):
        return text
    return f'"{_backslash_quote(text)}"'


def watts(value: object) -> str:
    """A power limit for `nvidia-smi -pl`: whole watts, rounded down.

    nvidia-smi documents the limit in watts without saying it parses decimals; rounding down
    never exceeds the decided limit (a PSU budget stays a budget).
    """
    number = float(str(value))
    if not number > 0 or math.isinf(number):  # NaN, zero, negative or infinite
        raise ValueError(f"power limit {value!r} is not a positive number of watts")
    return str(max(math.floor(number), 1))


FILTERS = {
    "env_name": env_name,
    "systemd_env": systemd_env,
    "systemd_arg": systemd_arg,
    "systemd_text": systemd_text,
    "unit_name": unit_name,
    "env_file_value": env_file_value,
    "modelfile_value": modelfile_value,
    "nginx_value": nginx_value,
    "host_port": host_port,
    "watts": watts,
}
