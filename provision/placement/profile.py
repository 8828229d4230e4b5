"""Workload profiles: which runtime, which models at which context, listen address, power.

A profile is YAML, bundled (`profiles/NAME.yaml`) or a file, and may `extends:` another (the
child's mappings merge over the parent's, lists replace). Errors name the file, the line and the
field. Values that end up in unit files and Modelfiles are checked here so that none can carry a
newline or a control character into them (rendering then quotes what remains).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from provision.assets import asset_dir
from provision.documents import (
    DocumentError,
    check_yaml_depth,
    check_yaml_int,
    exists,
    read_document,
)
from provision.errors import InputError
from provision.models import catalog
from provision.models.estimate import KvType, Runtime
from provision.ollama import normalize_model
from provision.typed_load import FieldError, from_plain

DEFAULT_PROFILE = "ollama-auto"
# listen.port when the profile gives none: each runtime's own default, so that a llama-server
# profile never lands on Ollama's port (llama.cpp common/common.h: common_params::port).
DEFAULT_PORTS = {Runtime.OLLAMA: 11434, Runtime.LLAMA_SERVER: 8080}
_DURATION = re.compile(r"^(-1|0|(\d+(\.\d+)?(ns|us|ms|s|m|h))+)$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9._-]+)?$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LAST_PART = re.compile(r"(\.[^.\[\]]+|\[\d+\]|^[^.\[\]]+)$")  # models[1].gpus -> models[1]


@dataclass(frozen=True)
class ModelEntry:
    ref: str
    ctx: int = 8192
    parallel: int = 1
    kv_type: KvType = KvType.F16
    keep_alive: str = "5m"
    num_batch: int | None = None
    gpus: tuple[int, ...] | None = None  # pin to these GPU indices
    name: str | None = None  # the model clients call; default `<ref>-provision`, whatever ctx
    path: str | None = None  # GGUF file the runtime loads (llama-server)
    port: int | None = None  # llama-server: this model's port (default: stable by name)
    mmproj: str | None = None  # the vision projector GGUF llama-server loads with --mmproj


@dataclass(frozen=True)
class Listen:
    address: str = "127.0.0.1"
    port: int = DEFAULT_PORTS[Runtime.OLLAMA]  # the runtime's own when not given (load_profile)


@dataclass(frozen=True)
class Power:
    per_gpu_w: float | None = None
    psu_w: float | None = None
    platform_w: float | None = None


@dataclass(frozen=True)
class _ProfileData:
    runtime: Runtime = Runtime.OLLAMA
    models: tuple[ModelEntry, ...] = ()
    replicas: int | str = 1  # a number of instances, or "auto": one per GPU that holds a model
    listen: Listen = field(default_factory=Listen)
    expose: bool = False
    flash_attention: bool = True
    power: Power | None = None
    description: str = ""


@dataclass(frozen=True)
class Profile(_ProfileData):
    name: str = ""
    source: str = ""  # the file it came from (the child's, when it extends another)
    # (field path, line) of every field the file itself sets: errors found after loading
    # (placement, model lookup) name the line too.
    lines: tuple[tuple[str, int], ...] = field(default=(), compare=False)

    @property
    def is_loopback(self) -> bool:
        return _is_loopback(self.listen.address)

    def where(self, path: str) -> str:
        """`source:line` of a field (`models[1].gpus`), or of the nearest enclosing one."""
        known = dict(self.lines)
        while path:
            if path in known:
                return f"{self.source}:{known[path]}"
            path = _LAST_PART.sub("", path)
        return self.source


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


# --- YAML with line numbers ---------------------------------------------------------------------


class _LineDict(dict[str, Any]):
    """A mapping that remembers the line of each key (1-based), for error messages."""

    lines: dict[str, int]
    line: int


class _LineLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # The composer recurses once per level: stop a deep document before Python does.
        self._depth += 1
        try:
            check_yaml_depth(self._depth, self.peek_event().start_mark.line + 1)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[object] = set()
        for key, _ in node.value:
            # YAML lets a later duplicate silently win; in a profile that loses a setting.
            if not isinstance(key, yaml.ScalarNode):
                continue  # a complex key: SafeLoader itself refuses it below
            value = key.value
            if value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{value}': remove one of the two", key.start_mark
                )
            seen.add(value)
        plain = super().construct_mapping(node, deep=True)
        mapping = _LineDict({str(key): value for key, value in plain.items()})
        mapping.line = node.start_mark.line + 1
        mapping.lines = {
            str(key.value): key.start_mark.line + 1
            for key, _ in node.value
            if hasattr(key, "value")
        }
        return mapping


def _construct_line_dict(loader: _LineLoader, node: yaml.MappingNode) -> Any:
    return loader.construct_mapping(node)


def _construct_int(loader: _LineLoader, node: yaml.ScalarNode) -> Any:
    check_yaml_int(node.value, node.start_mark.line + 1)  # before int() of 5,000 digits
    return loader.construct_yaml_int(node)


# SafeLoader's own map constructor copies into a plain dict; keep ours.
_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_line_dict)
_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _line_of(data: Any, path: str) -> int | None:
    """The line of the deepest mapping key on `path` (like `models[1].ctx`)."""
    line = getattr(data, "line", None)
    node = data
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(node, list) or index >= len(node):
                break
            node = node[index]
            line = getattr(node, "line", line)
        elif isinstance(node, dict):
            line = getattr(node, "lines", {}).get(part, line)
            if part not in node:
                break
            node = node[part]
        else:
            break
    return line


def _field_lines(data: Any, prefix: str = "") -> list[tuple[str, int]]:
    """(path, line) for every mapping key and list item below `data`, as `_line_of` reads them."""
    found: list[tuple[str, int]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            line = getattr(data, "lines", {}).get(key)
            if line is not None:
                found.append((path, line))
            found += _field_lines(value, path)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            line = getattr(item, "line", None)
            if line is not None:
                found.append((f"{prefix}[{i}]", line))
            found += _field_lines(item, f"{prefix}[{i}]")
    return found


# --- loading and merging ------------------------------------------------------------------------


def bundled_names() -> list[str]:
    folder = asset_dir("profiles")
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def _read(ref: str, relative_to: Path | None) -> tuple[str, str]:
    """(text, source) of a profile named by file path or bundled name."""
    candidates = [Path(ref)] if relative_to is None else [relative_to / ref, Path(ref)]
    for path in candidates:
        if path.suffix in (".yaml", ".yml") and exists(path):
            return _text(path), str(path)
    name = Path(ref).name.removesuffix(".yaml")
    bundled = asset_dir("profiles").joinpath(f"{name}.yaml")
    if exists(bundled) and bundled.is_file():
        return bundled.read_text(encoding="utf-8"), f"profiles/{name}.yaml"
    raise InputError(
        f"profile '{ref}' not found: not a file and not a bundled profile",
        hint=f"pass a YAML file, or one of: {', '.join(bundled_names())}",
    )


def _text(path: Path) -> str:
    try:
        data = read_document(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the profile: {exc.strerror}") from None
    except DocumentError as exc:
        raise InputError(f"{path}: {exc.problem}", hint="pass a profile YAML file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})",
            hint="save the profile as UTF-8",
        ) from None


def _parse(text: str, source: str) -> Any:
    try:
        data = yaml.load(text, Loader=_LineLoader)
    except DocumentError as exc:
        where = f"{source}:{exc.line}" if exc.line else source
        raise InputError(
            f"{where}: {exc.problem}", hint="fix that line; see profiles/ for working examples"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise InputError(
            f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}",
            hint="check indentation and quoting",
        ) from None
    if data is None:
        data = _LineDict()
        data.line, data.lines = 1, {}
    if not isinstance(data, dict):
        raise InputError(
            f"{source}:1: a profile must be a mapping of fields",
            hint="see profiles/ollama-auto.yaml for an example",
        )
    return data


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = dict(parent)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(parent.get(key), dict):
            merged[key] = _merge(parent[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_extends(data: dict[str, Any], source: str, seen: tuple[str, ...]) -> dict[str, Any]:
    parent_ref = data.get("extends")
    if parent_ref is None:
        return data
    if not isinstance(parent_ref, str):
        raise _error(source, data, "extends", "expected a profile name or file")
    if parent_ref in seen:
        raise _error(source, data, "extends", f"circular: {' -> '.join((*seen, parent_ref))}")
    here = Path(source).parent if exists(Path(source)) else None
    try:
        text, parent_source = _read(parent_ref, here)
    except InputError as exc:  # name the file and line that asked for it
        raise _error(source, data, "extends", exc.message, exc.hint) from None
    parent = _resolve_extends(
        _absolute_model_paths(_parse(text, parent_source), parent_source),
        parent_source,
        (*seen, parent_ref),
    )
    child = {k: v for k, v in data.items() if k != "extends"}
    return _merge({k: v for k, v in parent.items() if k != "extends"}, child)


def _absolute_model_paths(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A model's relative `.gguf` ref, `path:` or `mmproj:` is relative to the profile file that
    names it, not to wherever the command runs: made absolute here, so units name the file the
    plan measured. (Bundled profiles name no files.)"""
    models = data.get("models")
    if not Path(source).is_file() or not isinstance(models, list):
        return data
    folder = Path(source).parent.absolute()
    for entry in models:
        if not isinstance(entry, dict):
            continue
        for key in ("ref", "path", "mmproj"):
            value = entry.get(key)
            if not isinstance(value, str) or not value or value.startswith("/"):
                continue
            if key != "ref" or value.endswith(".gguf"):
                entry[key] = os.path.normpath(folder / value)
    return data


def _error(source: str, data: Any, path: str, problem: str, hint: str | None = None) -> InputError:
    line = _line_of(data, path)
    where = f"{source}:{line}" if line else source
    return InputError(
        f"{where}: field '{path}': {problem}",
        hint=hint or "fix the field; see profiles/ for working examples",
    )


def load_profile(ref: str | None) -> Profile:
    """Load a bundled profile by name or a profile file, resolve `extends`, validate."""
    text, source = _read(ref or DEFAULT_PROFILE, None)
    raw = _absolute_model_paths(_parse(text, source), source)
    merged = _resolve_extends(raw, source, (ref or DEFAULT_PROFILE,))
    try:
        data = from_plain(_ProfileData, merged)
    except FieldError as exc:
        raise _error(source, raw, exc.path, exc.problem) from None
    name = Path(source).name.removesuffix(".yaml")
    fields = {f: getattr(data, f) for f in data.__dataclass_fields__}
    if "port" not in (merged.get("listen") or {}):
        fields["listen"] = replace(data.listen, port=DEFAULT_PORTS[data.runtime])
    profile = Profile(**fields, name=name, source=source, lines=tuple(_field_lines(raw)))
    problem = first_problem(profile)
    if problem is not None:
        path, message, hint = problem
        raise _error(source, raw, path, message, hint)
    return profile


# --- checks the types cannot express ------------------------------------------------------------


def first_problem(profile: Profile) -> tuple[str, str, str | None] | None:
    """(field path, problem, hint) for the first invalid value, or None."""
    checks = [
        _check_top(profile),
        *(_check_model(m, i) for i, m in enumerate(profile.models)),
        _check_ports(profile),
        _check_repeats(profile.models),
        _check_power(profile.power),
    ]
    return next((c for c in checks if c is not None), None)


def _check_text(path: str, value: str | None) -> tuple[str, str, str | None] | None:
    if value is not None and _CONTROL.search(value):
        return (
            path,
            "contains a newline or control character, which would add a line to a "
            "rendered unit or Modelfile",
            "remove it: every value must be one plain line",
        )
    return None


def _check_top(p: Profile) -> tuple[str, str, str | None] | None:
    if not p.models:
        return ("models", "at least one model is needed", "add `models: [{ref: llama3.1:8b}]`")
    if isinstance(p.replicas, str) and p.replicas != "auto":
        return ("replicas", f"expected a number or 'auto', got {p.replicas!r}", None)
    if isinstance(p.replicas, int) and p.replicas < 1:
        return ("replicas", f"must be at least 1, got {p.replicas}", None)
    address = p.listen.address
    problem = _check_text("listen.address", address)
    if problem:
        return problem
    if not (_HOSTNAME.match(address) or _is_ip(address)):
        return ("listen.address", f"not an IP address or host name: {address!r}", None)
    if not 1 <= p.listen.port <= 65535:
        return ("listen.port", f"must be 1-65535, got {p.listen.port}", None)
    if not p.is_loopback and not p.expose:
        return (
            "listen.address",
            f"{address} is not a loopback address",
            "set `expose: true` to serve beyond this host (the API has no authentication)",
        )
    return None


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _check_model(m: ModelEntry, i: int) -> tuple[str, str, str | None] | None:
    at = f"models[{i}]"
    for key in ("ref", "keep_alive", "name", "path"):
        problem = _check_text(f"{at}.{key}", getattr(m, key))
        if problem:
            return problem
    if not m.ref.strip() or any(c.isspace() for c in m.ref):
        return (f"{at}.ref", f"must be one word (a name, tag or path), got {m.ref!r}", None)
    for key in ("ctx", "parallel", "num_batch"):
        value = getattr(m, key)
        if value is not None and value <= 0:
            return (f"{at}.{key}", f"must be positive, got {value}", None)
    if not _DURATION.match(m.keep_alive):
        return (f"{at}.keep_alive", f"not a duration like 5m, 1h or -1: {m.keep_alive!r}", None)
    if m.name is not None and not _MODEL_NAME.match(m.name):
        return (f"{at}.name", f"not a valid Ollama model name: {m.name!r}", None)
    for key, value in (("path", m.path), ("mmproj", m.mmproj)):
        if value is not None and (not value.startswith("/") or any(c.isspace() for c in value)):
            return (f"{at}.{key}", f"must be an absolute path without spaces, got {value!r}", None)
    if m.port is not None and not 1 <= m.port <= 65535:
        return (f"{at}.port", f"must be 1-65535, got {m.port}", None)
    if m.gpus is not None and (not m.gpus or min(m.gpus) < 0):
        return (f"{at}.gpus", "must list GPU indices (0, 1, ...)", None)
    return None


def _check_ports(p: Profile) -> tuple[str, str, str | None] | None:
    if p.runtime == Runtime.LLAMA_SERVER:
        return None
    for i, m in enumerate(p.models):
        if m.port is not None:
            return (
                f"models[{i}].port",
                "only a llama-server model listens on a port of its own",
                "remove it: Ollama serves every model on listen.port",
            )
    return None


def _model_key(ref: str) -> str:
    """One spelling per model: a catalog entry and quant, an Ollama name with its tag, a path."""
    if ref.endswith(".gguf"):
        return str(Path(ref))
    return catalog.canonical(ref) or normalize_model(ref)


def _check_repeats(models: Sequence[ModelEntry]) -> tuple[str, str, str | None] | None:
    """The same model twice (also under an alias) makes two Ollama models or two servers of one
    set of weights: refused, unless each entry names its own (e.g. two contexts on purpose)."""
    seen: dict[str, int] = {}
    for i, m in enumerate(models):
        key = _model_key(m.ref)
        if key in seen:
            j = seen[key]
            if m.name and models[j].name and m.name != models[j].name:
                continue
            return (
                f"models[{i}].ref",
                f"{m.ref} is the same model as models[{j}] ({models[j].ref})",
                "list it once; to serve it twice on purpose give each entry its own `name:`",
            )
        seen[key] = i
    return None


def _check_power(power: Power | None) -> tuple[str, str, str | None] | None:
    if power is None:
        return None
    if power.per_gpu_w is not None and power.psu_w is not None:
        return ("power", "set either per_gpu_w or psu_w (with platform_w), not both", None)
    if power.per_gpu_w is None and power.psu_w is None:
        return ("power", "set per_gpu_w, or psu_w with platform_w", None)
    if power.psu_w is not None and power.platform_w is None:
        return (
            "power.platform_w",
            "needed with psu_w: the watts the rest of the box draws",
            "e.g. platform_w: 250 for a desktop CPU, board, disks and fans",
        )
    for key in ("per_gpu_w", "psu_w", "platform_w"):
        value = getattr(power, key)
        if value is not None and value <= 0:
            return (f"power.{key}", f"must be positive, got {value}", None)
    if power.psu_w is not None and power.platform_w is not None and power.platform_w >= power.psu_w:
        return ("power.platform_w", "leaves no power for the GPUs (platform_w >= psu_w)", None)
    return None
