"""Work for the report: energy per token and per sample (:func:`efficiencies`) and the work each
event lost (:func:`work_lost`), from the history's work minutes (:class:`WorkMinute`) and GPU
minutes.

* **Energy per unit** (J/token of generated tokens, J per custom unit): over the minutes of the
  window in which the source counted and every GPU it is mapped to has an energy row, the
  energy of those GPUs over the units the source counted (a minute cut by the window counts
  pro rata for both). Within a minute the two are matched on the seconds both cover, each
  taken as even over its own covered seconds: a GPU's energy counts for ``min(1, c_work /
  c_gpu)`` of it, the units for ``min(1, c_gpu / c_work)`` (the least-covered GPU's), so a
  minute the source was scraped in only part of (the agent's first and last) is not charged
  the energy of the rest. A GPU mapped to several sources is counted in each (said in ``note``);
  a source that serves several models gets one figure for them together: its GPUs' energy
  cannot be split between them.
* **At the meter** (``joules_per_unit_meter``): the same figure with its GPUs' energy taken to
  the settlement point through the facility model's steady state, ``1 + losses_fraction + 1 /
  cop`` (the PUE of the GPUs' own energy: losses, and cooling at its COP; the site's fixed load
  is not theirs), the energy-to-token position's PUE-adjusted figure. Modelled, never metered.
* **Work lost** per event and source (generated tokens per model, or a custom unit): at minute
  resolution, over the whole minutes the event touches (from its caps to the end of its
  release). ``expected`` = the source's rate in the reference window (the
  :data:`REFERENCE_S` before the event's first minute, leaving out minutes of other events)
  times the seconds its counters covered in the event's minutes; ``done`` = what it counted
  in them; ``lost`` = expected - done (negative: it did more). The seconds of those minutes
  outside the event add noise, not bias (there the rate is the reference's). ``lost_std``: one
  standard deviation, from the spread ``s`` of the reference minutes' rates: the event
  minutes' own variation and the reference mean's, ``s * sqrt(sum c_i^2 + (sum c_i)^2 / n)``
  (``c_i``: the event minutes' covered seconds, ``n`` reference minutes). Unavailable, with
  why, without an end, without counters for every event minute, or with fewer than
  :data:`MIN_REFERENCE_MINUTES` reference minutes.

Units: times Unix seconds, energy kWh (J in the rows; J per unit), work in the source's units.
Threads: pure computation over values the caller has read; any thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gridtao.records.report.common import J_PER_KWH, MINUTE_S
from gridtao.records.report.gpus import GpuMinute, energy_by_index, share

__all__ = ["MIN_REFERENCE_MINUTES", "REFERENCE_S", "Efficiency", "EventWork", "WorkLost",
           "WorkMinute", "efficiencies", "source_units", "work_lost"]

#: The reference window before an event's first minute (s).
REFERENCE_S = 600
#: Reference minutes with counts needed for a work-lost figure (a spread needs several).
MIN_REFERENCE_MINUTES = 3
TOKEN = "token"


class WorkMinute(Protocol):
    """One minute of a work source (:class:`gridtao.history.WorkMinuteRow`)."""

    @property
    def start_s(self) -> int: ...

    @property
    def source(self) -> str: ...

    @property
    def source_kind(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def units(self) -> float: ...

    @property
    def covered_s(self) -> float: ...

    @property
    def gpus(self) -> tuple[int, ...]: ...


def source_units(kind: str, counters: Sequence[str]) -> tuple[str, ...]:
    """The units a work source of ``kind`` is counted in (``counters``: a custom source's
    counter names): ``token`` for an inference server, each counter's name less ``_total``."""
    if kind == "custom":
        return tuple(dict.fromkeys(name.removesuffix("_total") for name in counters))
    return (TOKEN,)


def _unit(row: WorkMinute) -> str | None:
    """What a row counts for the report: tokens (generated only), a custom unit, or None
    (prompt tokens: counted beside, not a unit of work)."""
    if row.source_kind == "custom":
        return row.kind
    return TOKEN if row.kind == "generation" else None


@dataclass(frozen=True)
class Efficiency:
    """Energy per unit of one source over the window. ``unit``: ``token`` (generated) or the
    custom counter's unit; ``models``: the models counted; ``units``, ``prompt_tokens``
    (inference only) and ``energy_kwh`` (its GPUs') over ``minutes`` minutes (of
    ``counted_minutes`` the source counted in the window); ``joules_per_unit`` None with no
    unit counted, ``joules_per_unit_meter`` the same at the settlement point (module
    docstring); ``note``: why a figure is missing or what to know of it."""

    node: str
    source: str
    source_kind: str
    models: tuple[str, ...]
    unit: str
    gpus: tuple[int, ...]
    units: float
    prompt_tokens: float | None
    energy_kwh: float | None
    joules_per_unit: float | None
    minutes: int
    counted_minutes: int
    note: str | None
    joules_per_unit_meter: float | None = None


def efficiencies(node: str, work: Sequence[WorkMinute], gpus: Sequence[GpuMinute],
                 from_s: float, to_s: float, *, meter_factor: float = 1.0) -> list[Efficiency]:
    """Per source and unit, its GPUs' energy per unit over ``[from_s, to_s)``, and at the
    meter with ``meter_factor`` (site energy per GPU energy, >= 1) (module docstring)."""
    energy = energy_by_index(gpus)
    shared: dict[int, set[str]] = {}
    inside = [r for r in work if share(r.start_s, from_s, to_s) > 0.0]
    for r in inside:
        for g in r.gpus:
            shared.setdefault(g, set()).add(r.source)
    groups: dict[tuple[str, str], list[WorkMinute]] = {}
    prompt: dict[str, list[WorkMinute]] = {}
    for r in inside:
        unit = _unit(r)
        if unit is None:
            prompt.setdefault(r.source, []).append(r)
        else:
            groups.setdefault((r.source, unit), []).append(r)
    out: list[Efficiency] = []
    for (source, unit), rows in sorted(groups.items()):
        mapped = rows[-1].gpus
        counted = sorted({r.start_s for r in rows})
        usable = [m for m in counted if mapped and all(m in energy.get(g, {}) for g in mapped)]
        use = set(usable)
        units_j: list[float] = []
        energy_j: list[float] = []
        for r in rows:
            if r.start_s not in use:
                continue
            f = share(r.start_s, from_s, to_s)
            covered = min(energy[g][r.start_s][1] for g in mapped)
            units_j.append(r.units * f * (min(1.0, covered / r.covered_s)
                                          if r.covered_s > 0 else 0.0))
            for g in mapped:
                e, c = energy[g][r.start_s]
                energy_j.append(e * f * (min(1.0, r.covered_s / c) if c > 0 else 0.0))
        units, joules = math.fsum(units_j), math.fsum(energy_j)
        tokens = (math.fsum(r.units * share(r.start_s, from_s, to_s)
                            for r in prompt.get(source, []) if r.start_s in use)
                  if unit == TOKEN else None)
        notes = []
        if not mapped:
            notes.append("no GPUs mapped to the source (work.sources[].gpus): its energy is "
                         "not known")
        elif len(usable) < len(counted):
            notes.append(f"{len(counted) - len(usable)} of its {len(counted)} minutes have no "
                         "energy row for every GPU mapped to it and are left out")
        others = sorted({s for g in mapped for s in shared.get(g, set())} - {source})
        if others:
            notes.append(f"its GPUs are shared with {', '.join(others)}: their energy is "
                         "counted for each")
        models = tuple(sorted({r.model for r in rows}))
        if unit == TOKEN and len(models) > 1:
            notes.append("one figure for its models together: their GPUs' energy cannot be "
                         "split between them")
        per_unit = joules / units if usable and units > 0 else None
        out.append(Efficiency(
            node, source, rows[-1].source_kind, models, unit, mapped, units, tokens,
            joules / J_PER_KWH if usable else None, per_unit, len(usable), len(counted),
            "; ".join(notes) or None,
            None if per_unit is None else per_unit * meter_factor))
    return out


@dataclass(frozen=True)
class WorkLost:
    """One source's (and model's) work lost to an event (module docstring): ``expected``,
    ``done``, ``lost`` and ``lost_std`` in ``unit`` s; the reference's mean rate and its
    minutes' spread (per s) over ``reference_minutes``; ``event_minutes`` compared."""

    source: str
    model: str
    unit: str
    reference_minutes: int
    reference_rate_per_s: float
    reference_std_per_s: float
    event_minutes: int
    expected: float
    done: float
    lost: float
    lost_std: float

    @property
    def lost_fraction(self) -> float | None:
        """Lost over expected; None when nothing was expected."""
        return self.lost / self.expected if self.expected > 0 else None


@dataclass(frozen=True)
class EventWork:
    """An event's work lost: ``items`` per source (and model) that could be measured, and
    ``unavailable`` (source: why) for those that could not; ``reason`` when none could
    (no work counters at all, no end)."""

    items: list[WorkLost]
    unavailable: list[tuple[str, str]]
    reason: str | None

    @property
    def available(self) -> bool:
        return bool(self.items)


def work_lost(start_s: float, end_s: float | None, work: Sequence[WorkMinute],
              others: Iterable[tuple[float, float]] = ()) -> EventWork:
    """The work lost by each source of ``work`` (one node's) to an event over ``[start_s,
    end_s)``; ``others``: the spans of other events, kept out of the reference."""
    if not work:
        return EventWork([], [], "the history holds no work counters for this node (no "
                                 "work.sources, or the agent did not record them)")
    if end_s is None:
        return EventWork([], [], "the event has no end in the trail")
    first = math.floor(start_s / MINUTE_S) * MINUTE_S
    event_slots = list(range(first, max(first + MINUTE_S, math.ceil(end_s / MINUTE_S)
                                        * MINUTE_S), MINUTE_S))
    spans = [(a, b) for a, b in others if not (a == start_s and b == end_s)]
    reference_slots = [m for m in range(first - REFERENCE_S, first, MINUTE_S)
                       if not any(a < m + MINUTE_S and b > m for a, b in spans)]
    series: dict[tuple[str, str, str], dict[int, WorkMinute]] = {}
    for r in work:
        unit = _unit(r)
        if unit is not None:
            series.setdefault((r.source, r.model, unit), {})[r.start_s] = r
    items: list[WorkLost] = []
    unavailable: list[tuple[str, str]] = []
    for (source, model, unit), rows in sorted(series.items()):
        name = f"{source}/{model}" if model else source
        if not any(m in rows for m in event_slots + reference_slots):
            continue  # the series did not exist around this event
        missing = [m for m in event_slots if m not in rows or rows[m].covered_s <= 0.0]
        ref = [rows[m] for m in reference_slots if m in rows and rows[m].covered_s > 0.0]
        if missing:
            unavailable.append((name, f"its counters miss {len(missing)} of the event's "
                                      f"{len(event_slots)} minutes"))
            continue
        if len(ref) < MIN_REFERENCE_MINUTES:
            unavailable.append((name, f"{len(ref)} reference minutes in the {REFERENCE_S} s "
                                      f"before the event (at least {MIN_REFERENCE_MINUTES} "
                                      "needed, outside other events)"))
            continue
        rates = [r.units / r.covered_s for r in ref]
        rate = math.fsum(r.units for r in ref) / math.fsum(r.covered_s for r in ref)
        mean = math.fsum(rates) / len(rates)
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in rates) / (len(rates) - 1))
        covered = [rows[m].covered_s for m in event_slots]
        total = math.fsum(covered)
        expected = rate * total
        done = math.fsum(rows[m].units for m in event_slots)
        lost_std = std * math.sqrt(math.fsum(c * c for c in covered) + total * total / len(ref))
        items.append(WorkLost(source, model, unit, len(ref), rate, std, len(event_slots),
                              expected, done, expected - done, lost_std))
    reason = None if items else (
        "no work source counted around this event" if not unavailable
        else "no work source could be measured (see unavailable)")
    return EventWork(items, unavailable, reason)
