"""What each event cost and saved in energy: the node's IT energy drawn while it lasted, against
the energy its reference draw would have taken, at the GPUs and at the meter.

:class:`EventEnergy` is fed the GPUs' energy counters by the read-back thread (about twice a
second, gridtao/app/readback.py). Each round becomes one *interval*: the node's IT energy
between this round and the last, summed over GPUs. Per GPU it is the counter's delta (NVML, mJ
since the driver loaded), or, where that cannot be trusted, the read power integrated over the
interval (trapezoid of the two instant readings): a GPU without a counter (None; before Volta,
or a failed read) and a counter that went back (a driver reload resets it). The counter is an
unsigned 64-bit mJ count: a decrease that an increase through 2^64 of at most
:data:`~gridtao.gpu.counters.MAX_GPU_W` over the interval explains is a wrap and counted
through it (gridtao/gpu/counters.py). Each interval keeps which of the two it used; an event says
``counter``, ``power`` or ``mixed`` over its intervals.

An event covers ``[t0, t1]`` (monotonic s: its caps written, and the island's end of it after
the ramp-out). Its IT energy drawn is the node's cumulative energy interpolated linearly at
``t0`` and ``t1`` between the surrounding rounds, i.e. each interval counts for the share of
its length inside the event. The reference is the event's ``baseline_mw`` (the natural draw the
cut was measured from) held for ``t1 - t0``; not drawn = reference - drawn (negative if the node
drew more than its reference). At the meter both go through the facility model
(gridtao/control/tier2/facility.py): the counterfactual meter power is the steady meter power at
the reference; the drawn one is losses on the measured IT power plus cooling, which starts
settled at the reference and follows the measured IT power through its lag. Only the event's
own span is counted: cooling still depressed after it is not.

Overlapping events (FFR's levels fired one after another, a dispatch on top of a frequency
event) each get their own record, measured from their own baseline over their own span, and
name the events they overlapped (``overlapped``): their not-drawn figures overlap and must not
be added up. The node's total (:meth:`not_drawn_j`) counts each moment once: over each run of
time with at least one event in force, from the first event's baseline (the draw every event of
the run was cut from: the island freezes it at the first), whatever the number of events.

Threads: :meth:`feed` on the read-back thread, which also does every computation and calls
``on_event``; :meth:`event_started` and :meth:`event_ended` from the island lane, O(1) (a list
append under a lock held for nothing else); :meth:`not_drawn_j` from any thread (a scrape).
Memory is bounded: the last :data:`KEPT_INTERVALS` intervals and one accumulator per open
event. The newest :data:`SETTLE_INTERVALS` intervals are counted only once an event's end is
known, so an end stamped just before a round but handed over just after it is still exact.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gridtao.gpu.counters import counter_increase_mj

__all__ = ["EventEnergy", "FacilityLike", "Interval"]

KEPT_INTERVALS = 64  # ~32 s of rounds: how late an event's start may be handed over
SETTLE_INTERVALS = 4  # ~2 s: how late an event's end may be handed over
MAX_OPEN_EVENTS = 1024  # events started but never ended (should not happen) are dropped beyond


class FacilityLike(Protocol):
    """The facility model (``gridtao.control.tier2.facility.FacilityModel``), W and s."""

    def meter_w(self, it_w: float, cooling_w: float) -> float: ...

    def steady_meter_w(self, it_w: float) -> float: ...

    def steady_cooling_w(self, it_w: float) -> float: ...

    def cooling_step_w(self, cooling_w: float, it_w: float, dt_s: float) -> float: ...


@dataclass(frozen=True)
class Interval:
    """The node between two read-back rounds: ``it_j`` IT energy from ``t0_s`` to ``t1_s``
    (monotonic), measured by ``methods`` (``counter`` and/or ``power``)."""

    t0_s: float
    t1_s: float
    it_j: float
    methods: frozenset[str]


@dataclass
class _Open:
    """One event's accumulators (read-back thread only)."""

    event_id: str
    kind: str
    t0_s: float
    wall0_s: float
    reference_w: float
    cooling_w: float
    covered_s: float
    recovered: bool = False  # held again after a crash: counted from the restart on
    overlapped: set[str] = field(default_factory=set)  # other events open during this one
    it_j: float = 0.0
    meter_j: float = 0.0
    methods: set[str] = field(default_factory=set)
    end: tuple[float, float] | None = None  # (t1 monotonic, t1 wall)


class EventEnergy:
    """Per-event energy ledger for one node (see the module docstring). ``on_event(fields)``
    receives each ended event's ``event_energy`` fields on the read-back thread."""

    def __init__(self, facility: FacilityLike, gpus: int, *,
                 on_event: Callable[[Mapping[str, object]], None] | None = None) -> None:
        self._facility = facility
        self._gpus = gpus
        self._on_event = on_event
        self._lock = threading.Lock()  # guards the hand-over lists and the totals only
        self._started: list[tuple[str, str, float, float, float, bool]] = []
        self._ended: list[tuple[str, float, float]] = []
        self._not_drawn = (0.0, 0.0)  # (IT, meter) J, summed over events, never negative
        # Read-back thread only:
        self._last: tuple[float, tuple[int | None, ...], tuple[float, ...]] | None = None
        self._intervals: deque[Interval] = deque(maxlen=KEPT_INTERVALS)
        self._open: dict[str, _Open] = {}
        # Runs of time with at least one event in force, for the node's total (oldest first;
        # the last may still be open): each counted once, from its first event's reference.
        self._runs: list[_Open] = []
        self._last_end: tuple[float, float] | None = None  # the latest end in the last run

    # ---- island lane (O(1)) --------------------------------------------------------------

    def event_started(self, event_id: str, kind: str, *, t0_s: float, wall0_s: float,
                      baseline_mw: float, recovered: bool = False) -> None:
        """An event's caps were written at ``t0_s`` (monotonic; ``wall0_s`` Unix), cut from a
        node draw of ``baseline_mw`` (mW). ``recovered``: an event a crashed run held, held
        again at ``t0_s`` (its figures then cover only the time since; its record says so).
        Any thread."""
        with self._lock:
            self._started.append((event_id, kind, t0_s, wall0_s, baseline_mw / 1000.0,
                                  recovered))

    def event_ended(self, event_id: str, *, t1_s: float, wall1_s: float) -> None:
        """The island ended the event at ``t1_s`` (monotonic; ``wall1_s`` Unix); its figures
        follow the first round after. An id never started is ignored. Any thread."""
        with self._lock:
            self._ended.append((event_id, t1_s, wall1_s))

    def not_drawn_j(self) -> tuple[float, float]:
        """Energy not drawn over every event reported so far, (at the IT, at the meter), J;
        an event that drew more than its reference adds nothing. Any thread."""
        with self._lock:
            return self._not_drawn

    # ---- read-back thread ----------------------------------------------------------------

    def feed(self, t_s: float, energy_mj: Sequence[int | None],
             power_mw: Sequence[float]) -> None:
        """One read-back round at ``t_s`` (monotonic): each GPU's energy counter (mJ, None
        without one) and its latest instant power (mW, tier 1's reading). Reports every event
        whose end this round is past."""
        if len(energy_mj) != self._gpus or len(power_mw) != self._gpus:
            raise ValueError(f"need {self._gpus} readings, got {len(energy_mj)} counters and "
                             f"{len(power_mw)} powers")
        now = (t_s, tuple(energy_mj), tuple(float(p) for p in power_mw))
        last, self._last = self._last, now
        if last is not None and t_s > last[0]:
            self._intervals.append(_interval(last, now))
        with self._lock:
            started, self._started = self._started, []
            ended, self._ended = self._ended, []
        for event_id, kind, t0, wall0, reference_w, recovered in started:
            if len(self._open) >= MAX_OPEN_EVENTS:
                self._open.pop(next(iter(self._open)))
            ev = _Open(event_id, kind, t0, wall0, reference_w,
                       self._facility.steady_cooling_w(reference_w), t0, recovered)
            for other in self._open.values():
                if other.end is None or other.end[0] > t0:
                    ev.overlapped.add(other.event_id)
                    other.overlapped.add(event_id)
            self._open[event_id] = ev
            self._join_run(ev)
        for event_id, t1, wall1 in ended:
            closing = self._open.get(event_id)
            if closing is None:
                continue
            closing.end = (max(t1, closing.t0_s), wall1)
            if self._last_end is None or closing.end[0] > self._last_end[0]:
                self._last_end = closing.end
            if self._runs and all(o.end is not None for o in self._open.values()):
                self._runs[-1].end = self._last_end  # none in force: the run ends with the last
        settled = list(self._intervals)[:-SETTLE_INTERVALS]
        for ev in list(self._open.values()):
            if (end := self._advance(ev, settled)) is not None:
                del self._open[ev.event_id]
                self._report(ev, end)
        for run in list(self._runs):
            if (end := self._advance(run, settled)) is not None:
                self._runs.remove(run)
                self._add_not_drawn(run, end)

    def _advance(self, ev: _Open, settled: Sequence[Interval]) -> tuple[float, float] | None:
        """Count ``ev`` on: to its end once the rounds are past it (then its end is returned:
        it is complete), else over the ``settled`` intervals (those an end handed over late
        cannot fall before) and None."""
        end = ev.end
        if end is not None and self._intervals and self._intervals[-1].t1_s >= end[0]:
            self._count(ev, self._intervals, end[0])
            return end
        if settled:
            self._count(ev, settled, settled[-1].t1_s)
        return None

    def _count(self, ev: _Open, intervals: Sequence[Interval], until_s: float) -> None:
        """Add to ``ev`` the part of ``intervals`` between what it covered and ``until_s``."""
        f = self._facility
        for iv in intervals:
            lo, hi = max(iv.t0_s, ev.covered_s), min(iv.t1_s, until_s)
            if hi <= lo:
                continue
            it_w = iv.it_j / (iv.t1_s - iv.t0_s)
            dt = hi - lo
            cooling = f.cooling_step_w(ev.cooling_w, it_w, dt)
            ev.it_j += it_w * dt
            ev.meter_j += f.meter_w(it_w, (ev.cooling_w + cooling) / 2.0) * dt
            ev.cooling_w = cooling
            ev.covered_s = hi
            ev.methods |= iv.methods

    def _join_run(self, ev: _Open) -> None:
        """``ev`` opened: it joins the run of events in force, or starts one (from its own
        reference) when the last run had ended before it."""
        run = self._runs[-1] if self._runs else None
        if run is not None and (run.end is None or run.end[0] > ev.t0_s):
            run.end = None  # in force again (or still): the run goes on
            return
        self._last_end = None
        self._runs.append(_Open("", "run", ev.t0_s, ev.wall0_s, ev.reference_w,
                                self._facility.steady_cooling_w(ev.reference_w), ev.t0_s))

    def _not_drawn_of(self, ev: _Open, end: tuple[float, float]) -> tuple[float, float, float]:
        """(duration s, not drawn at the IT J, at the meter J) of ``ev`` ending at ``end``."""
        duration = end[0] - ev.t0_s
        reference_j = ev.reference_w * duration
        meter_reference_j = self._facility.steady_meter_w(ev.reference_w) * duration
        return duration, reference_j - ev.it_j, meter_reference_j - ev.meter_j

    def _add_not_drawn(self, run: _Open, end: tuple[float, float]) -> None:
        """A run of events in force is over: its energy not drawn into the node's total."""
        _, it_not, meter_not = self._not_drawn_of(run, end)
        with self._lock:
            it_total, meter_total = self._not_drawn
            self._not_drawn = (it_total + max(0.0, it_not), meter_total + max(0.0, meter_not))

    def _report(self, ev: _Open, end: tuple[float, float]) -> None:
        duration, it_not, meter_not = self._not_drawn_of(ev, end)
        reference_j = ev.reference_w * duration
        method = ("none" if not ev.methods else next(iter(ev.methods))
                  if len(ev.methods) == 1 else "mixed")
        if self._on_event is not None:
            self._on_event({
                "event": ev.event_id, "kind": ev.kind, "started_at": round(ev.wall0_s, 6),
                "ended_at": round(end[1], 6), "duration_s": round(duration, 3),
                "method": method, "it_drawn_j": round(ev.it_j, 1),
                "it_reference_j": round(reference_j, 1), "it_not_drawn_j": round(it_not, 1),
                "meter_drawn_j": round(ev.meter_j, 1),
                "meter_not_drawn_j": round(meter_not, 1),
                **({"recovered": True} if ev.recovered else {}),
                **({"overlapped": sorted(ev.overlapped)} if ev.overlapped else {}),
            })


def _interval(last: tuple[float, tuple[int | None, ...], tuple[float, ...]],
              now: tuple[float, tuple[int | None, ...], tuple[float, ...]]) -> Interval:
    """The node's IT energy between two rounds, per GPU from its counter where both rounds
    read one and it did not go back, else from the two power readings (trapezoid)."""
    (ta, ea, pa), (tb, eb, pb) = last, now
    total_j = 0.0
    methods: set[str] = set()
    for e0, e1, p0, p1 in zip(ea, eb, pa, pb, strict=True):
        increase = None if e0 is None or e1 is None else counter_increase_mj(e0, e1, tb - ta)
        if increase is not None:
            total_j += increase / 1000.0
            methods.add("counter")
        else:
            total_j += (p0 + p1) / 2000.0 * (tb - ta)
            methods.add("power")
    return Interval(ta, tb, total_j, frozenset(methods))

