"""systemd's conventions: unit-file syntax, the environment it gives a service, drop-in order.

Pure. Written from systemd.syntax(7), systemd.exec(5) and systemd.unit(5) ("Specifiers", and the
drop-in rules in its "Description"); the inverse of provision.render.filters. Read by the change
engine (which settings of ours another file overrides) and by verify (what a service must see).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from provision.paths import UNIT_DIRS, template_of


@dataclass(frozen=True, kw_only=True)
class Override:
    """A setting a file provision writes gives a unit, which a file it does not manage takes
    away (a later drop-in, an environment file, a unit file that hides ours)."""

    unit: str
    key: str  # an environment variable (OLLAMA_HOST) or a [Service] setting ("User=")
    ours: str
    theirs: str | None  # None: unset there (an empty `Environment=` resets every variable)
    path: str  # the file that does it

    def describe(self) -> str:
        theirs = "unsets it" if self.theirs is None else f"sets {self.theirs!r}"
        return f"{self.unit}: {self.key} {theirs} in {self.path} (provision sets {self.ours!r})"


@dataclass(frozen=True)
class Setting:
    value: str
    source: str  # the unit file, drop-in or environment file that set it last


def expected_environment(
    unit: str, texts: Sequence[str], read_env_file: Callable[[str], str | None]
) -> dict[str, str]:
    """What systemd gives the unit's processes from these unit files, in the order systemd
    reads them. `read_env_file` returns a file's text, or None for one whose contents are not
    known."""
    sources = [(f"#{n}", text) for n, text in enumerate(texts)]
    return {k: s.value for k, s in sourced_environment(unit, sources, read_env_file).items()}


def sourced_environment(
    unit: str,
    sources: Sequence[tuple[str, str]],
    read_env_file: Callable[[str], str | None],
) -> dict[str, Setting]:
    """The environment of (path, text) unit files in systemd's order, each variable with the
    file that set it last: `Environment=` pairs (an empty one resets them), then the
    `EnvironmentFile=`s, which override them whichever file named them (systemd.exec(5))."""
    env: dict[str, Setting] = {}
    env_files: list[str] = []
    for path, text in sources:
        for key, value in service_settings(text):
            value = expand_specifiers(value, unit)
            if key == "Environment":
                words = split_words(value)
                env = {} if not words else env
                pairs = (_assignment(w) for w in words if "=" in w)
                env.update((k, Setting(v, path)) for k, v in pairs)
            elif key == "EnvironmentFile":
                env_files = [] if not value.strip() else [*env_files, value.strip()]
    for name in env_files:
        env_path = name.removeprefix("-")
        contents = read_env_file(env_path)
        if contents is not None:
            env.update((k, Setting(v, env_path)) for k, v in parse_env_file(contents).items())
    return env


def environment_files(unit: str, text: str) -> list[str]:
    """The files a unit file's `EnvironmentFile=` lines name (without the `-` prefix)."""
    return [
        expand_specifiers(value.strip(), unit).removeprefix("-")
        for key, value in service_settings(text)
        if key == "EnvironmentFile" and value.strip()
    ]


def last_service_settings(
    sources: Sequence[tuple[str, str]], keys: Iterable[str]
) -> dict[str, Setting]:
    """For each of `keys` (single-valued [Service] settings), the assignment that wins: the
    last one; an empty assignment resets (`ExecStart=` before a new command line)."""
    wanted = set(keys)
    found: dict[str, Setting] = {}
    for path, text in sources:
        for key, value in service_settings(text):
            if key not in wanted:
                continue
            if value:
                found[key] = Setting(value, path)
            else:
                found.pop(key, None)
    return found


# --- drop-ins --------------------------------------------------------------------------------
# systemd.unit(5), "Description": every `*.conf` of a unit's `.d/` directories in any unit
# directory applies; of two files with the same name the one in the directory of higher
# priority (/etc, /run, /usr/local/lib, /usr/lib) hides the other, and then all are applied in
# lexical order of their file names, whichever directory holds them; a later assignment wins.
# The directories for one unit are its own, its template's and those of its dash prefixes, most
# specific first (src/shared/dropin.c, unit_file_find_dirs, unit_file_find_dropin_paths); the
# unit type's own (`service.d/`) came in systemd 251.


def dropin_dirs(unit: str) -> tuple[str, ...]:
    """The `.d` directory names whose `*.conf` files apply to `unit`, most specific first:
    ollama@0.service -> ollama@0.service.d, ollama@.service.d, service.d."""
    names = [unit]
    template = template_of(unit)
    if template != unit:
        names.append(template)
    stem, _, unit_type = unit.rpartition(".")
    prefix, at, instance = stem.partition("@")
    parts = prefix.split("-")
    for k in range(len(parts) - 1, 0, -1):
        cut = "-".join(parts[:k])
        if not cut:
            break  # a leading dash ends the walk, as in systemd
        if at:
            names += [f"{cut}-@{instance}.{unit_type}", f"{cut}-@.{unit_type}"]
        else:
            names.append(f"{cut}-.{unit_type}")
    names.append(unit_type)
    return tuple(f"{name}.d" for name in dict.fromkeys(names))


def dropin_order(unit: str, paths: Iterable[str]) -> list[str]:
    """The drop-ins among `paths` that systemd applies to `unit`, in the order it applies them:
    one per file name (the higher-priority directory's), sorted by file name."""
    rank = {
        f"{directory}/{name}": (d, n)
        for d, directory in enumerate(UNIT_DIRS)
        for n, name in enumerate(dropin_dirs(unit))
    }
    chosen: dict[str, tuple[tuple[int, int], str]] = {}
    for path in paths:
        where, base = posixpath.split(path)
        if where not in rank or not base.endswith(".conf"):
            continue
        if base not in chosen or rank[where] < chosen[base][0]:
            chosen[base] = (rank[where], path)
    return [chosen[base][1] for base in sorted(chosen)]


def merge_order(unit: str, paths: Iterable[str]) -> list[str]:
    """The files among `paths` that systemd reads for `unit`, in its order: the unit file,
    then the drop-ins."""
    candidates = list(dict.fromkeys(paths))
    fragment = fragment_of(unit, candidates)
    return ([fragment] if fragment else []) + dropin_order(unit, candidates)


def fragment_of(unit: str, paths: Iterable[str]) -> str | None:
    """The unit file systemd loads for `unit` among `paths`: the unit's own name before its
    template's, in the first unit directory that has one (systemd.unit(5) "Unit File Load
    Path")."""
    present = set(paths)
    for name in dict.fromkeys([unit, template_of(unit)]):
        for directory in UNIT_DIRS:
            if f"{directory}/{name}" in present:
                return f"{directory}/{name}"
    return None


def _assignment(word: str) -> tuple[str, str]:
    key, _, value = word.partition("=")
    return key, value


def service_settings(text: str) -> Iterator[tuple[str, str]]:
    """The (key, value) assignments of a unit file's [Service] section, in order."""
    return ((key, value) for section, key, value in assignments(text) if section == "Service")


def assignments(text: str) -> Iterator[tuple[str, str, str]]:
    """(section, key, value) of every assignment of a unit file, in order."""
    section = ""
    for line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line:
            key, _, value = line.partition("=")
            yield section, key.strip(), value.strip()


def settings_of(text: str) -> dict[str, str]:
    """A unit file's settings by name, for people: `[Service] User` -> its last value, and
    each environment variable its `Environment=` lines set -> its value."""
    found: dict[str, str] = {}
    for section, key, value in assignments(text):
        if (section, key) == ("Service", "Environment"):
            found.update(_assignment(w) for w in split_words(value) if "=" in w)
        else:
            found[f"[{section}] {key}"] = value
    return found


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


# --- what other files take away --------------------------------------------------------------

# Single-valued [Service] settings a unit of ours sets, which a later assignment replaces.
# Environment variables are compared one by one.
SCALAR_SERVICE_SETTINGS = ("ExecStart", "User", "Group", "Type", "WorkingDirectory")


def overrides(
    unit: str, ours: Mapping[str, str], others: Mapping[str, str | None]
) -> list[Override]:
    """The settings files of ours (path -> text) give `unit` that other files on the host
    (path -> text; None: not readable) take away, as systemd merges them: the unit file, its
    drop-ins in order, environment files last. Paths that do not configure `unit` are ignored."""

    def text(path: str) -> str | None:
        return ours[path] if path in ours else others.get(path)

    # What our files alone would give the unit, against what all of them give it.
    mine = [(p, ours[p]) for p in merge_order(unit, ours)]
    if not mine:
        return []
    every = [(p, text(p) or "") for p in merge_order(unit, [*ours, *others])]
    wanted = sourced_environment(unit, mine, ours.get)
    seen = sourced_environment(unit, every, text)
    pairs = [(k, s, seen.get(k)) for k, s in wanted.items()]
    ours_set = last_service_settings(mine, SCALAR_SERVICE_SETTINGS)
    seen_set = last_service_settings(every, SCALAR_SERVICE_SETTINGS)
    pairs += [(f"{k}=", s, seen_set.get(k)) for k, s in ours_set.items()]
    found = []
    for key, want, have in pairs:
        if have is not None and have.value == want.value:
            continue
        path = have.source if have is not None else _unsetter(every, set(ours))
        theirs = None if have is None else have.value
        found.append(Override(unit=unit, key=key, ours=want.value, theirs=theirs, path=path))
    return found


def _unsetter(every: Sequence[tuple[str, str]], ours: set[str]) -> str:
    """The other file that unset a setting of ours: the last one with an empty `Environment=`
    or `EnvironmentFile=`, else the unit file that hides ours."""
    resets = [
        path
        for path, text in every
        if path not in ours
        and any(
            k in ("Environment", "EnvironmentFile") and not v for k, v in service_settings(text)
        )
    ]
    return resets[-1] if resets else every[0][0]
