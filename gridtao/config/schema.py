"""Typed, validated configuration from plain mappings (parsed YAML) into frozen dataclasses.

Generic: the schema is the dataclasses themselves (field types and ``metadata`` ranges made with
:func:`rng`); nothing here knows gridtao's keys. Every error names the source, the key path and
the reason.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from gridtao.errors import GridtaoError

T = TypeVar("T")

#: No configuration string (a path, a topic prefix, a host) is longer than this.
MAX_STRING_CHARS = 4096


class ConfigError(GridtaoError):
    """A configuration problem; the message names the file, the key path and the reason."""


def rng(lo: float | None = None, hi: float | None = None) -> dict[str, float | None]:
    """Field metadata bounding a number to ``[lo, hi]`` (None: unbounded)."""
    return {"min": lo, "max": hi}


def fail(source: str, key: str, reason: str) -> typing.NoReturn:
    """Raise the :class:`ConfigError` for ``key`` of ``source``."""
    raise ConfigError(f"{source}: {key or '<top level>'}: {reason}")


def build(cls: type[T], data: object, source: str, key: str) -> T:
    """Validate ``data`` into dataclass ``cls``; ``key`` is the path of ``data`` in ``source``."""
    if not isinstance(data, Mapping):
        fail(source, key, f"expected a mapping, got {_type_name(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else str(name)
        f = fields.get(str(name))
        if f is None or f.metadata.get("internal"):
            known = ", ".join(n for n, fl in fields.items() if not fl.metadata.get("internal"))
            fail(source, sub, f"unknown key (known keys: {known})")
        kwargs[f.name] = _convert(hints[f.name], value, source, sub, f.metadata)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            fail(source, f"{key}.{name}" if key else name, "required key is missing")
    return cls(**kwargs)


def _convert(tp: Any, value: object, source: str, key: str, meta: Mapping[str, Any]) -> Any:
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, source, key, meta)
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, float) and str(value) in allowed:
            value = str(value)  # YAML reads an unquoted version like 1.2 as a number
        if value not in allowed:
            fail(source, key, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if not isinstance(value, list):
            fail(source, key, f"expected a list, got {_type_name(value)}")
        return tuple(
            _convert(item_tp, v, source, f"{key}[{i}]", {}) for i, v in enumerate(value)
        )
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, source, key)
    if tp is bool:
        if not isinstance(value, bool):
            fail(source, key, f"expected true or false, got {_type_name(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(source, key, f"expected an integer, got {_type_name(value)}")
        _check_range(_as_float(value, source, key), source, key, meta)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(source, key, f"expected a number, got {_type_name(value)}")
        number = _as_float(value, source, key)
        if not math.isfinite(number):
            fail(source, key, f"must be finite, got {value}")
        _check_range(number, source, key, meta)
        return number
    if tp is str:
        if not isinstance(value, str) or not value:
            fail(source, key, f"expected a non-empty string, got {_type_name(value)}")
        if len(value) > MAX_STRING_CHARS:
            fail(source, key, f"longer than {MAX_STRING_CHARS} characters ({len(value)})")
        if "\x00" in value:
            fail(source, key, "contains a NUL character")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a schema bug, not user input


def _as_float(value: int | float, source: str, key: str) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer with hundreds of digits
        fail(source, key, f"out of range ({len(str(abs(int(value))))} digits)")


def _check_range(value: float, source: str, key: str, meta: Mapping[str, Any]) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        fail(source, key, f"must be >= {lo:g}, got {value:g}")
    if hi is not None and value > hi:
        fail(source, key, f"must be <= {hi:g}, got {value:g}")


def _type_name(value: object) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else (
        "a mapping" if isinstance(value, dict) else "a list"
    )
