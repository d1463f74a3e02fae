"""The energy and work ledger while the agent runs: each work source's energy per unit over the
last minutes, and the work each ended event lost, for Prometheus (gridtao/work/collectors.py,
``LedgerCollector``). The same computations as ``gridtao report energy``
(gridtao/records/report/work.py), over the history's rows as the recorder writes them.

Threads: :meth:`LiveLedger.after_write` runs on the history recorder's thread after each write
(it reads the store there, never on a control thread); :meth:`~LiveLedger.event_over` from the
read-back thread (a list append under a lock); :meth:`~LiveLedger.per_unit` and
:meth:`~LiveLedger.lost_totals` from any thread (a scrape), snapshots under the lock.

Units: Unix seconds; J per unit; work in the sources' units (tokens, custom units).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence

from gridtao.records.report.gpus import GpuMinute
from gridtao.records.report.work import REFERENCE_S, WorkMinute, efficiencies, work_lost

__all__ = ["MAX_PENDING", "WINDOW_S", "LiveLedger"]

log = logging.getLogger("gridtao.records")

#: Energy per unit is over the complete minutes of the last this many seconds.
WINDOW_S = 300
#: Ended events waiting for their minutes to be written (older ones are dropped beyond).
MAX_PENDING = 256
MINUTE_S = 60


class LiveLedger:
    """Per source, energy per unit over the last :data:`WINDOW_S` of complete minutes, and the
    units lost to events, summed. ``read_gpus(since_s, until_s)`` and ``read_work(...)`` read
    the history's GPU and work minutes (``HistoryStore.gpu_rows`` / ``work_rows``).
    ``units``: the (source, unit) pairs configured, whose totals start at 0 (a counter is
    exported from the start, not from the first event measured)."""

    def __init__(self, read_gpus: Callable[[int, int], Sequence[GpuMinute]],
                 read_work: Callable[[int, int], Sequence[WorkMinute]], *,
                 units: Sequence[tuple[str, str]] = ()) -> None:
        self._read_gpus = read_gpus
        self._read_work = read_work
        self._lock = threading.Lock()
        self._pending: list[tuple[float, float]] = []
        self._spans: list[tuple[float, float]] = []  # recent events: kept out of references
        self._per_unit: tuple[tuple[str, str, str, float], ...] = ()
        self._lost: dict[tuple[str, str], float] = dict.fromkeys(units, 0.0)
        #: Events whose work lost was measured, and those that could not be (said in the log).
        self.measured = 0
        self.unmeasured = 0

    def event_over(self, started_at_s: float, ended_at_s: float) -> None:
        """An event ran over ``[started_at_s, ended_at_s)`` (Unix s, caps to the end of the
        release); its work lost is counted once its minutes are written. Any thread."""
        if not (math.isfinite(started_at_s) and math.isfinite(ended_at_s)):
            return
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(0)
            self._pending.append((started_at_s, ended_at_s))

    def per_unit(self) -> tuple[tuple[str, str, str, float], ...]:
        """(source, model, unit, J per unit) over the last minutes; ``model`` is the models
        joined by "," (empty for custom counters). Any thread."""
        with self._lock:
            return self._per_unit

    def lost_totals(self) -> dict[tuple[str, str], float]:
        """(source, unit) -> units lost over every event measured so far (an event in which a
        source did more than its reference adds nothing). Any thread."""
        with self._lock:
            return dict(self._lost)

    def after_write(self, wall_s: float) -> None:
        """The recorder wrote everything up to ``wall_s`` (Unix s; its thread): recompute the
        energy per unit, and count the work lost of events whose minutes are now written."""
        now_minute = math.floor(wall_s / MINUTE_S) * MINUTE_S
        since = now_minute - WINDOW_S
        per = efficiencies("", self._read_work(since, now_minute),
                           self._read_gpus(since, now_minute), since, now_minute)
        per_unit = tuple((e.source, ",".join(e.models), e.unit, e.joules_per_unit)
                         for e in per if e.joules_per_unit is not None)
        with self._lock:
            self._per_unit = per_unit
            ready = [p for p in self._pending
                     if math.ceil(p[1] / MINUTE_S) * MINUTE_S + MINUTE_S <= now_minute]
            self._pending = [p for p in self._pending if p not in ready]
        for start, end in ready:
            self._count(start, end)

    def _count(self, start: float, end: float) -> None:
        first = math.floor(start / MINUTE_S) * MINUTE_S - REFERENCE_S
        rows = self._read_work(first, math.ceil(end / MINUTE_S) * MINUTE_S)
        self._spans = [s for s in self._spans if s[1] > first] + [(start, end)]
        result = work_lost(start, end, rows, self._spans)
        if not result.items:
            self.unmeasured += 1
            why = "; ".join(f"{s}: {r}" for s, r in result.unavailable)
            log.info("work lost to the event of %.0f-%.0f not measured: %s", start, end,
                     why or result.reason)
            return
        self.measured += 1
        with self._lock:
            for w in result.items:
                key = (w.source, w.unit)
                self._lost[key] = self._lost.get(key, 0.0) + max(0.0, w.lost)
