"""Reading the environment systemd gives a service: unit files, environment files, environ.

Pure parsers for the `env` checks of `provision verify`, written from systemd.syntax(7),
systemd.exec(5) and systemd.unit(5) "Specifiers"; the inverse of provision.render.filters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence


def expected_environment(
    unit: str, texts: Sequence[str], read_env_file: Callable[[str], str | None]
) -> dict[str, str]:
    """What systemd gives the unit's processes from these unit files: `Environment=` pairs,
    then the `EnvironmentFile=`s, which override them (systemd.exec(5)). `read_env_file`
    returns a file's text, or None for a file whose contents are not known."""
    env: dict[str, str] = {}
    env_files: list[str] = []
    for text in texts:
        for key, value in _service_settings(text):
            value = expand_specifiers(value, unit)
            if key == "Environment":
                words = split_words(value)
                env = {} if not words else env
                env.update(_assignment(w) for w in words if "=" in w)
            elif key == "EnvironmentFile":
                env_files = [] if not value.strip() else [*env_files, value.strip()]
    for path in env_files:
        contents = read_env_file(path.removeprefix("-"))
        if contents is not None:
            env.update(parse_env_file(contents))
    return env


def _assignment(word: str) -> tuple[str, str]:
    key, _, value = word.partition("=")
    return key, value


def _service_settings(text: str) -> Iterator[tuple[str, str]]:
    section = ""
    for line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            yield key.strip(), value.strip()


def _logical_lines(text: str) -> Iterator[str]:
    """Lines with comments dropped and backslash continuations joined (systemd.syntax(7))."""
    pending: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line[:1] in ("#", ";") or (not line and pending is None):
            continue
        if line.endswith("\\"):
            pending = (pending or "") + line[:-1] + " "
            continue
        yield (pending or "") + line
        pending = None
    if pending is not None:
        yield pending


def expand_specifiers(text: str, unit: str) -> str:
    """The specifiers a unit's environment can use (%i, %I, %n, %N, %p, %%); others stay."""
    stem = unit.rsplit(".", 1)[0]
    prefix, _, instance = stem.partition("@")
    table = {"%": "%", "n": unit, "N": stem, "p": prefix, "i": instance, "I": _unescape(instance)}
    return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), text)


def _unescape(name: str) -> str:
    """systemd-escape --unescape: `\\xHH` -> the byte, `-` -> `/`."""
    return re.sub(
        r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name.replace("-", "/")
    )


_C_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "s": " ", "a": "\a", "b": "\b", "f": "\f"}


def split_words(value: str) -> list[str]:
    """systemd's word splitting of a setting: whitespace separates words, single and double
    quotes group (anywhere in a word), C escapes are decoded."""
    words: list[str] = []
    word: list[str] | None = None
    quote = ""
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "x" and i + 3 < len(value):
                char, i = chr(int(value[i + 2 : i + 4], 16)), i + 2
            else:
                char = _C_ESCAPES.get(nxt, nxt)
            i += 2
            word = [*(word or []), char]
            continue
        i += 1
        if quote:
            if char == quote:
                quote = ""
            else:
                word = [*(word or []), char]
        elif char in "\"'":
            quote, word = char, word or []
        elif char in " \t":
            if word is not None:
                words.append("".join(word))
            word = None
        else:
            word = [*(word or []), char]
    if word is not None:
        words.append("".join(word))
    return words


def parse_env_file(text: str) -> dict[str, str]:
    """`KEY=value` lines of an `EnvironmentFile=` (systemd.exec(5)): `#`/`;` comments, double
    quotes with backslash escapes of `"` `\\` `` ` `` `$`, single quotes literal."""
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = _env_file_value(value.strip())
    return env


def _env_file_value(value: str) -> str:
    if value[:1] == "'":
        end = value.find("'", 1)
        return value[1:end] if end > 0 else value[1:]
    quoted = value[:1] == '"'
    out: list[str] = []
    i = 1 if quoted else 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append(nxt if (nxt in '"\\`$' or not quoted) else char + nxt)
            i += 2
            continue
        if quoted and char == '"':
            break
        out.append(char)
        i += 1
    return "".join(out)


def parse_environ(data: bytes) -> dict[str, str]:
    """/proc/PID/environ: NUL-separated `KEY=value` entries."""
    pairs = (entry.decode("utf-8", "replace") for entry in data.split(b"\0") if entry)
    return dict(_assignment(p) for p in pairs if "=" in p)


def environment_differences(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    problems = []
    for key, value in expected.items():
        if key not in actual:
            problems.append(f"{key} is not set (want {value!r})")
        elif actual[key] != value:
            problems.append(f"{key}={actual[key]!r}, want {value!r}")
    return problems
