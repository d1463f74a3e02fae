"""Records the node's IT draw, each GPU's energy and the work sources' work into the history
store from a background thread.

:meth:`HistoryRecorder.offer` (the node's IT draw), :meth:`~HistoryRecorder.offer_gpus` (a
read-back round's energy counters and powers) and :meth:`~HistoryRecorder.offer_work` (a work
source's scrape) are for the agent's busy threads: each puts its item on one bounded queue and
returns at once; when the queue is full the item is dropped and counted (``dropped``), never
waited for. The recorder's own thread (a daemon, ``gridtao-history``) takes the items,
aggregates them (:class:`~gridtao.history.aggregate.MinuteAggregator`,
:class:`~gridtao.history.gpuenergy.GpuEnergyAggregator`,
:class:`~gridtao.history.workcount.WorkAggregator`), writes once a minute (when a minute
closes) what it measured since its last write with the counters' readings it ends at, in one
transaction merged into the stored minutes, and prunes rows older than ``retention_days`` once
an hour (and once at start). At start it reads the stored readings, so a restarted agent counts
the GPUs' energy and the sources' work from where the last one stopped (no double count; the
time it was down is bridged by the counters).

A write that fails (:class:`~gridtao.history.store.HistoryError`: disk full, file read-only or
damaged) loses those rows, is counted (``errors``, ``rows_lost``) and logged once per change of
the problem, with one more line when writing works again; it is never raised into the caller.
The recorder keeps trying with the next minute.

:meth:`close` stops the thread after it has written what was queued, then closes the store (if
the recorder owns it). The minute still open at that moment is written as a partial row, and
the next agent's first partial row of that minute is merged into it (gridtao/history/rows.py).

Times: samples carry Unix seconds (``Clock.wall()``); the prune interval is measured on the
injected clock's monotonic ``now()`` and the prune cutoff on its ``wall()``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from gridtao.clock import Clock, MonotonicClock
from gridtao.history.aggregate import MinuteAggregator
from gridtao.history.gpuenergy import GpuEnergyAggregator, GpuId
from gridtao.history.rows import Batch
from gridtao.history.store import HistoryError, HistoryStore, MinuteRow
from gridtao.history.workcount import WorkAggregator, WorkKey

__all__ = ["HistoryRecorder"]

log = logging.getLogger("gridtao.history")


class _Sample(NamedTuple):
    t_s: float
    it_w: float
    limit_w: float | None
    event_active: bool


class _Round(NamedTuple):
    wall_s: float
    gpus: Sequence[GpuId]
    energy_mj: Sequence[int | None]
    power_mw: Sequence[float | None]


class _Scrape(NamedTuple):
    wall_s: float
    source: str
    source_kind: str
    gpus: Sequence[int]
    values: Mapping[WorkKey, float]


_Item = _Sample | _Round | _Scrape


class HistoryRecorder:
    """Background writer of the minute history (see the module docstring).

    ``store``: where rows go; closed by :meth:`close` when ``owns_store``. ``retention_days``
    (> 0): rows older than this are pruned. ``queue_size``: samples held while the thread is
    behind (at 2 Hz the default is over half an hour). ``max_hold_s``: see
    :class:`MinuteAggregator`. ``prune_interval_s``: seconds between prunes (monotonic).
    ``poll_s``: how long the thread waits for a sample before it checks for work and stop.

    Thread-safe: ``offer`` may be called from any thread; counters are read without a lock
    (ints, updated by one writer each).
    """

    def __init__(self, store: HistoryStore, *, retention_days: float = 35.0,
                 queue_size: int = 4096, clock: Clock | None = None, max_hold_s: float = 2.0,
                 prune_interval_s: float = 3600.0, poll_s: float = 0.5,
                 owns_store: bool = True) -> None:
        if not (math.isfinite(retention_days) and retention_days > 0):
            raise ValueError(f"retention_days must be > 0, got {retention_days}")
        self._store = store
        self._owns_store = owns_store
        self._retention_days = retention_days
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._prune_interval_s = prune_interval_s
        self._poll_s = poll_s
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=queue_size)
        self._aggregator = MinuteAggregator(max_hold_s=max_hold_s)
        self._gpus = GpuEnergyAggregator(max_hold_s=max_hold_s)
        self._work = WorkAggregator()
        self._written_minute: int | None = None  # the minute of the last write
        self._latest: float | None = None  # the newest time seen (Unix s)
        self._listeners: list[Callable[[float], object]] = []
        self._resets_said = 0
        self._stop = threading.Event()
        self._drop_lock = threading.Lock()
        self._last_problem: str | None = None
        self._last_prune: float | None = None
        #: Samples dropped because the queue was full.
        self.dropped = 0
        #: Failed writes or prunes (each logged once per change of the problem).
        self.errors = 0
        #: Rows written, and rows lost to failed writes.
        self.rows_written = 0
        self.rows_lost = 0
        self._thread = threading.Thread(target=self._run, name="gridtao-history", daemon=True)
        self._thread.start()

    @property
    def store(self) -> HistoryStore:
        """The store written to (thread-safe: any thread may read it)."""
        return self._store

    def subscribe(self, listener: Callable[[float], object]) -> None:
        """Call ``listener(wall_s)`` on the recorder's thread after each successful write, with
        the newest time the write covers (Unix s). It may read the store; an exception is
        counted in ``errors`` and logged, never raised. Subscribe before items are offered."""
        self._listeners.append(listener)

    @property
    def ignored(self) -> int:
        """Samples the aggregator ignored (clock stepped back, invalid values)."""
        return self._aggregator.ignored

    @property
    def counter_resets(self) -> int:
        """GPU intervals whose energy counter went back (measured by power instead)."""
        return self._gpus.counter_resets

    @property
    def bridged_s(self) -> float:
        """Seconds without a read-back round that GPUs' counters bridged (summed over GPUs)."""
        return self._gpus.bridged_s

    def offer(self, t_s: float, it_w: float, limit_w: float | None,
              event_active: bool) -> bool:
        """Queue one sample (Unix seconds, W, W or ``None``, activation in force). Never blocks;
        returns False when the sample was dropped (queue full, or the recorder closed)."""
        return self._put(_Sample(t_s, it_w, limit_w, event_active))

    def offer_gpus(self, wall_s: float, gpus: Sequence[GpuId],
                   energy_mj: Sequence[int | None], power_mw: Sequence[float | None]) -> bool:
        """Queue one read-back round at ``wall_s`` (Unix s): per GPU (``gpus``: its index and
        UUID) its energy counter (mJ; None: not read) and instant power (mW; None: unknown).
        The sequences must not be changed after (tuples). Never blocks; False when dropped."""
        if not len(gpus) == len(energy_mj) == len(power_mw):
            raise ValueError(f"need one reading per GPU: {len(gpus)} GPUs, {len(energy_mj)} "
                             f"counters, {len(power_mw)} powers")
        return self._put(_Round(wall_s, gpus, energy_mj, power_mw))

    def offer_work(self, wall_s: float, source: str, source_kind: str, gpus: Sequence[int],
                   values: Mapping[WorkKey, float]) -> bool:
        """Queue one successful scrape of work source ``source`` (kind ``source_kind``, mapped
        to GPU indices ``gpus``) at ``wall_s`` (Unix s): its counters' values by (model, kind).
        ``values`` must not be changed after. Never blocks; False when dropped."""
        return self._put(_Scrape(wall_s, source, source_kind, gpus, values))

    def _put(self, item: _Item) -> bool:
        if self._stop.is_set():
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._drop_lock:  # offer may run on several threads
                self.dropped += 1
            return False
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, drop the open minute, stop the thread (waiting up to
        ``timeout_s``) and close the store if owned. Idempotent."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("history: the writer thread did not stop within %.0f s", timeout_s)
            return  # the store is still in use: leave it to the daemon thread's end
        if self._owns_store:
            try:
                self._store.close()
            except HistoryError as e:
                log.warning("history: %s", e)

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        self._maybe_prune()
        self._resume()
        while True:
            try:
                first = self._queue.get(timeout=self._poll_s)
            except queue.Empty:
                if self._stop.is_set():
                    self._final_write()
                    return
                self._maybe_prune()
                continue
            batch = [first]
            while True:  # take what else is waiting: one transaction for a burst of rows
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                rows, latest = self._take(batch)
                minute = None if latest is None else math.floor(latest / 60.0) * 60
                if rows or (minute is not None and self._written_minute is not None
                            and minute > self._written_minute):
                    self._write(rows)
                if self._written_minute is None:
                    self._written_minute = minute
                elif minute is not None:
                    self._written_minute = max(self._written_minute, minute)
                self._maybe_prune()
            except Exception as e:  # a bug must not kill the thread and silently end history
                self.errors += 1
                self._problem(f"unexpected {type(e).__name__}: {e}")

    def _take(self, batch: list[_Item]) -> tuple[list[MinuteRow], float | None]:
        """Feed the aggregators; the node minutes this closed and the newest time seen."""
        rows: list[MinuteRow] = []
        latest: float | None = None
        for item in batch:
            if isinstance(item, _Sample):
                rows += self._aggregator.add(*item)
            elif isinstance(item, _Round):
                self._gpus.add(item.wall_s, item.gpus, item.energy_mj, item.power_mw)
            else:
                self._work.add(*item)
            if math.isfinite(item[0]):
                latest = item[0] if latest is None else max(latest, item[0])
        if latest is not None:
            self._latest = latest if self._latest is None else max(self._latest, latest)
        if self._gpus.counter_resets > self._resets_said:
            log.warning("history: a GPU's energy counter went back (the driver was reloaded): "
                        "that interval's energy is integrated from its power readings")
            self._resets_said = self._gpus.counter_resets
        return rows, latest

    def _resume(self) -> None:
        try:
            checkpoints = self._store.checkpoints()
        except HistoryError as e:
            self.errors += 1
            self._problem(f"{e}; GPU energy and work count from the first readings")
            return
        self._gpus.resume(checkpoints)
        self._work.resume(checkpoints)

    def _final_write(self) -> None:
        try:
            self._write(self._aggregator.finish())
        except Exception as e:
            self.errors += 1
            self._problem(f"unexpected {type(e).__name__}: {e}")

    def _write(self, rows: list[MinuteRow]) -> None:
        """Write the node minutes ``rows`` and what the GPUs and sources counted since the
        last write, with the counters' readings it ends at."""
        gpu_rows, gpu_points = self._gpus.take()
        work_rows, work_points = self._work.take()
        batch = Batch(rows, gpu_rows, work_rows, gpu_points + work_points)
        if not len(batch) and not batch.checkpoints:
            return
        try:
            self.rows_written += self._store.commit(batch)
        except HistoryError as e:
            self.errors += 1
            self.rows_lost += len(batch)
            self._problem(str(e))
            return
        self._recovered()
        for listener in self._listeners:
            if self._latest is None:
                break
            try:
                listener(self._latest)
            except Exception as e:  # a listener's bug must not stop the history
                self.errors += 1
                self._problem(f"after writing: unexpected {type(e).__name__}: {e}")

    def _maybe_prune(self) -> None:
        now = self._clock.now()
        if self._last_prune is not None and now - self._last_prune < self._prune_interval_s:
            return
        self._last_prune = now
        # The cutoff is wall time: rows are keyed by Unix seconds.
        try:
            removed = self._store.prune(self._clock.wall(), self._retention_days)
        except HistoryError as e:
            self.errors += 1
            self._problem(str(e))
            return
        if removed:
            log.debug("history: pruned %d minutes older than %g days", removed,
                      self._retention_days)

    def _problem(self, message: str) -> None:
        if message != self._last_problem:  # once per change, not once per minute
            log.error("history: %s (rows are being lost; counted)", message)
            self._last_problem = message

    def _recovered(self) -> None:
        if self._last_problem is not None:
            log.warning("history: writing again after: %s", self._last_problem)
            self._last_problem = None
