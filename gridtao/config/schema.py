"""Typed, validated configuration from plain mappings (parsed YAML) into frozen dataclasses.

Generic: the schema is the dataclasses themselves (field types and ``metadata`` ranges made with
:func:`rng`); nothing here knows gridtao's keys. Every error names the source, the key path and
the reason.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
import unicodedata
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from gridtao.errors import GridtaoError

T = TypeVar("T")

#: No configuration string (a path, a topic prefix, a host) is longer than this.
MAX_STRING_CHARS = 4096

#: A value quoted in an error message is cut to this many characters.
MAX_SHOWN_CHARS = 60

# Unicode categories no configuration string may hold: control characters (a newline, an
# escape), unpaired surrogates (not encodable text) and the line and paragraph separators.
_REFUSED_CATEGORIES = {"Cc": "a control character", "Cs": "an unpaired surrogate",
                       "Zl": "a line separator", "Zp": "a paragraph separator"}

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
        shown = _key_name(name)
        sub = f"{key}.{shown}" if key else shown
        f = fields.get(name) if isinstance(name, str) else None
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
        # By type as well as value: 900.0 is not the integer 900, nor true the integer 1.
        for choice in allowed:
            if type(value) is type(choice) and value == choice:
                return choice
        fail(source, key, f"must be one of {', '.join(map(repr, allowed))}, got {_show(value)}")
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
        for i, ch in enumerate(value):
            what = _REFUSED_CATEGORIES.get(unicodedata.category(ch))
            if what is not None:
                fail(source, key, f"contains {what} ({ch!r} at character {i + 1})")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a schema bug, not user input


def _as_float(value: int | float, source: str, key: str) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer with hundreds of digits
        fail(source, key, f"out of range ({_digits(int(value))})")


def _check_range(value: float, source: str, key: str, meta: Mapping[str, Any]) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        fail(source, key, f"must be >= {lo:g}, got {value:g}")
    if hi is not None and value > hi:
        fail(source, key, f"must be <= {hi:g}, got {value:g}")


def _digits(number: int) -> str:
    """How many digits ``number`` has, without printing it (Python refuses to turn an integer
    of more than 4300 digits into text)."""
    bits = abs(number).bit_length()
    if bits < 10_000:  # about 3000 digits
        return f"{len(str(abs(number)))} digits"
    return f"about {round(bits * math.log10(2))} digits"


_CONTAINER_REPR = reprlib.Repr()
_CONTAINER_REPR.maxlevel = 3
_CONTAINER_REPR.maxlist = _CONTAINER_REPR.maxtuple = _CONTAINER_REPR.maxset = 8
_CONTAINER_REPR.maxdict = 6
_CONTAINER_REPR.maxstring = _CONTAINER_REPR.maxother = 60


def _show(value: object) -> str:
    """``value`` for an error message: one line, at most :data:`MAX_SHOWN_CHARS` characters."""
    if isinstance(value, bool) or value is None:  # as the YAML said it (yes, on: true)
        return {True: "true (YAML: true, yes, on)", False: "false (YAML: false, no, off)",
                None: "null (YAML: null, ~, or nothing)"}[value]
    if isinstance(value, int) and value.bit_length() > 200:
        return f"an integer of {_digits(value)}"
    try:
        # escapes newlines, control characters and unpaired surrogates; a container is shown
        # in part (a few YAML aliases can make a list of 10^8 items: never printed whole)
        text = (_CONTAINER_REPR.repr(value) if isinstance(value, list | tuple | dict | set)
                else repr(value))
    except (ValueError, RecursionError):  # holds an integer too long to print; nested too deep
        return f"a {type(value).__name__}"
    if len(text) > MAX_SHOWN_CHARS:
        text = text[: MAX_SHOWN_CHARS - 3] + "..."
    return text


def _key_name(name: object) -> str:
    """A mapping key as a step of a key path: as written when it is a plain name, else quoted
    (a key with spaces, dots, control characters, or one that is not text)."""
    if isinstance(name, str) and _PLAIN_KEY.fullmatch(name):
        return name
    return _show(name)


def _type_name(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return _show(value)
    return f"{type(value).__name__} {_show(value)}"
