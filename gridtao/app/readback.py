"""What the GPUs hold now, read back off the control threads: each GPU's enforced limit (into
the island's record, so status and metrics never show a planned limit, and a change by another
process shows) and its energy counter.

The controller loop runs :meth:`ReadBack.read` in a worker thread about twice a second, so a
slow or hung driver call delays only these readings, never tier 1 or a trigger (a read holds a
GPU's write lock only for that one GPU's call).

With ``on_reading``, each round also hands the node's IT power over the round (from the energy
counters: joules between two rounds over the seconds between them, so no extra driver call)
and the summed enforced limits to it (the history recorder, gridtao/history/recorder.py).
:class:`LedgerFeeds` takes each round's counters on to the energy and work ledgers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry

from gridtao.clock import Clock, MonotonicClock
from gridtao.gpu.backend import GpuBackend, GpuError
from gridtao.gpu.counters import counter_increase_mj
from gridtao.history import HistoryRecorder
from gridtao.records.energy import EventEnergy
from gridtao.records.liveledger import LiveLedger
from gridtao.records.report.work import source_units
from gridtao.safety.island import OutsideChange, SafetyIsland
from gridtao.work.collectors import LedgerCollector
from gridtao.work.rapl import PackageReading
from gridtao.work.sources import WorkScraper

__all__ = ["LedgerFeeds", "ReadBack"]


class ReadBack:
    """Reads for ``indices`` of ``backend``; :attr:`energy_mj` from any thread."""

    def __init__(self, backend: GpuBackend, island: SafetyIsland,
                 indices: Sequence[int], *, clock: Clock | None = None,
                 on_reading: Callable[[float, float, float], None] | None = None,
                 on_outside_change: Callable[[OutsideChange], None] | None = None,
                 on_energy: Callable[[float, tuple[int | None, ...]], None] | None = None,
                 ) -> None:
        """``on_reading(wall_s, it_w, limit_w)``: called from the worker thread after each
        round that could measure power (every GPU's counter read this round and the last).
        ``on_outside_change``: called from the worker thread for each limit the island found
        set by someone else (and adopted as the GPU's resting limit). ``on_energy(t_s,
        energy_mj)``: called from the worker thread after every round with its monotonic time
        and the counters as read (the per-event energy ledger, gridtao/records/energy.py)."""
        self._backend = backend
        self._island = island
        self._indices = tuple(indices)
        self._lock = threading.Lock()
        self._round_lock = threading.Lock()
        self._energy_mj: tuple[int | None, ...] = (None,) * len(self._indices)
        self._clock = clock if clock is not None else MonotonicClock()
        self._on_reading = on_reading
        self._on_outside_change = on_outside_change
        self._on_energy = on_energy
        self._last: tuple[float, tuple[int | None, ...]] | None = None

    @property
    def energy_mj(self) -> tuple[int | None, ...]:
        """Each GPU's energy counter as last read (mJ since the driver loaded; None: not read
        yet, or no counter, as on GPUs before Volta)."""
        with self._lock:
            return self._energy_mj

    def read(self) -> None:
        """One round of read-backs (blocking: run it off the event loop). Rounds never overlap
        (the agent's last one, at stop, may meet the controller's)."""
        with self._round_lock:
            self._round()

    def _round(self) -> None:
        for change in self._island.refresh_enforced():
            if self._on_outside_change is not None:
                self._on_outside_change(change)
        energy: list[int | None] = []
        for index in self._indices:
            try:
                energy.append(self._backend.energy_mj(index))
            except GpuError:
                energy.append(None)
        now = tuple(energy)
        with self._lock:
            self._energy_mj = now
        if self._on_energy is not None:
            self._on_energy(self._clock.now(), now)
        if self._on_reading is not None:
            self._report(now)

    def _report(self, energy: tuple[int | None, ...]) -> None:
        assert self._on_reading is not None
        t = self._clock.now()
        last, self._last = self._last, (t, energy)
        if last is None or t <= last[0]:
            return
        increases = [None if e is None or p is None else counter_increase_mj(p, e, t - last[0])
                     for e, p in zip(energy, last[1], strict=True)]
        # A GPU without a reading, or a counter reset (driver reload; a 64-bit wrap is counted
        # through): the node's power over this round is unknown, skip it.
        if any(x is None for x in increases):
            return
        joules = sum(x for x in increases if x is not None) / 1000.0
        self._on_reading(self._clock.wall(), joules / (t - last[0]),
                         sum(self._island.enforced_mw()) / 1000.0)


class LedgerFeeds:
    """What each read-back round and each event's energy figures feed besides the island: the
    per-event energy ledger (gridtao/records/energy.py), the history's per-GPU energy and work
    (gridtao/history/, a queue put each), and the live ledger of energy per unit and work lost
    (gridtao/records/liveledger.py) with its Prometheus collector.

    ``gpus``: each GPU in the agent's order as (driver index, UUID); ``power_mw()``: tier 1's
    latest instant powers (mW, no driver call); ``record(fields)``: writes an event's
    ``event_energy`` audit record. Threads: :meth:`round` and :meth:`event_energy` run on the
    read-back worker thread; nothing here calls the driver or touches SQLite on it.
    """

    def __init__(self, *, gpus: Sequence[tuple[int, str]], clock: Clock,
                 power_mw: Callable[[], tuple[float, ...]],
                 record: Callable[[Mapping[str, object]], None],
                 recorder: HistoryRecorder | None) -> None:
        self._gpus = tuple(gpus)
        self._clock = clock
        self._power_mw = power_mw
        self._record = record
        self._recorder = recorder
        self.energy: EventEnergy | None = None  # set once built: it reports through this
        self.live: LiveLedger | None = None
        self._cpus: Callable[[], Sequence[PackageReading]] | None = None

    def attach_work(self, scraper: WorkScraper | None, registry: CollectorRegistry) -> None:
        """With work sources and a history: their scrapes into the history, and the live
        ledger computed after each of the recorder's writes (on its thread)."""
        recorder = self._recorder
        if scraper is None or recorder is None:
            return
        scraper.subscribe(recorder.offer_work)
        self.live = LiveLedger(recorder.store.gpu_rows, recorder.store.work_rows, units=[
            (spec.name, unit) for spec in scraper.specs
            for unit in source_units(spec.kind, spec.counters)])
        recorder.subscribe(self.live.after_write)
        LedgerCollector(self.live.per_unit, self.live.lost_totals, registry=registry)

    def attach_cpus(self, readings: Callable[[], Sequence[PackageReading]] | None) -> None:
        """With CPU power read (``work.cpu_power``): each round also puts each CPU package's
        energy (the reader's, since its start: wraps counted) into the history's energy
        ledger, as a device ``cpu:<package>`` of index -1, -2, ... beside the GPUs."""
        self._cpus = readings

    def round(self, t_s: float, energy_mj: tuple[int | None, ...]) -> None:
        """One round's counters (monotonic ``t_s``; mJ per GPU, None where not read)."""
        power = self._power_mw()
        if self.energy is not None:
            self.energy.feed(t_s, energy_mj, power)
        if self._recorder is not None:
            wall = self._clock.wall()
            self._recorder.offer_gpus(wall, self._gpus, energy_mj, power)
            cpus = self._cpus() if self._cpus is not None else ()
            if cpus:
                self._recorder.offer_gpus(
                    wall, tuple((-1 - k, f"cpu:{c.package}") for k, c in enumerate(cpus)),
                    tuple(round(c.energy_j * 1000.0) for c in cpus),
                    tuple(None if c.power_w is None else c.power_w * 1000.0 for c in cpus))

    def event_energy(self, fields: Mapping[str, object]) -> None:
        """An ended event's energy figures: audited, and its span (Unix s, caps to the end of
        the release) handed to the live ledger, which counts its work lost once its minutes
        are written."""
        self._record(fields)
        start, end = fields.get("started_at"), fields.get("ended_at")
        if (self.live is not None and isinstance(start, float | int)
                and isinstance(end, float | int)):
            self.live.event_over(float(start), float(end))
