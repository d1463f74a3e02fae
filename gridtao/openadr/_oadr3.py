"""OpenADR 3.0.1 objects, checked without pydantic, and what the bridge makes of them. Pure.

The subset of the published 3.0.1 schema (openadr3.yaml, components/schemas) the bridge reads,
as frozen dataclasses: ``program`` (``programName`` required), ``event`` (``programID`` and
``intervals`` required; ``intervalPeriod``, ``payloadDescriptors``, ``targets``), ``interval``
(``id``, ``payloads``), ``valuesMap`` (``type``, ``values``), ``report`` (``programID``,
``eventID``, ``clientName``, ``resources``). :func:`check_program`, :func:`check_event` and
:func:`check_report` raise :class:`EventRejected` naming the field that breaks the schema
(a missing required property, a wrong type, a string past its length, a malformed date-time or
duration). Properties the bridge does not use are not checked.

:func:`to_oadr_event` turns a 3.x event's dispatch payloads into the 2.0b-shaped
:class:`~gridtao.openadr._events.OadrEvent` the mapping decides on (table in docs/openadr.md);
:func:`signal_series` takes its ``PRICE`` and ``GHG`` intervals for the planner's signals
document (docs/planner-inputs.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from gridtao.openadr._events import (
    MAX_INTERVALS,
    EventRejected,
    OadrEvent,
    OadrInterval,
    OadrSignal,
)

__all__ = [
    "DISPATCH_TYPES",
    "Event3",
    "Interval3",
    "Program3",
    "Report3",
    "check_event",
    "check_program",
    "check_report",
    "parse_duration",
    "signal_series",
    "to_oadr_event",
]

_OBJECT_ID: Final = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_DURATION: Final = re.compile(
    r"P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?")
#: 3.x payload type -> the 2.0b signal it is decided as (name, type).
DISPATCH_TYPES: Final[Mapping[str, tuple[str, str]]] = {
    "DISPATCH_SETPOINT": ("LOAD_DISPATCH", "setpoint"),
    "DISPATCH_SETPOINT_RELATIVE": ("LOAD_DISPATCH", "delta"),
    "IMPORT_CAPACITY_LIMIT": ("LOAD_DISPATCH", "setpoint"),
    "SIMPLE": ("SIMPLE", "level"),
}
#: Power units (payloadDescriptor ``units``) -> W.
POWER_UNITS: Final[Mapping[str, float]] = {"W": 1.0, "KW": 1e3, "MW": 1e6, "GW": 1e9}
#: 3.x target types -> the 2.0b target kinds the policy checks.
TARGET_KINDS: Final[Mapping[str, str]] = {"RESOURCE_NAME": "resource_id", "GROUP": "group_id",
                                          "VEN_NAME": "ven_id"}
INFINITE: Final = "P9999Y"  # 3.x's "until further notice"


@dataclass(frozen=True)
class Program3:
    id: str
    name: str


@dataclass(frozen=True)
class Interval3:
    """One interval: ``start_at`` Unix s and ``duration_s`` s when it has its own period (else
    None: the event's, in sequence); ``payloads`` type -> values."""

    id: int
    start_at: float | None
    duration_s: float | None
    payloads: Mapping[str, tuple[object, ...]]


@dataclass(frozen=True)
class Event3:
    """An event: ``start_at`` Unix s, ``duration_s`` s (None: ``P9999Y``, open-ended),
    ``randomize_s`` s; ``units`` payload type -> units; ``targets`` (type, value) pairs."""

    id: str
    program_id: str
    name: str | None
    start_at: float
    duration_s: float | None
    randomize_s: float
    intervals: tuple[Interval3, ...]
    units: Mapping[str, str | None]
    currencies: Mapping[str, str | None]
    targets: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Report3:
    program_id: str
    event_id: str
    client_name: str
    resources: tuple[str, ...]


def _field(obj: Mapping[str, Any], key: str, where: str, ident: str | None,
           required: bool = True) -> Any:
    if key not in obj or obj[key] is None:
        if required:
            raise EventRejected(f"{where}.{key} is required", ident)
        return None
    return obj[key]


def _mapping(value: object, where: str, ident: str | None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise EventRejected(f"{where} must be an object", ident)
    return value


def _string(value: object, where: str, ident: str | None, limit: int = 128) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit or not value.isprintable():
        raise EventRejected(f"{where} must be printable text of 1-{limit} characters", ident)
    return value


def _object_id(value: object, where: str, ident: str | None) -> str:
    if not isinstance(value, str) or not _OBJECT_ID.fullmatch(value):
        raise EventRejected(f"{where} must be an objectID ([a-zA-Z0-9_-], 1-128)", ident)
    return value


def _datetime(value: object, where: str, ident: str | None) -> float:
    if not isinstance(value, str):
        raise EventRejected(f"{where} must be a date-time", ident)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise EventRejected(f"{where} {value[:40]!r} is not an RFC 3339 date-time",
                            ident) from None
    if parsed.tzinfo is None:
        raise EventRejected(f"{where} {value[:40]!r} has no time zone", ident)
    return parsed.timestamp()


def parse_duration(value: object, where: str = "duration", ident: str | None = None) \
        -> float | None:
    """An ISO 8601 duration in s; None for ``P9999Y`` (open-ended). Years and months are
    refused otherwise (their length depends on the calendar)."""
    if not isinstance(value, str) or len(value) > 64:
        raise EventRejected(f"{where} must be an ISO 8601 duration", ident)
    if value == INFINITE:
        return None
    m = _DURATION.fullmatch(value)
    if m is None or value in ("P", "PT") or value.endswith("T"):
        raise EventRejected(f"{where} {value!r} is not an ISO 8601 duration", ident)
    if m["y"] or m["mo"]:
        raise EventRejected(f"{where} {value!r}: years and months are not taken", ident)
    parts = {k: float(v) for k, v in m.groupdict().items() if v}
    return (parts.get("w", 0) * 7 * 86400 + parts.get("d", 0) * 86400
            + parts.get("h", 0) * 3600 + parts.get("mi", 0) * 60 + parts.get("s", 0))


def _values_maps(value: object, where: str, ident: str | None) \
        -> dict[str, tuple[object, ...]]:
    if not isinstance(value, list) or len(value) > 64:
        raise EventRejected(f"{where} must be a list of valuesMap", ident)
    found: dict[str, tuple[object, ...]] = {}
    for k, item in enumerate(value):
        at = f"{where}[{k}]"
        item = _mapping(item, at, ident)
        kind = _string(_field(item, "type", at, ident), f"{at}.type", ident)
        values = _field(item, "values", at, ident)
        if not isinstance(values, list) or len(values) > 1024:
            raise EventRejected(f"{at}.values must be a list", ident)
        found[kind] = tuple(values)
    return found


def check_program(obj: object) -> Program3:
    """A program object; raises :class:`EventRejected`."""
    data = _mapping(obj, "program", None)
    ident = _object_id(_field(data, "id", "program", None), "program.id", None)
    name = _string(_field(data, "programName", "program", ident), "program.programName", ident)
    return Program3(ident, name)


def check_event(obj: object) -> Event3:
    """An event object; raises :class:`EventRejected` naming the field."""
    data = _mapping(obj, "event", None)
    ident = _object_id(_field(data, "id", "event", None), "event.id", None)
    if data.get("objectType", "EVENT") != "EVENT":
        raise EventRejected("event.objectType must be EVENT", ident)
    program = _object_id(_field(data, "programID", "event", ident), "event.programID", ident)
    name = data.get("eventName")
    if name is not None:
        name = _string(name, "event.eventName", ident)
    period = _mapping(_field(data, "intervalPeriod", "event", ident), "event.intervalPeriod",
                      ident)
    start = _datetime(_field(period, "start", "event.intervalPeriod", ident),
                      "event.intervalPeriod.start", ident)
    duration = parse_duration(period.get("duration", "PT0S"), "event.intervalPeriod.duration",
                              ident)
    randomize = parse_duration(period.get("randomizeStart", "PT0S"),
                               "event.intervalPeriod.randomizeStart", ident) or 0.0
    raw_intervals = _field(data, "intervals", "event", ident)
    if not isinstance(raw_intervals, list) or not 1 <= len(raw_intervals) <= MAX_INTERVALS:
        raise EventRejected(f"event.intervals must be a list of 1-{MAX_INTERVALS}", ident)
    intervals = []
    for k, raw in enumerate(raw_intervals):
        at = f"event.intervals[{k}]"
        item = _mapping(raw, at, ident)
        number = _field(item, "id", at, ident)
        if isinstance(number, bool) or not isinstance(number, int) or abs(number) >= 2**31:
            raise EventRejected(f"{at}.id must be an int32", ident)
        own = item.get("intervalPeriod")
        own_start = own_duration = None
        if own is not None:
            own = _mapping(own, f"{at}.intervalPeriod", ident)
            own_start = _datetime(_field(own, "start", f"{at}.intervalPeriod", ident),
                                  f"{at}.intervalPeriod.start", ident)
            own_duration = parse_duration(own.get("duration", "PT0S"),
                                          f"{at}.intervalPeriod.duration", ident)
        payloads = _values_maps(_field(item, "payloads", at, ident), f"{at}.payloads", ident)
        intervals.append(Interval3(number, own_start, own_duration, payloads))
    units: dict[str, str | None] = {}
    currencies: dict[str, str | None] = {}
    for k, raw in enumerate(data.get("payloadDescriptors") or []):
        at = f"event.payloadDescriptors[{k}]"
        item = _mapping(raw, at, ident)
        kind = _string(_field(item, "payloadType", at, ident), f"{at}.payloadType", ident)
        units[kind] = item.get("units") if isinstance(item.get("units"), str) else None
        currencies[kind] = item.get("currency") if isinstance(item.get("currency"),
                                                              str) else None
    targets = []
    for kind, values in _values_maps(data.get("targets") or [], "event.targets", ident).items():
        for value in values:
            if isinstance(value, str) and value.isprintable():
                targets.append((TARGET_KINDS.get(kind, kind.lower()), value))
    return Event3(ident, program, name, start, duration, randomize,
                  tuple(sorted(intervals, key=lambda iv: iv.id)), units, currencies,
                  tuple(targets))


def check_report(obj: object) -> Report3:
    """A report object (what the VEN would post); raises :class:`EventRejected`."""
    data = _mapping(obj, "report", None)
    program = _object_id(_field(data, "programID", "report", None), "report.programID", None)
    event = _object_id(_field(data, "eventID", "report", None), "report.eventID", None)
    client = _string(_field(data, "clientName", "report", None), "report.clientName", None)
    resources = _field(data, "resources", "report", None)
    if not isinstance(resources, list):
        raise EventRejected("report.resources must be a list", None)
    names = []
    for k, raw in enumerate(resources):
        item = _mapping(raw, f"report.resources[{k}]", None)
        names.append(_string(_field(item, "resourceName", f"report.resources[{k}]", None),
                             f"report.resources[{k}].resourceName", None))
        if not isinstance(_field(item, "intervals", f"report.resources[{k}]", None), list):
            raise EventRejected(f"report.resources[{k}].intervals must be a list", None)
    return Report3(program, event, client, tuple(names))


def _timeline(event: Event3) -> list[tuple[float, float, Interval3]]:
    """(start Unix s, duration s, interval) in order: an interval without its own period
    follows the previous one with the event's duration."""
    out = []
    at = event.start_at
    for iv in event.intervals:
        start = iv.start_at if iv.start_at is not None else at
        duration = iv.duration_s if iv.start_at is not None else event.duration_s
        out.append((start, duration or 0.0, iv))
        at = start + (duration or 0.0)
    return out


def _number(value: object, where: str, ident: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
            or value in (float("inf"), float("-inf")):
        raise EventRejected(f"{where} must be a finite number", ident)
    return float(value)


def to_oadr_event(event: Event3, version: int, *, program: str) -> OadrEvent | None:
    """The event's dispatch payload (the first of :data:`DISPATCH_TYPES` present) as an
    :class:`OadrEvent` at modification ``version``; None when it carries none. ``program`` is
    the program's name (the policy's market context)."""
    present = {kind for iv in event.intervals for kind in iv.payloads}
    kind = next((k for k in DISPATCH_TYPES if k in present), None)
    if kind is None:
        return None
    name, signal_type = DISPATCH_TYPES[kind]
    unit, scale = None, 1.0
    if name != "SIMPLE":
        units = (event.units.get(kind) or "").upper()
        if units in POWER_UNITS:
            unit, scale = "W", POWER_UNITS[units]
    intervals = []
    for start, duration, iv in _timeline(event):
        values = iv.payloads.get(kind)
        if not values:
            continue
        intervals.append(OadrInterval(start, duration, _number(
            values[0], f"intervals[id {iv.id}].payloads.{kind}", event.id)))
    if not intervals:
        return None
    timeline = _timeline(event)
    end = max(s + d for s, d, _ in timeline)
    return OadrEvent(
        event_id=event.id, modification_number=version, status="far",
        market_context=program, test_event=False, start_at=event.start_at,
        duration_s=0.0 if event.duration_s is None else end - event.start_at,
        ramp_s=0.0, recovery_s=0.0, start_after_s=event.randomize_s,
        signals=(OadrSignal(name, signal_type, tuple(intervals), unit, scale),),
        targets=event.targets)


def signal_series(event: Event3) -> dict[str, tuple[float, float, list[float | None]]]:
    """``PRICE`` (EUR per kWh or MWh) and ``GHG`` (g/kWh) intervals as signals-document series:
    name -> (start Unix s, step s, values), for an event whose intervals are evenly spaced in
    whole minutes. Prices in another currency, unknown units or uneven intervals are left out."""
    series: dict[str, tuple[float, float, list[float | None]]] = {}
    timeline = _timeline(event)
    steps = {round(d, 6) for _, d, _ in timeline}
    if len(steps) != 1:
        return series
    step = steps.pop()
    if step <= 0 or step % 60 or step > 86_400:
        return series
    for kind, name in (("PRICE", "energy_price_eur_per_mwh"), ("GHG", "carbon_g_per_kwh")):
        if not any(kind in iv.payloads for iv in event.intervals):
            continue
        factor: float | None = 1.0
        if kind == "PRICE":
            if (event.currencies.get(kind) or "").upper() != "EUR":
                continue
            factor = {"KWH": 1000.0, "MWH": 1.0}.get((event.units.get(kind) or "").upper())
        if factor is None:
            continue
        values: list[float | None] = []
        for _, _, iv in timeline:
            raw = iv.payloads.get(kind)
            try:
                values.append(None if not raw else _number(raw[0], kind, event.id) * factor)
            except EventRejected:
                values.append(None)
        series[name] = (timeline[0][0], step, values)
    return series

