"""An OpenADR 2.0b event, as openleadr's client parses it, checked into a plain value. Pure.

openleadr hands its ``on_event`` handler a nested dict (``event_descriptor``, ``active_period``,
``event_signals`` with their ``intervals``, ``targets``) with datetimes and timedeltas already
decoded from the XML. Nothing in it is trusted: :func:`parse_event` checks every field the
bridge uses (types, finite numbers, bounds on sizes) and raises :class:`EventRejected` with a
sentence naming the field, so a VTN that sends nonsense is refused by name and never reaches
a dispatch. Times become Unix seconds, durations seconds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

__all__ = [
    "MAX_EVENT_ID_CHARS",
    "MAX_INTERVALS",
    "MAX_SIGNALS",
    "EventRejected",
    "OadrEvent",
    "OadrInterval",
    "OadrSignal",
    "parse_event",
]

MAX_EVENT_ID_CHARS: Final = 256
MAX_SIGNALS: Final = 16
MAX_INTERVALS: Final = 288  # a day of 5-minute intervals
MAX_TARGETS: Final = 256
#: OpenADR statuses (EiEventDescriptor eventStatus).
STATUSES: Final = frozenset({"none", "far", "near", "active", "completed", "cancelled"})
#: SI scale codes (siScaleCode) and their factors.
SCALES: Final[Mapping[str, float]] = {
    "p": 1e-12, "n": 1e-9, "micro": 1e-6, "m": 1e-3, "c": 1e-2, "d": 1e-1, "none": 1.0,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
}


class EventRejected(ValueError):
    """The event cannot be read. ``label`` is a fixed metrics label (``bad_event``),
    ``reason`` the sentence for the log and the audit trail; ``event_id`` when it was read."""

    def __init__(self, reason: str, event_id: str | None = None,
                 label: str = "bad_event") -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id
        self.label = label


@dataclass(frozen=True)
class OadrInterval:
    """One interval of a signal: from ``start_at`` (Unix s) for ``duration_s`` (s) at ``value``
    (the signal payload, in the signal's own unit)."""

    start_at: float
    duration_s: float
    value: float


@dataclass(frozen=True)
class OadrSignal:
    """An event signal: ``name`` (SIMPLE, LOAD_DISPATCH, ...), ``type`` (level, setpoint, delta,
    x-loadControlCapacity, ...), its intervals in time order, and for power signals the unit
    (``W``...) and SI scale factor of its itemBase (1 when none was given)."""

    name: str
    type: str
    intervals: tuple[OadrInterval, ...]
    unit: str | None
    scale: float


@dataclass(frozen=True)
class OadrEvent:
    """An event as the bridge acts on it. Times Unix s, durations s. ``duration_s`` 0 is
    OpenADR's open-ended event. ``start_after_s``: the randomization window
    (``tolerance.tolerate.startafter``). ``targets``: (type, value) pairs, e.g.
    ``("resource_id", "hall-1")``."""

    event_id: str
    modification_number: int
    status: str
    market_context: str
    test_event: bool
    start_at: float
    duration_s: float
    ramp_s: float
    recovery_s: float
    start_after_s: float
    signals: tuple[OadrSignal, ...]
    targets: tuple[tuple[str, str], ...]

    @property
    def end_at(self) -> float:
        """When the active period ends (Unix s)."""
        return self.start_at + self.duration_s


def _get(data: object, key: str, where: str, event_id: str | None) -> Any:
    if not isinstance(data, Mapping):
        raise EventRejected(f"{where} is not a mapping", event_id)
    if key not in data:
        raise EventRejected(f"{where}.{key} is missing", event_id)
    return data[key]


def _text(value: object, where: str, event_id: str | None, *, limit: int = 256) -> str:
    if not isinstance(value, str) or not value:
        raise EventRejected(f"{where} must be a non-empty string", event_id)
    if len(value) > limit or not value.isprintable():
        raise EventRejected(f"{where} must be printable and at most {limit} characters",
                            event_id)
    return value


def _unix(value: object, where: str, event_id: str | None) -> float:
    if not isinstance(value, datetime):
        raise EventRejected(f"{where} must be a date-time", event_id)
    if value.tzinfo is None:
        raise EventRejected(f"{where} has no time zone", event_id)
    return value.timestamp()


def _seconds(value: object, where: str, event_id: str | None) -> float:
    if value is None:
        return 0.0
    if not isinstance(value, timedelta):
        raise EventRejected(f"{where} must be a duration", event_id)
    seconds = value.total_seconds()
    if seconds < 0:
        raise EventRejected(f"{where} must not be negative, got {seconds:g} s", event_id)
    return seconds


def _number(value: object, where: str, event_id: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventRejected(f"{where} must be a number, got {type(value).__name__}", event_id)
    number = float(value)
    if not math.isfinite(number):
        raise EventRejected(f"{where} must be finite", event_id)
    return number


def _list(value: object, where: str, event_id: str | None, limit: int) -> Sequence[Any]:
    if isinstance(value, Mapping):
        value = [value]  # one element of a repeated XML element comes as a mapping
    if not isinstance(value, list) or not value:
        raise EventRejected(f"{where} must be a non-empty list", event_id)
    if len(value) > limit:
        raise EventRejected(f"{where} has {len(value)} entries (at most {limit})", event_id)
    return value


def _signal(raw: object, k: int, event_id: str) -> OadrSignal:
    where = f"event_signals[{k}]"
    name = _text(_get(raw, "signal_name", where, event_id), f"{where}.signal_name", event_id)
    kind = _text(_get(raw, "signal_type", where, event_id), f"{where}.signal_type", event_id)
    intervals: list[OadrInterval] = []
    for j, iv in enumerate(_list(_get(raw, "intervals", where, event_id),
                                 f"{where}.intervals", event_id, MAX_INTERVALS)):
        at = f"{where}.intervals[{j}]"
        start = _unix(_get(iv, "dtstart", at, event_id), f"{at}.dtstart", event_id)
        duration = _seconds(_get(iv, "duration", at, event_id), f"{at}.duration", event_id)
        value = _number(_get(iv, "signal_payload", at, event_id), f"{at}.signal_payload",
                        event_id)
        intervals.append(OadrInterval(start, duration, value))
    intervals.sort(key=lambda iv: iv.start_at)
    for a, b in itertools.pairwise(intervals):
        if b.start_at < a.start_at + a.duration_s - 1e-6:
            raise EventRejected(f"{where}: intervals overlap", event_id)
    unit: str | None = None
    scale = 1.0
    measurement = raw.get("measurement") if isinstance(raw, Mapping) else None
    if measurement is not None:
        unit = _text(_get(measurement, "unit", f"{where}.measurement", event_id),
                     f"{where}.measurement.unit", event_id, limit=32)
        code = measurement.get("scale", "none") if isinstance(measurement, Mapping) else "none"
        if code is None:
            code = "none"
        if code not in SCALES:
            raise EventRejected(f"{where}.measurement.scale {str(code)[:16]!r} is not an SI "
                                "scale code", event_id)
        scale = SCALES[code]
    return OadrSignal(name, kind, tuple(intervals), unit, scale)


def _targets(raw: Mapping[str, Any], event_id: str) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    targets = raw.get("targets")
    if targets is None:
        return ()
    if isinstance(targets, Mapping):
        targets = [targets]
    if not isinstance(targets, list) or len(targets) > MAX_TARGETS:
        raise EventRejected(f"targets must be a list of at most {MAX_TARGETS}", event_id)
    for k, target in enumerate(targets):
        if not isinstance(target, Mapping):
            raise EventRejected(f"targets[{k}] is not a mapping", event_id)
        for kind, value in target.items():
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, (str, int)) and not isinstance(v, bool):
                    found.append((str(kind), _text(str(v), f"targets[{k}].{kind}", event_id)))
    return tuple(found)


def parse_event(raw: object) -> OadrEvent:
    """Check an event dict from openleadr; raises :class:`EventRejected` naming the field."""
    descriptor = _get(raw, "event_descriptor", "event", None)
    raw_id = descriptor.get("event_id") if isinstance(descriptor, Mapping) else None
    event_id = _text(raw_id, "event_descriptor.event_id", None, limit=MAX_EVENT_ID_CHARS)
    assert isinstance(raw, Mapping)
    mod = _get(descriptor, "modification_number", "event_descriptor", event_id)
    if isinstance(mod, bool) or not isinstance(mod, int) or not 0 <= mod < 2**31:
        raise EventRejected("event_descriptor.modification_number must be an integer in "
                            "[0, 2^31)", event_id)
    status = _get(descriptor, "event_status", "event_descriptor", event_id)
    if status not in STATUSES:
        raise EventRejected(f"event_descriptor.event_status {str(status)[:16]!r} is not an "
                            "OpenADR status", event_id)
    context = descriptor.get("market_context") or ""
    if not isinstance(context, str) or len(context) > 1024 or not context.isprintable():
        raise EventRejected("event_descriptor.market_context must be printable text", event_id)
    test_event = descriptor.get("test_event", False)
    period = _get(raw, "active_period", "event", event_id)
    start_at = _unix(_get(period, "dtstart", "active_period", event_id),
                     "active_period.dtstart", event_id)
    duration_s = _seconds(_get(period, "duration", "active_period", event_id),
                          "active_period.duration", event_id)
    ramp_s = _seconds(period.get("ramp_up"), "active_period.ramp_up", event_id)
    recovery_s = _seconds(period.get("recovery"), "active_period.recovery", event_id)
    tolerance = period.get("tolerance")
    start_after = None
    if isinstance(tolerance, Mapping):
        tolerate = tolerance.get("tolerate")
        if isinstance(tolerate, Mapping):
            start_after = tolerate.get("startafter")
    start_after_s = _seconds(start_after, "active_period.tolerance.startafter", event_id)
    signals = tuple(_signal(s, k, event_id) for k, s in enumerate(
        _list(_get(raw, "event_signals", "event", event_id), "event_signals", event_id,
              MAX_SIGNALS)))
    return OadrEvent(
        event_id=event_id, modification_number=mod, status=status, market_context=context,
        test_event=test_event is True, start_at=start_at, duration_s=duration_s,
        ramp_s=ramp_s, recovery_s=recovery_s, start_after_s=start_after_s, signals=signals,
        targets=_targets(raw, event_id),
    )
