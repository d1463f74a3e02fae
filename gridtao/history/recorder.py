"""Records the node's IT draw into the history store from a background thread.

:meth:`HistoryRecorder.offer` is for the agent's busy threads: it puts the sample on a bounded
queue and returns at once; when the queue is full the sample is dropped and counted
(``dropped``), never waited for. The recorder's own thread (a daemon, ``gridtao-history``) takes
the samples, aggregates them (:class:`~gridtao.history.aggregate.MinuteAggregator`), writes
each completed minute to the store, and prunes rows older than ``retention_days`` once an hour
(and once at start).

A write that fails (:class:`~gridtao.history.store.HistoryError`: disk full, file read-only or
damaged) loses those rows, is counted (``errors``, ``rows_lost``) and logged once per change of
the problem, with one more line when writing works again; it is never raised into the caller.
The recorder keeps trying with the next minute.

:meth:`close` stops the thread after it has written what was queued, then closes the store (if
the recorder owns it). The minute still open at that moment is dropped, not written as a partial
row: a restart mid-minute then leaves that minute out rather than storing a short one.

Times: samples carry Unix seconds (``Clock.wall()``); the prune interval is measured on the
injected clock's monotonic ``now()`` and the prune cutoff on its ``wall()``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading

from gridtao.clock import Clock, MonotonicClock
from gridtao.history.aggregate import MinuteAggregator
from gridtao.history.store import HistoryError, HistoryStore, MinuteRow

__all__ = ["HistoryRecorder"]

log = logging.getLogger("gridtao.history")

_Item = tuple[float, float, float | None, bool]


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
    def ignored(self) -> int:
        """Samples the aggregator ignored (clock stepped back, invalid values)."""
        return self._aggregator.ignored

    def offer(self, t_s: float, it_w: float, limit_w: float | None,
              event_active: bool) -> bool:
        """Queue one sample (Unix seconds, W, W or ``None``, activation in force). Never blocks;
        returns False when the sample was dropped (queue full, or the recorder closed)."""
        if self._stop.is_set():
            return False
        try:
            self._queue.put_nowait((t_s, it_w, limit_w, event_active))
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
        while True:
            try:
                first = self._queue.get(timeout=self._poll_s)
            except queue.Empty:
                if self._stop.is_set():
                    return
                self._maybe_prune()
                continue
            batch = [first]
            while True:  # take what else is waiting: one transaction for a burst of rows
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows: list[MinuteRow] = []
            try:
                for t_s, it_w, limit_w, event_active in batch:
                    rows += self._aggregator.add(t_s, it_w, limit_w, event_active)
                if rows:
                    self._write(rows)
                self._maybe_prune()
            except Exception as e:  # a bug must not kill the thread and silently end history
                self.errors += 1
                self._problem(f"unexpected {type(e).__name__}: {e}")

    def _write(self, rows: list[MinuteRow]) -> None:
        try:
            self.rows_written += self._store.write(rows)
        except HistoryError as e:
            self.errors += 1
            self.rows_lost += len(rows)
            self._problem(str(e))
        else:
            self._recovered()

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
