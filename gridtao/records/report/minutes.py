"""The minute history's energy for the report: the history's rows (:class:`Minute`) through
the facility model (:class:`Facility`) into spans of IT and modelled meter energy
(:class:`Span`), the window's hours and days (:class:`NodeEnergy`) and the minutes missing
(:class:`Gap`); and which minutes the caller reads (:func:`history_range`).

* **IT energy** of a span ``[a, b)`` is the sum of the minutes' ``energy_j``, a minute that lies
  partly inside counting for the share of its 60 s inside (the draw is taken as even over the
  minute). Nothing is filled in: a minute with no row counts for nothing and is reported
  (``missing_minutes``, :class:`Gap`), and a row whose samples covered less than its minute
  (``energy_j / it_mean_w < 60``) counts only its covered seconds (``covered_s``).
* **Meter energy** (modelled, never metered) runs the facility model over the minutes: losses
  follow the IT draw at once, cooling follows it through a first-order lag with the minute's
  mean draw held over the minute (the exact integral for a piecewise-constant draw), plus the
  node's share of the fixed load over the covered seconds. Cooling starts settled at the draw of
  the first minute read and again after each missing minute; the caller reads
  :data:`WARMUP_TAUS` lags before the window (:func:`history_range`) so that the window starts
  with cooling that has followed the draw before it.

Units: times Unix seconds (UTC), powers W, energies J inside and kWh in a :class:`Span`.
Threads: pure computation over values the caller has read; no shared state, any thread.
"""

from __future__ import annotations

import bisect
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gridtao.records.report.common import J_PER_KWH, MINUTE_S, coverage, mean_w
from gridtao.records.report.trail import TrailEvent
from gridtao.records.report.work import REFERENCE_S

__all__ = [
    "WARMUP_TAUS",
    "Facility",
    "Gap",
    "Minute",
    "NodeEnergy",
    "Span",
    "covered_s",
    "history_range",
    "node_of_history",
]

#: Cooling lags of history read before the window (e^-5: under 1 % of a step left).
WARMUP_TAUS = 5.0
_HISTORY_NAME = re.compile(r"^history-(.+)\.sqlite3$")


class Minute(Protocol):
    """One row of the minute history (:class:`gridtao.history.MinuteRow`): the node's IT draw
    over ``[start_s, start_s + 60)``: ``it_mean_w`` (W) over the covered part, ``energy_j``
    (J) over it, ``event_s`` (s) with a grid activation in force."""

    @property
    def start_s(self) -> int: ...

    @property
    def it_mean_w(self) -> float: ...

    @property
    def energy_j(self) -> float: ...

    @property
    def event_s(self) -> float: ...


class Facility(Protocol):
    """The facility model (``gridtao.control.tier2.facility.FacilityModel``): meter =
    IT x (1 + losses) + cooling + fixed; cooling follows IT / COP with lag ``cooling_tau_s``.
    W and s."""

    @property
    def losses_fraction(self) -> float: ...

    @property
    def cop(self) -> float: ...

    @property
    def cooling_tau_s(self) -> float: ...

    @property
    def fixed_w(self) -> float: ...

    @property
    def settled_meter_per_it_w(self) -> float: ...

    def steady_cooling_w(self, it_w: float) -> float: ...

    def cooling_step_w(self, cooling_w: float, it_w: float, dt_s: float) -> float: ...



# ---- the minute history ------------------------------------------------------------------


@dataclass(frozen=True)
class _MinuteEnergy:
    """One stored minute as the report counts it: IT and modelled meter energy over its
    covered seconds (J), covered seconds and seconds under an event (s)."""

    start_s: int
    it_j: float
    meter_j: float
    covered_s: float
    event_s: float


#: A minute whose covered seconds come within this of 60 is whole: ``energy_j / it_mean_w``
#: of a whole minute can land a rounding error short of 60 (59.99999999999999).
WHOLE_SLACK_S = 1e-6


def covered_s(row: Minute) -> float:
    """Seconds of the minute its samples covered: ``energy_j / it_mean_w``, in [0, 60]; a row
    at 0 W counts as covered (the agent measured nothing drawn)."""
    if row.it_mean_w > 0.0:
        covered = row.energy_j / row.it_mean_w
        return float(MINUTE_S) if covered >= MINUTE_S - WHOLE_SLACK_S else max(0.0, covered)
    return float(MINUTE_S)


def _minute_energies(rows: Iterable[Minute], facility: Facility) -> list[_MinuteEnergy]:
    """Each row with its modelled meter energy (see the module docstring), oldest first."""
    out: list[_MinuteEnergy] = []
    tau = facility.cooling_tau_s
    losses = 1.0 + facility.losses_fraction
    cooling = 0.0
    last: int | None = None
    for row in sorted(rows, key=lambda r: r.start_s):
        it_w = row.it_mean_w
        if last is None or row.start_s != last + MINUTE_S:
            cooling = facility.steady_cooling_w(it_w)  # after a gap: settled, not guessed
        after = facility.cooling_step_w(cooling, it_w, float(MINUTE_S))
        # Exact for a constant draw: the settled part plus tau x what the lag closed.
        cooling_j = facility.steady_cooling_w(it_w) * MINUTE_S + tau * (cooling - after)
        covered = covered_s(row)
        meter_j = (row.energy_j * losses
                   + (cooling_j + facility.fixed_w * MINUTE_S) * covered / MINUTE_S)
        out.append(_MinuteEnergy(int(row.start_s), float(row.energy_j), meter_j, covered,
                                 float(row.event_s)))
        cooling, last = after, int(row.start_s)
    return out


@dataclass(frozen=True)
class Span:
    """Energy over ``[start_s, end_s)`` from the minute history.

    ``it_kwh``: measured IT energy over the covered time (kWh); ``meter_kwh``: the same through
    the facility model (kWh, modelled). ``expected_s``: the span's length (s); ``covered_s``:
    seconds the history covers (s); ``minutes``: stored minutes in the span (wholly or partly);
    ``missing_minutes``: minute slots in the span with no row; ``partial_minutes``: stored
    minutes whose samples covered less than 60 s; ``event_minutes``: minutes under a grid
    activation (min)."""

    start_s: float
    end_s: float
    it_kwh: float
    meter_kwh: float
    expected_s: float
    covered_s: float
    minutes: int
    missing_minutes: int
    partial_minutes: int
    event_minutes: float

    @property
    def coverage(self) -> float:
        """Share of the span the history covers, in [0, 1]."""
        return coverage(self.covered_s, self.expected_s)

    @property
    def mean_it_w(self) -> float | None:
        """Mean IT draw over the covered time (W); None when nothing is covered."""
        return mean_w(self.it_kwh, self.covered_s)


@dataclass(frozen=True)
class Gap:
    """Minutes the history does not hold: ``[start_s, end_s)`` within the window,
    ``minutes`` minute slots."""

    start_s: float
    end_s: float
    minutes: int


class _Minutes:
    """The minute energies of one node, searchable by time."""

    def __init__(self, minutes: list[_MinuteEnergy]) -> None:
        self.minutes = minutes
        self.starts = [m.start_s for m in minutes]

    def span(self, a: float, b: float) -> Span:
        """Energy over ``[a, b)``: whole minutes in full, cut ones for their share inside."""
        first = math.floor(a / MINUTE_S) * MINUTE_S
        lo = bisect.bisect_left(self.starts, first)
        hi = bisect.bisect_left(self.starts, b)
        it_j: list[float] = []
        meter_j: list[float] = []
        cov: list[float] = []
        event: list[float] = []
        rows = partial = 0
        for m in self.minutes[lo:hi]:
            overlap = min(b, m.start_s + MINUTE_S) - max(a, m.start_s)
            if overlap <= 0:
                continue
            share = overlap / MINUTE_S
            rows += 1
            partial += m.covered_s < MINUTE_S
            it_j.append(m.it_j * share)
            meter_j.append(m.meter_j * share)
            cov.append(m.covered_s * share)
            event.append(m.event_s * share)
        slots = max(0, math.ceil(b / MINUTE_S) - math.floor(a / MINUTE_S)) if b > a else 0
        return Span(a, b, math.fsum(it_j) / J_PER_KWH, math.fsum(meter_j) / J_PER_KWH,
                    max(0.0, b - a), math.fsum(cov), rows, slots - rows, partial,
                    math.fsum(event) / MINUTE_S)

    def gaps(self, a: float, b: float) -> list[Gap]:
        """Runs of minute slots in ``[a, b)`` with no row, clipped to ``[a, b)``."""
        have = set(self.starts)
        out: list[Gap] = []
        run: list[int] = []
        slot = math.floor(a / MINUTE_S) * MINUTE_S
        while slot < b:
            if slot in have:
                if run:
                    out.append(_gap(run, a, b))
                    run = []
            else:
                run.append(slot)
            slot += MINUTE_S
        if run:
            out.append(_gap(run, a, b))
        return out


def _gap(run: list[int], a: float, b: float) -> Gap:
    return Gap(float(max(a, run[0])), float(min(b, run[-1] + MINUTE_S)), len(run))


def _buckets(a: float, b: float, size: int) -> list[tuple[float, float]]:
    """``[a, b)`` cut at the UTC multiples of ``size`` seconds."""
    out: list[tuple[float, float]] = []
    t = math.floor(a / size) * size
    while t < b:
        out.append((float(max(a, t)), float(min(b, t + size))))
        t += size
    return out


@dataclass(frozen=True)
class NodeEnergy:
    """One node's history over the window: ``total``, ``hours`` and ``days`` (UTC, the first
    and last cut by the window), ``gaps``. ``source``: the history file."""

    node: str
    source: str
    total: Span
    hours: list[Span]
    days: list[Span]
    gaps: list[Gap]


def node_of_history(path: str | os.PathLike[str]) -> str:
    """The node a history file belongs to: ``<node>`` of ``history-<node>.sqlite3`` (the
    agent's naming), else the file's stem."""
    name = Path(path).name
    match = _HISTORY_NAME.match(name)
    return match.group(1) if match else Path(path).stem


def history_range(from_s: float, to_s: float, events: Iterable[TrailEvent],
                  facility: Facility) -> tuple[int, int]:
    """The minutes to read, ``[since_s, until_s)`` (Unix s): the window and the spans of the
    events that overlap it with their work reference windows before them
    (gridtao/records/report/work.py), and :data:`WARMUP_TAUS` cooling lags before that for
    the meter model."""
    lo, hi = from_s, to_s
    for ev in events:
        if ev.overlaps(from_s, to_s) and ev.start_s is not None:
            lo = min(lo, ev.start_s - REFERENCE_S - MINUTE_S)
            hi = max(hi, min(ev.latest_end_s, to_s) if ev.end_s is None else ev.end_s)
    warmup = math.ceil(WARMUP_TAUS * facility.cooling_tau_s / MINUTE_S) * MINUTE_S
    return (math.floor(lo / MINUTE_S) * MINUTE_S - warmup,
            math.ceil(hi / MINUTE_S) * MINUTE_S + MINUTE_S)
