"""Wire contract v1: parse and validate incoming payloads. Nothing else.

The outgoing payload builders live in :mod:`gridtao.wire.payloads` and the topic names in
:mod:`gridtao.wire.topics`; both are re-exported here, so ``gridtao.wire.messages`` stays the one
import for the whole contract.

Pure functions, no I/O. Parsing sits on the trigger hot path, so it uses one pre-built JSON
decoder and hand-written checks (no schema library). Every rejection is a :class:`MessageRejected`
whose ``reason`` says exactly what was wrong, for the ack and the audit log.

Times are Unix seconds (float); power in watts (``_w``); durations in seconds (``_s``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NoReturn, Protocol, TypeAlias

from gridtao.errors import GridtaoError

# Re-exported so callers can keep importing the whole contract from here (``wire.ack_payload``).
from gridtao.wire.payloads import ack_payload, offline_payload, status_payload, tracker_payload
from gridtao.wire.topics import Topics

__all__ = [
    "DURATION_MAX_S",
    "HZ_MAX",
    "HZ_MIN",
    "ID_MAX_CHARS",
    "NODE_W_MAX",
    "AnyDispatch",
    "CapDispatch",
    "Dispatch",
    "DrDispatch",
    "FrequencySample",
    "MessageRejected",
    "ReleaseDispatch",
    "ShedDispatch",
    "Topics",
    "ack_payload",
    "addressee",
    "decode_object",
    "dispatch_from",
    "frequency_from",
    "offline_payload",
    "parse_dispatch",
    "parse_frequency",
    "status_payload",
    "tracker_payload",
]

HZ_MIN: Final = 40.0
HZ_MAX: Final = 70.0
NODE_W_MAX: Final = 10_000_000.0  # 10 MW: far above any node, low enough to catch unit mix-ups
DURATION_MAX_S: Final = 7 * 86_400.0
ID_MAX_CHARS: Final = 128


class MessageRejected(GridtaoError, ValueError):
    """An incoming payload broke the wire contract.

    ``reason`` is a short human sentence for the ack; ``event_id`` is the payload's ``"id"`` when
    it had a string one (so the ack can name the event), else ``None``.
    """

    def __init__(self, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id


@dataclass(frozen=True, slots=True)
class FrequencySample:
    """A grid frequency reading: ``t`` Unix seconds when measured, ``hz`` in [40, 70]."""

    t: float
    hz: float


@dataclass(frozen=True, slots=True)
class ShedDispatch:
    """Cut node IT power by ``fraction`` (0, 1] of its draw just before the event."""

    KIND: ClassVar[str] = "shed"
    id: str
    fraction: float
    duration_s: float
    issued_at: float | None = None


@dataclass(frozen=True, slots=True)
class CapDispatch:
    """Hold node IT power at or below ``node_w`` watts (0, 10 MW] for ``duration_s``."""

    KIND: ClassVar[str] = "cap"
    id: str
    node_w: float
    duration_s: float
    issued_at: float | None = None


@dataclass(frozen=True, slots=True)
class ReleaseDispatch:
    """End event ``ref`` early (ramping out at the product's rate)."""

    KIND: ClassVar[str] = "release"
    id: str
    ref: str
    issued_at: float | None = None


@dataclass(frozen=True, slots=True)
class DrDispatch:
    """A demand-response event (OpenADR-style), scheduled rather than applied at once.

    The node ramps its reduction in linearly over ``ramp_s`` *before* ``start_at`` (Unix s;
    None: on receipt), holds it for ``duration_s``, then gives it back linearly over
    ``recovery_s``. Exactly one of ``reduction_w`` (W) or ``fraction`` (of the node's power
    before the event) sets the level, both at the settlement point (``facility.settle_at``).
    A ``release`` dispatch whose ``ref`` names it cancels it (or starts its recovery).
    """

    KIND: ClassVar[str] = "dr"
    id: str
    duration_s: float
    start_at: float | None = None
    ramp_s: float = 0.0
    recovery_s: float = 0.0
    reduction_w: float | None = None
    fraction: float | None = None
    issued_at: float | None = None


Dispatch: TypeAlias = ShedDispatch | CapDispatch | ReleaseDispatch
# Every kind parse_dispatch returns. ``Dispatch`` stays the set v1 code paths handle.
AnyDispatch: TypeAlias = Dispatch | DrDispatch


class _Command(Protocol):
    """A parsed command: a dataclass with its wire ``KIND`` (a node or a site dispatch)."""

    KIND: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, Any]]


def dispatch_terms(msg: _Command) -> tuple[object, ...]:
    """What a dispatch (a node's or the site's) asks for: its kind and every field but
    ``issued_at`` (a retry may be re-stamped). Two dispatches with one id and different terms
    are different requests."""
    names = _TERM_FIELDS.get(type(msg))
    if names is None:  # once per class: every dispatch on the trigger path asks
        names = _TERM_FIELDS[type(msg)] = tuple(
            f.name for f in dataclasses.fields(msg) if f.name != "issued_at")
    return (msg.KIND, *((name, getattr(msg, name)) for name in names))


_TERM_FIELDS: dict[type, tuple[str, ...]] = {}


def _reject_constant(name: str) -> NoReturn:
    # json accepts NaN/Infinity/-Infinity by default; they are not JSON and not physical values.
    raise _ConstantError(name)


class _ConstantError(ValueError):
    pass


# One decoder, built once: json.loads(..., parse_constant=...) would build a new one per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def decode_object(payload: bytes, *, max_bytes: int) -> dict[str, Any]:
    """A payload's JSON object (size, UTF-8 and JSON checked), for :func:`frequency_from` or
    :func:`dispatch_from` and then for the signature check, so that a message is decoded once.
    Raises :class:`MessageRejected`."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MessageRejected(f"payload must be bytes, got {type(payload).__name__}")
    size = len(payload)
    if size > max_bytes:
        raise MessageRejected(f"payload too large: {size} bytes > {max_bytes}")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as e:
        raise MessageRejected(f"payload is not UTF-8 (byte {e.start})") from None
    try:
        data = _DECODER.decode(text)
    except _ConstantError as e:
        raise MessageRejected(f"bad JSON: {e.args[0]} is not allowed") from None
    except json.JSONDecodeError as e:
        raise MessageRejected(f"bad JSON: {e.msg} at char {e.pos}") from None
    except RecursionError:
        raise MessageRejected("bad JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer literal longer than int_max_str_digits
        raise MessageRejected(f"bad JSON: {e}") from None
    if not isinstance(data, dict):
        raise MessageRejected(f"top level must be a JSON object, got {_json_type(data)}")
    return data


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _number(data: Mapping[str, Any], key: str, event_id: str | None) -> float:
    try:
        value = data[key]
    except KeyError:
        raise MessageRejected(f"missing field {key!r}", event_id) from None
    return _as_number(value, key, event_id)


def _as_number(value: object, key: str, event_id: str | None) -> float:
    # bool is an int subclass in Python but not a number in JSON.
    if type(value) is float:
        number = value
    elif type(value) is int:
        try:
            number = float(value)
        except OverflowError:
            raise MessageRejected(f"field {key!r} is out of range", event_id) from None
    else:
        raise MessageRejected(f"field {key!r} must be a number, got {_json_type(value)}", event_id)
    if not math.isfinite(number):  # "1e999" decodes to inf without passing parse_constant
        raise MessageRejected(f"field {key!r} must be finite", event_id)
    return number


def _optional_number(data: Mapping[str, Any], key: str, event_id: str | None) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    return _as_number(value, key, event_id)


def _check_range(
    value: float,
    key: str,
    event_id: str | None,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    unit: str = "",
) -> None:
    if (value <= lo if lo_open else value < lo) or value > hi:
        left = "(" if lo_open else "["
        raise MessageRejected(
            f"field {key!r} must be in {left}{lo:g}, {hi:g}]{unit}, got {value:g}", event_id
        )


def _identifier(data: Mapping[str, Any], key: str, event_id: str | None) -> str:
    try:
        value = data[key]
    except KeyError:
        raise MessageRejected(f"missing field {key!r}", event_id) from None
    if not isinstance(value, str):
        raise MessageRejected(f"field {key!r} must be a string, got {_json_type(value)}", event_id)
    if not value:
        raise MessageRejected(f"field {key!r} must not be empty", event_id)
    if len(value) > ID_MAX_CHARS:
        raise MessageRejected(
            f"field {key!r} is too long: {len(value)} chars > {ID_MAX_CHARS}", event_id
        )
    if not value.isprintable():
        raise MessageRejected(f"field {key!r} must contain only printable characters", event_id)
    return value


def addressee(data: Mapping[str, Any]) -> str | None:
    """The one node a decoded message is for (its ``node``), or None when it names none (a
    message any node that receives it may act on). A signed message meant for one node names
    it: the signature then binds it to that node, and its bytes replayed to another node's
    topic are refused there. Raises :class:`MessageRejected` for a ``node`` that is not an id."""
    if "node" not in data:
        return None
    raw_id = data.get("id")
    return _identifier(data, "node", raw_id if isinstance(raw_id, str) else None)


def parse_frequency(payload: bytes, *, max_bytes: int) -> FrequencySample:
    """Parse ``{"t": <unix s>, "hz": <40..70>}``. Raises :class:`MessageRejected`."""
    return frequency_from(decode_object(payload, max_bytes=max_bytes))


def frequency_from(data: Mapping[str, Any]) -> FrequencySample:
    """:func:`parse_frequency` of an already decoded object."""
    t = _number(data, "t", None)
    if t < 0:
        raise MessageRejected(f"field 't' must be Unix seconds >= 0, got {t:g}")
    hz = _number(data, "hz", None)
    _check_range(hz, "hz", None, HZ_MIN, HZ_MAX, unit=" Hz")
    return FrequencySample(t=t, hz=hz)


def parse_dispatch(payload: bytes, *, max_bytes: int) -> AnyDispatch:
    """Parse a shed / cap / release / dr dispatch. Unknown fields are ignored.

    Raises :class:`MessageRejected`; its ``event_id`` is set whenever the payload was an object
    with a string ``"id"`` (even an invalid one), so the rejection can be acked by name.
    """
    return dispatch_from(decode_object(payload, max_bytes=max_bytes))


def dispatch_from(data: Mapping[str, Any]) -> AnyDispatch:
    """:func:`parse_dispatch` of an already decoded object."""
    raw_id = data.get("id")
    event_id = raw_id if isinstance(raw_id, str) else None
    ident = _identifier(data, "id", event_id)
    try:
        kind = data["kind"]
    except KeyError:
        raise MessageRejected("missing field 'kind'", event_id) from None
    issued_at = _optional_number(data, "issued_at", event_id)
    if kind == "shed":
        fraction = _number(data, "fraction", event_id)
        _check_range(fraction, "fraction", event_id, 0.0, 1.0, lo_open=True)
        return ShedDispatch(ident, fraction, _duration(data, event_id), issued_at)
    if kind == "cap":
        node_w = _number(data, "node_w", event_id)
        _check_range(node_w, "node_w", event_id, 0.0, NODE_W_MAX, lo_open=True, unit=" W")
        return CapDispatch(ident, node_w, _duration(data, event_id), issued_at)
    if kind == "release":
        if "ref" not in data:
            raise MessageRejected("release needs field 'ref' (the event to end)", event_id)
        return ReleaseDispatch(ident, _identifier(data, "ref", event_id), issued_at)
    if kind == "dr":
        return _parse_dr(data, ident, event_id, issued_at)
    if isinstance(kind, str):
        shown = kind if len(kind) <= 32 and kind.isprintable() else kind[:32].encode().hex()
        raise MessageRejected(
            f"unknown kind {shown!r} (expected 'shed', 'cap', 'release' or 'dr')", event_id
        )
    raise MessageRejected(f"field 'kind' must be a string, got {_json_type(kind)}", event_id)


def _parse_dr(
    data: Mapping[str, Any], ident: str, event_id: str | None, issued_at: float | None
) -> DrDispatch:
    start_at = _optional_number(data, "start_at", event_id)
    if start_at is not None and start_at < 0:
        raise MessageRejected(f"field 'start_at' must be Unix seconds >= 0, got {start_at:g}",
                              event_id)
    periods = {}
    for key in ("ramp_s", "recovery_s"):
        value = _optional_number(data, key, event_id)
        value = 0.0 if value is None else value
        _check_range(value, key, event_id, 0.0, DURATION_MAX_S, unit=" s")
        periods[key] = value
    reduction_w = _optional_number(data, "reduction_w", event_id)
    fraction = _optional_number(data, "fraction", event_id)
    if (reduction_w is None) == (fraction is None):
        raise MessageRejected("dr needs exactly one of 'reduction_w' or 'fraction'", event_id)
    if reduction_w is not None:
        _check_range(reduction_w, "reduction_w", event_id, 0.0, NODE_W_MAX, lo_open=True,
                     unit=" W")
    if fraction is not None:
        _check_range(fraction, "fraction", event_id, 0.0, 1.0, lo_open=True)
    return DrDispatch(
        ident, _duration(data, event_id), start_at, periods["ramp_s"], periods["recovery_s"],
        reduction_w, fraction, issued_at,
    )


def _duration(data: Mapping[str, Any], event_id: str | None) -> float:
    duration_s = _number(data, "duration_s", event_id)
    _check_range(duration_s, "duration_s", event_id, 0.0, DURATION_MAX_S, lo_open=True, unit=" s")
    return duration_s
