"""Readers of the price and carbon documents tier 3 is fed, each turned into a :class:`Draft`.

A draft is what a document says, unit-converted and on a regular time grid but not yet judged:
:func:`gridtao.tier3.signals.parse_signals` checks it (staleness, bounds, product kinds) and
makes the :class:`~gridtao.tier3.signals.Signals`. Formats (docs/planner-inputs.md), told
apart by :func:`detect`:

- gridtao's normalized schema (:func:`normalized`, described in :mod:`gridtao.tier3.signals`);
- ENTSO-E Transparency day-ahead prices, document type A44 (:func:`entsoe_a44`);
- WattTime v3 forecast JSON (:func:`watttime`), lbs CO2/MWh converted to g/kWh;
- Electricity Maps carbon-intensity forecast JSON (:func:`electricitymaps`);
- a simple CSV, ``time,<series name>,...`` (:func:`csv_table`).

A document that cannot be used at all raises :class:`SignalError`; a series that cannot be used
is left out with a line in ``Draft.warnings``. Values in ``RawSeries.values``: a float, NaN for a
value the document gave but that is not a number (the checker refuses the series), None for a
value the document does not give (unknown; kept as a gap). Pure functions: any thread.
"""

from __future__ import annotations

import calendar
import csv
import io
import itertools
import json
import math
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gridtao.errors import GridtaoError

__all__ = ["CARBON", "ENERGY", "JSON_READERS", "LB_PER_MWH_TO_G_PER_KWH", "RESERVE", "Draft",
           "RawSeries", "SignalError", "SignalsOutOfDate", "as_number", "csv_table", "detect",
           "electricitymaps", "entsoe_a44", "format_time", "json_object", "normalized",
           "parse_time_s", "points_to_series", "watttime"]

ENERGY = "energy_price_eur_per_mwh"
CARBON = "carbon_g_per_kwh"
RESERVE = "reserve_price_eur_per_mw_h"  # one series per product kind: f"{RESERVE}.ffr"
LB_PER_MWH_TO_G_PER_KWH = 453.59237 / 1000  # 1 lb = 453.59237 g; 1 MWh = 1000 kWh
_EARLIEST_S, _LATEST_S = 946_684_800, 4_102_444_800  # 2000-01-01 .. 2100-01-01: else ms or junk


class SignalError(GridtaoError, ValueError):
    """A signal document (or one series of it) that cannot be used; the message says why."""


class SignalsOutOfDate(SignalError):
    """A well-formed document refused for its time alone (stale, issued after now, or every
    value in the past): the feed is late, not the configuration wrong."""


class RawSeries(NamedTuple):
    name: str  # ENERGY, CARBON or f"{RESERVE}.{kind}"
    start_s: int  # unix s of the first value's interval start
    step_s: int  # each value covers [start_s + i*step_s, + step_s)
    values: list[float | None]


@dataclass
class Draft:
    issued_at_s: float | None
    source: str
    series: list[RawSeries] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    issued_by_series: dict[str, float] = field(default_factory=dict)  # per-series issue times
    source_by_series: dict[str, str] = field(default_factory=dict)


_ISO = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d)(?::(\d\d)(\.\d+)?)?"
                  r"(Z|[+-]\d\d:?\d\d)$")


def parse_time_s(value: Any, what: str) -> float:
    """Unix seconds from a number (unix s) or an ISO 8601 time with a zone (``Z``, ``+01:00``);
    ENTSO-E's minute form ``2026-03-01T23:00Z`` included. SignalError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        t = float(value)
    elif isinstance(value, str) and (m := _ISO.match(value.strip())):
        y, mo, d, h, mi, sec = (int(g or 0) for g in m.groups()[:6])
        zone = m.group(8)
        off = 0 if zone == "Z" else (int(zone[1:3]) * 60 + int(zone[-2:])) * 60
        try:
            t = calendar.timegm((y, mo, d, h, mi, sec)) + float(m.group(7) or 0)
        except (ValueError, OverflowError) as e:
            raise SignalError(f"{what}: bad time {value!r}") from e
        t -= off if zone.startswith("+") else -off
    else:
        raise SignalError(f"{what}: {value!r} is not unix seconds or an ISO 8601 time with a zone")
    if not _EARLIEST_S <= t <= _LATEST_S:
        raise SignalError(f"{what}: {value!r} is not a time between 2000 and 2100 (milliseconds?)")
    return t


def format_time(t_s: float) -> str:
    """ISO 8601 UTC, ``2026-03-01T23:00:00Z``, with milliseconds when there are any."""
    whole, ms = divmod(round(t_s * 1000), 1000)
    y, mo, d, h, mi, s = time.gmtime(whole)[:6]
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{f'.{ms:03d}' if ms else ''}Z"


def as_number(v: Any) -> float:
    """A JSON/CSV value as a float; NaN for anything that is not a finite number."""
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def points_to_series(name: str, times_s: list[float], values: list[float | None],
                     step_hint_s: int | None = None) -> RawSeries:
    """(time, value) points on a regular grid as a RawSeries; SignalError when the times are not
    strictly increasing and evenly spaced (or a lone point has no ``step_hint_s``)."""
    if not times_s:
        raise SignalError(f"{name}: no values")
    steps = {round(b - a) for a, b in itertools.pairwise(times_s)}
    if any(s <= 0 for s in steps):
        raise SignalError(f"{name}: times are not increasing")
    if len(steps) > 1:
        raise SignalError(f"{name}: irregular times (steps of {sorted(steps)} s)")
    step = steps.pop() if steps else step_hint_s
    if not step:
        raise SignalError(f"{name}: one value and no step to give it")
    return RawSeries(name, round(times_s[0]), int(step), list(values))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _text(el: ET.Element | None, *path: str) -> str | None:
    for name in path:
        el = None if el is None else _child(el, name)
    return None if el is None or el.text is None else el.text.strip()


_DURATION = re.compile(r"PT(\d+)([MH])$")


def entsoe_a44(text: str) -> Draft:
    """ENTSO-E day-ahead prices (``Publication_MarketDocument``, type A44), EUR/MWh.

    Each ``TimeSeries/Period`` has a ``timeInterval`` and a ``resolution`` (PT15M, PT60M);
    ``Point/position`` counts from 1. Curve type A03 omits a position whose price repeats the
    previous one (filled forward to the period's end); under A01 a missing position is unknown.
    Periods at one resolution are stitched; with several resolutions the finest is kept.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise SignalError(f"not well-formed XML: {e}") from e
    kind = _local(root.tag)
    if kind == "Acknowledgement_MarketDocument":
        reason = _text(root, "Reason", "text") or _text(root, "Reason", "code") or "no reason"
        raise SignalError(f"ENTSO-E answered with an acknowledgement, not prices: {reason}")
    if kind != "Publication_MarketDocument":
        raise SignalError(f"XML root {kind} is not an ENTSO-E Publication_MarketDocument")
    doc_type = _text(root, "type")
    if doc_type not in (None, "A44"):
        raise SignalError(f"ENTSO-E document type {doc_type} is not day-ahead prices (A44)")
    created = _text(root, "createdDateTime")
    draft = Draft(None if created is None else parse_time_s(created, "createdDateTime"), "entsoe")
    grids: dict[int, dict[int, float]] = {}
    conflicts = 0
    for ts in (c for c in root if _local(c.tag) == "TimeSeries"):
        zone = _text(ts, "in_Domain.mRID")
        if zone and draft.source == "entsoe":
            draft.source = f"entsoe:{zone}"
        unit = (_text(ts, "currency_Unit.name"), _text(ts, "price_Measure_Unit.name"))
        if unit != ("EUR", "MWH"):
            draft.warnings.append(f"{ENERGY}: ENTSO-E series in {unit[0]}/{unit[1]} left out "
                                  "(only EUR/MWH is read)")
            continue
        fill = _text(ts, "curveType") == "A03"
        for period in (c for c in ts if _local(c.tag) == "Period"):
            try:
                start = parse_time_s(_text(period, "timeInterval", "start"), "Period start")
                end = parse_time_s(_text(period, "timeInterval", "end"), "Period end")
                res = _DURATION.match(_text(period, "resolution") or "")
                if res is None:
                    raise SignalError(f"resolution {_text(period, 'resolution')!r} not read")
                step = int(res.group(1)) * (60 if res.group(2) == "M" else 3600)
                if step <= 0:
                    raise SignalError(f"resolution {res.group(0)!r} is no interval")
                n = round(end - start) // step
                given = {int(_text(p, "position") or 0): as_number(_text(p, "price.amount"))
                         for p in period if _local(p.tag) == "Point"}
                if not given or min(given) < 1 or max(given) > n or (fill and 1 not in given):
                    raise SignalError(f"positions {min(given, default=0)}..."
                                      f"{max(given, default=0)} do not fit {n} intervals")
            except (SignalError, ValueError) as e:
                draft.warnings.append(f"{ENERGY}: an ENTSO-E period left out: {e}")
                continue
            grid, last = grids.setdefault(step, {}), math.nan
            for pos in range(1, n + 1):
                v = given.get(pos, last if fill else None)
                t = round(start) + (pos - 1) * step
                if v is None:
                    continue
                last = v
                if t in grid and not (grid[t] == v or (math.isnan(grid[t]) and math.isnan(v))):
                    conflicts += 1  # e.g. two auctions' sequences for one zone: keep the first
                    continue
                grid.setdefault(t, v)
    if conflicts:
        draft.warnings.append(f"{ENERGY}: {conflicts} ENTSO-E prices given twice with different "
                              "values; the first in document order kept")
    if grids:
        step = min(grids)
        for other in sorted(grids)[1:]:
            draft.warnings.append(f"{ENERGY}: ENTSO-E prices at {other} s left out, the "
                                  f"{step} s ones kept")
        grid = grids[step]
        t0, t1 = min(grid), max(grid)
        draft.series.append(RawSeries(ENERGY, t0, step, [grid.get(t) for t in
                                                          range(t0, t1 + step, step)]))
    return draft


def watttime(doc: dict[str, Any]) -> Draft:
    """WattTime v3 ``/v3/forecast``: ``data: [{point_time, value}]``, ``meta: {signal_type,
    units, generated_at, data_point_period_seconds, region}``; ``co2_moer`` (marginal) or
    ``co2_aoer`` (average) in lbs_co2_per_mwh, converted to g/kWh."""
    meta = doc.get("meta")
    data = doc.get("data")
    if not isinstance(meta, dict) or not isinstance(data, list):
        raise SignalError("WattTime document needs 'meta' (object) and 'data' (list)")
    gen = meta.get("generated_at")
    signal, units = meta.get("signal_type"), meta.get("units")
    draft = Draft(None if gen is None else parse_time_s(gen, "meta.generated_at"),
                  f"watttime:{signal}:{meta.get('region', '?')}")
    if signal not in ("co2_moer", "co2_aoer"):
        draft.warnings.append(f"{CARBON}: WattTime signal_type {signal!r} is not a carbon "
                              "intensity (co2_moer, co2_aoer)")
        return draft
    if units != "lbs_co2_per_mwh":
        draft.warnings.append(f"{CARBON}: WattTime units {units!r} not read (lbs_co2_per_mwh)")
        return draft
    try:
        points = [(parse_time_s(p["point_time"], "point_time"),
                   as_number(p["value"]) * LB_PER_MWH_TO_G_PER_KWH) for p in data]
        hint = meta.get("data_point_period_seconds")
        draft.series.append(points_to_series(CARBON, [p[0] for p in points],
                                             [p[1] for p in points],
                                             hint if isinstance(hint, int) else None))
    except (SignalError, KeyError, TypeError) as e:
        draft.warnings.append(f"{CARBON}: WattTime data left out: {e!s}")
    return draft


def electricitymaps(doc: dict[str, Any]) -> Draft:
    """Electricity Maps ``/v3/carbon-intensity/forecast``: ``zone``, ``updatedAt``,
    ``forecast: [{carbonIntensity (gCO2eq/kWh), datetime}]``, hourly unless spaced otherwise."""
    fc = doc.get("forecast")
    if not isinstance(fc, list):
        raise SignalError("Electricity Maps document needs 'forecast' (list)")
    upd = doc.get("updatedAt")
    draft = Draft(None if upd is None else parse_time_s(upd, "updatedAt"),
                  f"electricitymaps:{doc.get('zone', '?')}")
    try:
        times = [parse_time_s(p["datetime"], "datetime") for p in fc]
        draft.series.append(points_to_series(CARBON, times,
                                             [as_number(p["carbonIntensity"]) for p in fc], 3600))
    except (SignalError, KeyError, TypeError) as e:
        draft.warnings.append(f"{CARBON}: Electricity Maps forecast left out: {e!s}")
    return draft


def csv_table(text: str) -> Draft:
    """``time,<name>,...`` rows (time: unix s or ISO 8601 with a zone), each column one series
    named as in the normalized schema (``reserve_price_eur_per_mw_h.ffr`` for a product); an
    empty cell is no value at that time. ``# issued_at: <time>`` and ``# source: <text>`` lines
    (anywhere) give the issue time and the source."""
    meta: dict[str, str] = {}
    body = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            key, sep, val = line.lstrip()[1:].partition(":")
            if sep:
                meta[key.strip().lower()] = val.strip()
        elif line.strip():
            body.append(line)
    rows = list(csv.reader(io.StringIO("\n".join(body))))
    if not rows or len(rows[0]) < 2 or rows[0][0].strip().lower() not in ("time", "timestamp"):
        raise SignalError("CSV needs a header 'time,<series>,...'")
    issued = meta.get("issued_at")
    draft = Draft(None if issued is None else parse_time_s(issued, "# issued_at"),
                  meta.get("source", "csv"))
    try:
        times = [parse_time_s(r[0].strip(), f"CSV row {i + 2}") for i, r in enumerate(rows[1:])]
    except SignalError as e:
        raise SignalError(f"CSV times: {e}") from e
    for j, name in enumerate((h.strip() for h in rows[0][1:]), start=1):
        pts = [(t, r[j].strip()) for t, r in zip(times, rows[1:], strict=True)
               if len(r) > j and r[j].strip()]
        try:
            draft.series.append(points_to_series(name, [p[0] for p in pts],
                                                 [as_number(p[1]) for p in pts]))
        except SignalError as e:
            draft.warnings.append(f"{e} (CSV column left out)")
    return draft


_META = {"version", "issued_at", "source", "start", "mtu_s", "warnings"}


def normalized(doc: dict[str, Any]) -> Draft:
    """The normalized schema (:mod:`gridtao.tier3.signals`); a series it cannot place (no
    start or mtu_s, values not a list) is left out with a warning."""
    if doc.get("version") != 1:
        raise SignalError(f"normalized schema version {doc.get('version')!r} not read (only 1)")
    if "issued_at" not in doc:
        raise SignalError("normalized document has no issued_at")
    draft = Draft(parse_time_s(doc["issued_at"], "issued_at"), str(doc.get("source", "json")))

    def one(name: str, spec: Any) -> None:
        own = spec if isinstance(spec, dict) else {}
        start, step = own.get("start", doc.get("start")), own.get("mtu_s", doc.get("mtu_s"))
        values = own.get("values") if isinstance(spec, dict) else spec
        try:
            if (start is None or not isinstance(step, int) or isinstance(step, bool)
                    or not isinstance(values, list)):
                raise SignalError(f"{name}: needs start, an integer mtu_s and a list of values")
            draft.series.append(RawSeries(name, round(parse_time_s(start, f"{name} start")), step,
                                          [None if v is None else as_number(v) for v in values]))
            if "issued_at" in own:
                draft.issued_by_series[name] = parse_time_s(own["issued_at"], f"{name} issued_at")
            if "source" in own:
                draft.source_by_series[name] = str(own["source"])
        except SignalError as e:
            draft.warnings.append(f"{e}; left out")

    for key, spec in doc.items():
        if key == RESERVE and isinstance(spec, dict):
            for kind, s in spec.items():
                one(f"{RESERVE}.{kind}", s)
        elif key not in _META:
            one(key, spec)
    return draft


def detect(text: str) -> str:
    """The format of a document by its shape: ``entsoe`` (XML), ``normalized``, ``watttime``,
    ``electricitymaps`` (JSON objects by their keys) or ``csv``; SignalError if none."""
    head = text.lstrip()
    if head.startswith("<"):
        return "entsoe"
    if head.startswith(("{", "[")):
        doc = json_object(head)
        if "version" in doc or {ENERGY, CARBON, RESERVE} & doc.keys():
            return "normalized"
        if "data" in doc and "meta" in doc:
            return "watttime"
        if "forecast" in doc:
            return "electricitymaps"
        raise SignalError(f"unknown JSON shape (keys: {', '.join(sorted(doc)[:8])})")
    first = next((ln for ln in head.splitlines() if not ln.lstrip().startswith("#")), "")
    if "," in first:
        return "csv"
    raise SignalError("not JSON, XML or CSV")


def json_object(text: str) -> dict[str, Any]:
    """A JSON object, or SignalError."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise SignalError(f"not valid JSON: {e}") from e
    except RecursionError:
        raise SignalError("not valid JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer literal longer than int_max_str_digits
        raise SignalError(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise SignalError("the JSON document is not an object")
    return doc


JSON_READERS: dict[str, Callable[[dict[str, Any]], Draft]] = {
    "normalized": normalized, "watttime": watttime, "electricitymaps": electricitymaps}
