"""Price and carbon signals for tier 3's planner: one normalized form, checked, mergeable.

The normalized schema (version 1; docs/planner-inputs.md has the full text)::

    {"version": 1, "issued_at": "2026-03-01T11:00:00Z", "source": "...",
     "start": "2026-03-01T23:00:00Z", "mtu_s": 3600,
     "energy_price_eur_per_mwh": [45.1, 44.0, ...],
     "reserve_price_eur_per_mw_h": {"ffr": [...], "fcr-d-up": {"start": ..., "mtu_s": 3600,
                                                               "values": [...]}},
     "carbon_g_per_kwh": {"start": ..., "mtu_s": 900, "values": [...], "issued_at": ...,
                          "source": "..."}}

Every series is optional; a bare list uses the document's ``start`` and ``mtu_s``, an object
gives its own (and may give its own ``issued_at`` and ``source``); ``null`` is an unknown value.
Times are unix seconds or ISO 8601 with a zone. Units: energy EUR/MWh, reserve capacity
EUR/MW per hour, carbon g CO2(eq)/kWh. Other formats are read by :mod:`gridtao.tier3.adapters`.

Checks (:func:`parse_signals`): a document that cannot be used at all is a :class:`SignalError`
with a one-line reason (not JSON/XML/CSV, unknown shape, no issue time, issued more than
``max_age_s`` ago or in the future, nothing usable, everything already past). A series that
cannot be used (a value that is not a number, a price beyond +-10,000 EUR/MWh, a negative or
over-2,000 g/kWh carbon value, irregular times, an unknown product kind, ending before now) is
left out and said in ``Signals.warnings``, so the planner plans without it and says so.
Everything here is immutable: share it between threads freely.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from gridtao.config.kinds import KINDS
from gridtao.tier3.adapters import (
    CARBON,
    ENERGY,
    JSON_READERS,
    RESERVE,
    Draft,
    RawSeries,
    SignalError,
    SignalsOutOfDate,
    csv_table,
    detect,
    entsoe_a44,
    format_time,
    json_object,
)

__all__ = ["CARBON", "CARBON_MAX_G_PER_KWH", "ENERGY", "MAX_AGE_S", "MAX_SIGNALS_MESSAGE_BYTES",
           "PRICE_BOUND_EUR_PER_MWH",
           "RESERVE", "Provenance", "Series", "SignalError", "Signals", "SignalsOutOfDate",
           "merge", "parse_signals"]

#: The largest signals document taken from the broker (``{prefix}/signals``), bytes: a week of
#: 15-minute prices, reserve prices and carbon is tens of kilobytes; the agent tells the broker
#: it takes no larger packet on that connection, so a huge publish costs it no memory.
MAX_SIGNALS_MESSAGE_BYTES = 1024 * 1024

FloatArray = npt.NDArray[np.float64]
Format = Literal["normalized", "entsoe", "watttime", "electricitymaps", "csv"]

MAX_AGE_S = 36 * 3600.0  # a day-ahead result (published ~13:00 D-1) is still news at D 24:00
# Beyond every European market's harmonised price limits (day-ahead +4,000 / -500, intraday
# +-9,999 EUR/MWh): a price outside is a unit or parsing error, not a market.
PRICE_BOUND_EUR_PER_MWH = 10_000.0
# Over twice coal's lifecycle intensity (IPCC AR5 median 820 g/kWh): more is a unit error.
CARBON_MAX_G_PER_KWH = 2_000.0
FUTURE_SLACK_S = 300.0  # issue times this far ahead of our clock pass (clock skew)
_PAST = "ends before now"


@dataclass(frozen=True, eq=False)
class Series:
    """A regular series: value ``i`` holds over ``[start_s + i*step_s, + step_s)`` (unix s).

    ``values`` is a read-only float array; NaN is unknown.
    """

    start_s: int
    step_s: int
    values: FloatArray

    def __post_init__(self) -> None:
        v = np.array(self.values, dtype=np.float64)
        if self.step_s <= 0 or v.ndim != 1 or v.size == 0:
            raise ValueError("a Series needs step_s > 0 and a non-empty 1-D array of values")
        v.setflags(write=False)
        object.__setattr__(self, "values", v)

    @property
    def end_s(self) -> int:
        return self.start_s + self.step_s * int(self.values.size)

    def resample(self, start_s: int, step_s: int, n: int) -> FloatArray:
        """The series on the grid ``start_s + i*step_s``, ``i < n``: each output interval's
        time-weighted mean of the values it overlaps (the mean when downsampling, the value
        itself when upsampling); NaN where any part of it is unknown or outside the series."""
        a = start_s + step_s * np.arange(n, dtype=np.int64)
        out = np.full(n, np.nan)
        inside = (a >= self.start_s) & (a + step_s <= self.end_s)
        if step_s <= 0 or not inside.any():
            return out
        pa, pb = a[inside] - self.start_s, a[inside] + step_s - self.start_s
        v, step, last = self.values, self.step_s, self.values.size - 1
        known = np.isfinite(v)
        v0 = np.where(known, v, 0.0)

        def integral(p: npt.NDArray[np.int64], per: FloatArray) -> FloatArray:
            cum = np.concatenate(([0.0], np.cumsum(per * step)))
            k = np.minimum(p // step, last)
            out: FloatArray = cum[k] + per[k] * (p - k * step)
            return out

        mean = (integral(pb, v0) - integral(pa, v0)) / (pb - pa)
        ka = pa // step
        same = ka == (pb - 1) // step
        mean[same] = v[ka[same]]  # inside one value: that value, bit for bit
        unknown = integral(pb, (~known).astype(np.float64)) - integral(pa, (~known).astype(
            np.float64))
        mean[unknown > 0] = np.nan
        out[inside] = mean
        return out

    def to_json(self) -> dict[str, Any]:
        return {"start": format_time(self.start_s), "mtu_s": self.step_s,
                "values": [None if math.isnan(x) else x for x in self.values.tolist()]}


@dataclass(frozen=True)
class Provenance:
    """Where one series came from: the issue time (unix s) and source of its document."""

    issued_at_s: float
    source: str


def _proxy(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True, eq=False)
class Signals:
    """The planner's price and carbon inputs, each series optional.

    ``energy_price_eur_per_mwh`` (EUR/MWh), ``reserve_price_eur_per_mw_h`` (EUR/MW per hour, by
    product kind of :data:`gridtao.config.kinds.KINDS`), ``carbon_g_per_kwh`` (g/kWh).
    ``issued_at_s``: the newest issue time among the documents (unix s); ``source``: their
    sources joined by ``+``; ``provenance``: per series name (``ENERGY``, ``CARBON``,
    ``f"{RESERVE}.{kind}"``) its own; ``warnings``: what was refused and why.
    """

    issued_at_s: float
    source: str
    energy_price_eur_per_mwh: Series | None = None
    reserve_price_eur_per_mw_h: Mapping[str, Series] = field(default_factory=dict)
    carbon_g_per_kwh: Series | None = None
    warnings: tuple[str, ...] = ()
    provenance: Mapping[str, Provenance] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.reserve_price_eur_per_mw_h) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown product kinds {sorted(unknown)}")
        object.__setattr__(self, "reserve_price_eur_per_mw_h",
                           _proxy(self.reserve_price_eur_per_mw_h))
        own = Provenance(self.issued_at_s, self.source)
        object.__setattr__(self, "provenance", _proxy(
            {name: self.provenance.get(name, own) for name in self.series()}))

    def series(self) -> dict[str, Series]:
        """Every series by name: ``ENERGY``, ``CARBON``, ``f"{RESERVE}.{kind}"``."""
        out = {f"{RESERVE}.{k}": s for k, s in self.reserve_price_eur_per_mw_h.items()}
        for name, s in ((ENERGY, self.energy_price_eur_per_mwh), (CARBON, self.carbon_g_per_kwh)):
            if s is not None:
                out[name] = s
        return out

    def resample(self, start_s: int, step_s: int, n: int) -> dict[str, FloatArray]:
        """Every series on the planner's grid (:meth:`Series.resample`), by name."""
        return {name: s.resample(start_s, step_s, n) for name, s in self.series().items()}

    def fresh(self, now_s: float, max_age_s: float = MAX_AGE_S) -> Signals:
        """These signals without the series issued more than ``max_age_s`` before ``now_s`` or
        ending by ``now_s``, each said in the warnings (possibly none left)."""
        keep, notes = {}, list(self.warnings)
        for name, s in self.series().items():
            age = now_s - self.provenance[name].issued_at_s
            if age > max_age_s:
                notes.append(f"{name}: issued {age / 3600:.1f} h ago, over "
                             f"{max_age_s / 3600:g} h; left out")
            elif s.end_s <= now_s:
                notes.append(f"{name}: {_PAST}; left out")
            else:
                keep[name] = s
        return _assemble(self.issued_at_s, self.source, keep, self.provenance, notes)

    def to_json(self) -> dict[str, Any]:
        """The normalized schema (each series as an object with its own provenance)."""
        out: dict[str, Any] = {"version": 1, "issued_at": format_time(self.issued_at_s),
                               "source": self.source, "warnings": list(self.warnings)}
        for name, s in self.series().items():
            p = self.provenance[name]
            entry = {**s.to_json(), "issued_at": format_time(p.issued_at_s), "source": p.source}
            if name.startswith(RESERVE + "."):
                out.setdefault(RESERVE, {})[name.split(".", 1)[1]] = entry
            else:
                out[name] = entry
        return out


def _assemble(issued_at_s: float, source: str, series: Mapping[str, Series],
              provenance: Mapping[str, Provenance], warnings: list[str]) -> Signals:
    reserve = {n.split(".", 1)[1]: s for n, s in series.items() if n.startswith(RESERVE + ".")}
    return Signals(issued_at_s, source, series.get(ENERGY), reserve, series.get(CARBON),
                   tuple(dict.fromkeys(warnings)),
                   {n: p for n, p in provenance.items() if n in series})


def merge(a: Signals, b: Signals) -> Signals:
    """Both inputs, per series the one from the more recently issued document (``b`` on a tie);
    e.g. prices from one source and carbon from another."""
    sa, sb = a.series(), b.series()
    take: dict[str, Series] = {}
    prov: dict[str, Provenance] = {}
    for name in sorted(sa.keys() | sb.keys()):
        older_b = name in sb and name in sa and (b.provenance[name].issued_at_s
                                                 < a.provenance[name].issued_at_s)
        src, s = (a, sa[name]) if name not in sb or older_b else (b, sb[name])
        take[name], prov[name] = s, src.provenance[name]
    source = "+".join(dict.fromkeys(a.source.split("+") + b.source.split("+")))
    return _assemble(max(a.issued_at_s, b.issued_at_s), source, take, prov,
                     list(a.warnings + b.warnings))


def _problem(raw: RawSeries, now_s: float) -> str | None:
    """Why this series cannot be used, or None."""
    lo, hi = -PRICE_BOUND_EUR_PER_MWH, PRICE_BOUND_EUR_PER_MWH
    if raw.name.startswith(RESERVE + "."):
        if raw.name.split(".", 1)[1] not in KINDS:
            return f"unknown product kind (known: {', '.join(KINDS)})"
    elif raw.name == CARBON:
        lo, hi = 0.0, CARBON_MAX_G_PER_KWH
    elif raw.name != ENERGY:
        return f"unknown series (known: {ENERGY}, {CARBON}, {RESERVE}.<kind>)"
    if raw.step_s < 60 or raw.step_s % 60 or raw.step_s > 86_400:
        return f"step {raw.step_s} s is not a whole number of minutes up to a day"
    for i, v in enumerate(raw.values):
        at = format_time(raw.start_s + i * raw.step_s)
        if v is not None and not math.isfinite(v):
            return f"the value at {at} is not a number"
        if v is not None and not lo <= v <= hi:
            return f"{v:g} at {at} is outside [{lo:g}, {hi:g}] (a unit error?)"
    if all(v is None for v in raw.values):
        return "no known values"
    if raw.start_s + raw.step_s * len(raw.values) <= now_s:
        return _PAST
    return None


def _check(draft: Draft, now_s: float, max_age_s: float, issued_at_s: float | None,
           source: str | None) -> Signals:
    issued = draft.issued_at_s if draft.issued_at_s is not None else issued_at_s
    if issued is None:
        raise SignalError("no issue time in the document (CSV: a '# issued_at: <time>' line)")
    for name, t in [("document", issued), *draft.issued_by_series.items()]:
        if now_s - t > max_age_s:
            msg = (f"stale: issued {format_time(t)}, {(now_s - t) / 3600:.1f} h before now, "
                   f"older than {max_age_s / 3600:g} h")
        elif t - now_s > FUTURE_SLACK_S:
            msg = f"issued {format_time(t)}, after now ({format_time(now_s)}): check the clocks"
        else:
            continue
        if name == "document":
            raise SignalsOutOfDate(msg)
        draft.warnings.append(f"{name}: {msg}; left out")
        draft.series = [s for s in draft.series if s.name != name]
    src = source or draft.source
    notes, kept, past = list(draft.warnings), {}, 0
    for raw in draft.series:
        problem = _problem(raw, now_s)
        if problem is not None:
            notes.append(f"{raw.name}: {problem}; the whole series left out")
            past += problem == _PAST
        elif raw.name in kept:
            notes.append(f"{raw.name}: given twice; the first kept")
        else:
            kept[raw.name] = Series(raw.start_s, raw.step_s,
                                    np.array([math.nan if v is None else v for v in raw.values]))
    if not kept:
        if draft.series and past == len(draft.series):
            raise SignalsOutOfDate(
                f"everything in the past: no value after now ({format_time(now_s)})")
        raise SignalError("no usable series: " + ("; ".join(notes) or "none given"))
    prov = {n: Provenance(draft.issued_by_series.get(n, issued), draft.source_by_series.get(
        n, src)) for n in kept}
    return _assemble(max([issued, *(p.issued_at_s for p in prov.values())]), src, kept, prov,
                     notes)


def parse_signals(data: str | bytes, *, now_s: float, max_age_s: float = MAX_AGE_S,
                  fmt: Format | None = None, issued_at_s: float | None = None,
                  source: str | None = None) -> Signals:
    """Read one signal document (format detected by its shape unless ``fmt`` names it).

    ``now_s``: unix s, for staleness; ``issued_at_s`` stands in when the document has no issue
    time (a CSV without ``# issued_at``); ``source`` replaces the document's own name. Raises
    SignalError when nothing in it can be used; see the module docstring for what is checked.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise SignalError(f"not UTF-8 text: {e}") from e
    text = data.lstrip("\ufeff")
    try:
        kind = fmt or detect(text)
        if kind == "entsoe":
            draft = entsoe_a44(text)
        elif kind == "csv":
            draft = csv_table(text)
        elif kind in JSON_READERS:
            draft = JSON_READERS[kind](json_object(text))
        else:
            raise SignalError(f"unknown format {kind!r} (known: normalized, entsoe, watttime, "
                              "electricitymaps, csv)")
        return _check(draft, now_s, max_age_s, issued_at_s, source)
    except SignalError:
        raise
    except (ArithmeticError, LookupError, RecursionError, TypeError, ValueError) as e:
        # The boundary: a document no adapter foresaw (it comes off the broker or a file) is
        # refused like any other bad one, never an error that ends whoever reads it.
        raise SignalError(f"not read: {type(e).__name__}: {e}") from None
