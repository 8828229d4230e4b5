"""Build frozen dataclasses from plain data (parsed YAML or JSON), naming the bad field.

Checks are strict on purpose: a snapshot or profile with a typo'd key, a string where a number
belongs or a bool where an integer belongs is rejected instead of silently misread.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


class FieldError(ValueError):
    """A value at `path` (like `gpus[1].pcie.width_max`) is missing or has the wrong type."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _convert(tp: Any, value: object, path: str) -> Any:
    _in_range(value, path)
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, path)
            except FieldError as exc:
                errors.append((option, exc))
        # A mapping meant for one dataclass option is best told what is wrong inside it
        # (`power.per_gpu_w: expected a number`), not that it is not a mapping.
        inner = [
            e for option, e in errors if _is_dataclass_type(option) and isinstance(value, dict)
        ]
        if len(inner) == 1:
            raise inner[0]
        raise FieldError(path, f"expected {_type_name(tp)}, got {_describe(value)}")
    if origin is tuple:
        if not isinstance(value, list):
            raise FieldError(path, f"expected a list, got {_describe(value)}")
        (item_type, _ellipsis) = get_args(tp)
        return tuple(_convert(item_type, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise FieldError(path, f"expected a mapping, got {_describe(value)}")
        key_type, value_type = get_args(tp)
        return {
            _convert(key_type, k, path): _convert(value_type, v, _join(path, str(k)))
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_plain(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise FieldError(path, f"expected {_type_name(tp)}, got {_describe(value)}") from None
    return _convert_scalar(tp, value, path)


def _in_range(value: object, path: str) -> None:
    """No field means NaN, infinity or a number past 64 bits: each would travel into
    arithmetic (watts, bytes, ports) and come out as nonsense or an overflow."""
    if isinstance(value, float) and not math.isfinite(value):
        raise FieldError(path, f"expected a finite number, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        digits = len(str(abs(value)))
        raise FieldError(path, f"expected a number below 2**63, got a {digits}-digit number")


def _is_dataclass_type(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def _convert_scalar(tp: Any, value: object, path: str) -> Any:
    # bool is a subclass of int in Python; YAML `true` must not pass as a GPU index.
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise FieldError(path, f"expected {_type_name(tp)}, got {_describe(value)}")
    return float(value) if tp is float else value  # type: ignore[arg-type]


@functools.cache
def _shape(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """A dataclass's resolved field types and fields: a snapshot has one Gpu per card, and
    resolving the string annotations each time was a third of loading an 8-GPU rig."""
    return get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def from_plain(cls: type[T], data: object, path: str = "") -> T:
    """Build `cls` (a dataclass) from `data`; every field must be present, no unknown keys."""
    if not isinstance(data, dict):
        raise FieldError(path, f"expected a mapping, got {_describe(data)}")
    hints, fields = _shape(cls)  # type: ignore[arg-type]  # a class is hashable
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise FieldError(
            _join(path, unknown[0]), f"unknown field (expected one of: {', '.join(fields)})"
        )
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        has_default = (
            field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING
        )
        if name not in data:
            if has_default:
                continue
            raise FieldError(_join(path, name), "missing (use null if the reading is unknown)")
        kwargs[name] = _convert(hints[name], data[name], _join(path, name))
    return cls(**kwargs)


def to_plain(obj: object) -> Any:
    """The inverse of `from_plain`: dataclasses to dicts (field order kept), tuples to lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
