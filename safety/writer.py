"""Parallel power-limit writes: one pre-started thread per GPU.

A trigger must put a cap on every GPU at once, not one after another: :meth:`ParallelWriter.submit`
hands each GPU's write to that GPU's own worker (a queue put, no thread start, no disk I/O) and
:meth:`WriteBatch.wait` collects the read-backs. NVML calls release the GIL, so the writes
overlap in wall time. A write is the driver call, then a read-back of the enforced limit; with a
clock, a batch stamps :attr:`WriteBatch.commanded` when the last of its driver calls returned
(every new limit in force), before the read-backs are done.

Ordering: each GPU has exactly one worker draining a FIFO queue, and every write holds that GPU's
lock, so writes to one GPU happen one at a time in submission order. A write submitted later
always lands later. A job may carry a ``guard`` checked under the GPU's lock just before the
driver call; if it says no, the write is skipped (tier 1 uses it so that a trigger that landed
after tier 1 planned always wins).

A GPU that fails (lost, no permission) yields an outcome carrying the error; the other GPUs' writes
are unaffected. A GPU whose call hangs yields a timeout outcome after the batch
timeout while the others complete (:class:`~.errors.WriteTimeout`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import UnexpectedWriteError, WriteTimeout
from .ports import Clock, GpuPort

log = logging.getLogger("gridtao.safety")

#: Asked under GPU ``index``'s lock just before its write: False skips that write.
Guard = Callable[[int], bool]


@dataclass(frozen=True)
class WriteOutcome:
    """Result of one GPU's write.

    ``enforced_mw`` is the limit read back after the write (None when the write failed or was
    skipped); ``error`` the backend's error; ``skipped`` is True when the job's guard refused it.
    ``seq``: the GPU's access number (:meth:`ParallelWriter.note_read`), taken under its lock
    when the write was tried (0: skipped), so a record of outcomes can tell which is newer.
    """

    index: int
    requested_mw: int
    enforced_mw: int | None
    error: Exception | None = None
    skipped: bool = False
    seq: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped


Stamp = Callable[[], tuple[float, float]]


class WriteBatch:
    """Completion tracker of one :meth:`ParallelWriter.submit` call.

    ``commanded``: ``stamp()`` (clock seconds, Unix seconds) taken by the thread whose driver
    call was the batch's last to return (failed and skipped writes count as returned); None
    until then, or without a ``stamp``.
    """

    __slots__ = ("_claimed", "_done", "_guard", "_limits", "_lock", "_outcomes", "_remaining",
                 "_stamp", "_uncommanded", "commanded")

    def __init__(
        self, limits_mw: Sequence[int], guard: Guard | None = None, stamp: Stamp | None = None
    ) -> None:
        self._limits = tuple(limits_mw)
        self._guard = guard
        self._stamp = stamp
        self._outcomes: list[WriteOutcome | None] = [None] * len(self._limits)
        self._claimed = [False] * len(self._limits)
        self._remaining = self._uncommanded = len(self._limits)
        self._lock = threading.Lock()
        # Made only by a wait() that finds writes still running: most batches are complete
        # before anyone waits (the submitter does the writes itself), and an Event costs a
        # Condition and its lock on the hot path.
        self._done: threading.Event | None = None
        self.commanded: tuple[float, float] | None = None
        if self._remaining == 0:
            self.commanded = stamp() if stamp is not None else None

    def _returned(self) -> None:
        """One driver call of this batch returned (or was skipped or failed)."""
        with self._lock:
            self._uncommanded -= 1
            last = self._uncommanded == 0
        if last and self._stamp is not None:
            self.commanded = self._stamp()

    def claim(self, index: int) -> bool:
        """Take GPU ``index``'s write of this batch; False if a worker or the submitter has."""
        with self._lock:
            if self._claimed[index]:
                return False
            self._claimed[index] = True
            return True

    def _complete(self, outcome: WriteOutcome) -> None:
        with self._lock:
            self._outcomes[outcome.index] = outcome
            self._remaining -= 1
            done = self._done if self._remaining == 0 else None
        if done is not None:
            done.set()

    def wait(self, timeout_s: float) -> list[WriteOutcome]:
        """Block until every GPU's write finished or ``timeout_s`` passed; one outcome per GPU,
        in index order. A write still running at the deadline is reported as a
        :class:`~.errors.WriteTimeout` (it may still land later: the worker keeps going)."""
        with self._lock:
            if self._remaining > 0 and self._done is None:
                self._done = threading.Event()
            done = self._done if self._remaining > 0 else None
        if done is not None:
            done.wait(timeout_s)
        with self._lock:
            return [
                o
                if o is not None
                else WriteOutcome(
                    i, mw, None, WriteTimeout(f"GPU {i}: write not done in {timeout_s} s", index=i)
                )
                for i, (o, mw) in enumerate(zip(self._outcomes, self._limits, strict=True))
            ]


_Job = tuple[WriteBatch, int]


class ParallelWriter:
    """Per-GPU writer threads for ``count`` GPUs of ``backend`` (indices ``0..count-1``)."""

    def __init__(
        self, backend: GpuPort, count: int, *, timeout_s: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("need at least one GPU")
        self._backend = backend
        self._stamp: Stamp | None = (
            None if clock is None else lambda: (clock.now(), clock.wall())
        )
        self._count = count
        self.timeout_s = timeout_s
        self._locks = tuple(threading.Lock() for _ in range(count))
        # Per GPU: the limit last read back under its lock (None: unknown, as after a failed
        # write). A later read that differs was made by someone else (see last_read_mw).
        self._read_mw: list[int | None] = [None] * count
        # Per GPU, bumped under its lock by every write tried and every reading noted: orders
        # what reaches a WriteRecord from several threads (an older outcome never wins).
        self._seq = [0] * count
        self._queues: tuple[queue.SimpleQueue[_Job | None], ...] = tuple(
            queue.SimpleQueue() for _ in range(count)
        )
        self._threads: list[threading.Thread] = []
        self._state_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return bool(self._threads)

    def gpu_lock(self, index: int) -> threading.Lock:
        """The lock every write to GPU ``index`` holds."""
        return self._locks[index]

    def last_read_mw(self, index: int) -> int | None:
        """The limit GPU ``index`` was last read back enforcing (by a write or
        :meth:`note_read`), None if unknown. Call with :meth:`gpu_lock` held: no write of ours
        can then be between that reading and the caller's own."""
        return self._read_mw[index]

    def note_read(self, index: int, limit_mw: int | None) -> int:
        """GPU ``index`` was read enforcing ``limit_mw`` (None: unknown). Call with
        :meth:`gpu_lock` held. Returns the reading's access number (see :class:`WriteOutcome`)."""
        self._read_mw[index] = limit_mw
        self._seq[index] += 1
        return self._seq[index]

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        with self._state_lock:
            if self._threads:
                return
            self._threads = [
                threading.Thread(
                    target=self._run, args=(i,), name=f"gridtao-safety-gpu{i}", daemon=True
                )
                for i in range(self._count)
            ]
            for t in self._threads:
                t.start()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the workers after the writes already queued (idempotent)."""
        with self._state_lock:
            threads, self._threads = self._threads, []
        if not threads:
            return
        for q in self._queues:
            q.put(None)
        for t in threads:
            t.join(timeout_s)

    def submit(self, limits_mw: Sequence[int], guard: Guard | None = None) -> WriteBatch:
        """Queue one write per GPU and return at once; ``limits_mw[i]`` goes to GPU ``i``.

        Without running workers (before :meth:`start` or after :meth:`close`, e.g. restoring
        defaults at shutdown) the writes are done here, one after another, and the returned batch
        is already complete.
        """
        if len(limits_mw) != self._count:
            raise ValueError(f"expected {self._count} limits, got {len(limits_mw)}")
        batch = WriteBatch(limits_mw, guard, self._stamp)
        if self._threads:
            for i in range(self._count):
                self._queues[i].put((batch, i))
        else:
            log.warning("safety writer not running: writing %d GPUs in turn", self._count)
            self.help(batch)
        return batch

    def help(self, batch: WriteBatch) -> None:
        """Do, on the calling thread, the writes of ``batch`` no worker has started yet.

        Waking a worker costs tens to hundreds of microseconds on a busy or virtualised host,
        more than a fast driver call: the submitter works through the batch from the last GPU
        down while the woken workers take the rest from the first up, so a batch is never
        slower than the sequential writes nor than the parallel ones. Call it without holding
        any lock a guard may take.
        """
        for i in reversed(range(len(batch._limits))):
            # A GPU whose lock is held is busy with an earlier (maybe stuck) write: leave its
            # job to its worker, so a hung GPU can never hold the submitter past the deadline.
            if self._locks[i].locked():
                continue
            if batch.claim(i):
                batch._complete(self._write(batch, i))

    def write_all(self, limits_mw: Sequence[int], guard: Guard | None = None) -> list[WriteOutcome]:
        """:meth:`submit`, :meth:`help`, then wait up to ``timeout_s`` for every outcome."""
        batch = self.submit(limits_mw, guard)
        self.help(batch)
        return batch.wait(self.timeout_s)

    def _run(self, index: int) -> None:
        q = self._queues[index]
        while True:
            job = q.get()
            if job is None:
                return
            batch, i = job
            if batch.claim(i):
                batch._complete(self._write(batch, i))

    def _write(self, batch: WriteBatch, index: int) -> WriteOutcome:
        limit_mw, guard = batch._limits[index], batch._guard
        seq = 0  # no access taken (yet): a guard that raises is this GPU's failure too
        with self._locks[index]:
            try:
                if guard is not None and not guard(index):
                    batch._returned()
                    return WriteOutcome(index, limit_mw, None, skipped=True)
                # Until read back the limit is unknown (a failed write leaves it so); noted as
                # an access of its own, ordered with the reads.
                seq = self.note_read(index, None)
                try:
                    self._backend.command_limit_mw(index, limit_mw)
                finally:
                    batch._returned()
                enforced = self._backend.enforced_limit_mw(index)
                self._read_mw[index] = enforced
            except Exception as e:  # a failure is this GPU's, never its worker's
                if not _is_device_error(e):
                    log.exception("GPU %d: unexpected error writing its limit", index)
                    e = UnexpectedWriteError(repr(e), index=index)
                return WriteOutcome(index, limit_mw, None, e, seq=seq)
        return WriteOutcome(index, limit_mw, enforced, seq=seq)


def _is_device_error(e: Exception) -> bool:
    """A GPU backend's own, translated errors carry the GPU's ``index`` (the GPU boundary's
    contract); anything else escaping a backend is a bug, logged with its traceback."""
    return hasattr(e, "index")


class WriteRecord:
    """What the island's writes left behind, per GPU: the limit last read back (mW) and the
    error kind of a GPU whose last write failed. Logs each GPU's change between working and
    failing once, not on every write. Thread-safe."""

    def __init__(self, limits_mw: Sequence[int]) -> None:
        self._lock = threading.Lock()
        self._limits_mw = list(limits_mw)
        self._faulted: dict[int, str] = {}
        self._seq = [0] * len(self._limits_mw)  # the newest access taken, per GPU

    @property
    def limits_mw(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(self._limits_mw)

    @property
    def faulted(self) -> tuple[int, ...]:
        """GPUs whose last write failed, by index."""
        with self._lock:
            return tuple(sorted(self._faulted))

    def faults(self) -> dict[int, str]:
        """Index -> error kind of each GPU whose last write failed."""
        with self._lock:
            return dict(self._faulted)

    def reset_limits(self, limits_mw: Sequence[int]) -> None:
        with self._lock:
            self._limits_mw = list(limits_mw)

    def note_enforced(self, index: int, limit_mw: int, seq: int) -> None:
        """GPU ``index`` was read enforcing ``limit_mw`` (a periodic read-back, access number
        ``seq``); ignored if a newer access has been taken."""
        with self._lock:
            if seq > self._seq[index]:
                self._seq[index] = seq
                self._limits_mw[index] = limit_mw

    def record(self, outcomes: Sequence[WriteOutcome]) -> None:
        """Take the outcomes of a batch; one older than what was taken for its GPU (a slower
        thread's, recorded late) is ignored, and so is a skipped write. A write still running
        at the batch's deadline (a :class:`~.errors.WriteTimeout`, no access number) marks its
        GPU faulted and changes no limit: the write may still land, and its read-back will."""
        changes: list[tuple[int, Exception | None]] = []
        with self._lock:
            for o in outcomes:
                if o.skipped or (o.seq == 0 and o.error is None):
                    continue
                if o.seq != 0:
                    if o.seq <= self._seq[o.index]:
                        continue
                    self._seq[o.index] = o.seq
                if o.enforced_mw is not None:
                    self._limits_mw[o.index] = o.enforced_mw
                if o.error is not None:
                    name = type(o.error).__name__
                    if self._faulted.get(o.index) != name:
                        changes.append((o.index, o.error))
                    self._faulted[o.index] = name
                elif o.ok and self._faulted.pop(o.index, None) is not None:
                    changes.append((o.index, None))
        for index, error in changes:
            if error is None:
                log.info("GPU %d: limit writes work again", index)
            else:
                log.error("GPU %d: limit write failed: %s: %s", index, type(error).__name__, error)
