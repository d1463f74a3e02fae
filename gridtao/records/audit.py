"""The audit trail: an append-only, hash-chained JSON-lines log of every decision the agent makes.

This module is the trail's writer (:class:`AuditTrail`). The record format and the hash chain
(one canonical JSON line per record, each linked to the one before by its hash, every file
starting with a ``file_start`` record) are in :mod:`gridtao.records.audit_chain`; the files on
disk (rotated ``<name>.<first seq, 12 digits>``, never renamed again) in
:mod:`gridtao.records.audit_files`; checking a trail in :mod:`gridtao.records.audit_verify`.
The chain's names are re-exported here, where the agent and the tests import them from.

Off the hot path: :meth:`AuditTrail.record` only appends a tuple to a bounded deque (O(1), never
blocks on I/O); a background thread serializes, hashes, writes, rotates and fsyncs. When the
queue is full the record is dropped and counted, and the writer puts a ``gap`` record with the
count into the chain, so a loss is itself on the record. ``fsync`` policy: ``always`` (each
record is fsynced before the next is written), ``interval`` (at most ``fsync_interval_s`` of
written records can be lost on power loss), ``never`` (the OS decides). Records are flushed to
the OS after each batch in every mode, so killing the process loses at most what was still
queued in memory (normally well under a second's worth).

A write the disk refuses (a full disk) is never raised anywhere: :attr:`AuditTrail.health` turns
unhealthy (one log line per change of problem, one when writing works again) and counts it.
Records the OS has not taken stay in the file's buffer (up to its size) and go out with the next
flush that works; records that do not fit are dropped and counted, and the next ``gap`` record
says how many.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from gridtao.clock import Clock, MonotonicClock
from gridtao.config.agent import AuditConfig
from gridtao.durable import fsync_dir
from gridtao.errors import GridtaoError
from gridtao.records.audit_chain import (
    FILE_START,
    GENESIS,
    PAYLOAD_TEXT_MAX,
    RECORD_KEYS,
    canonical,
    encode_record,
    json_safe,
    record_hash,
)
from gridtao.records.audit_files import read_first_seq, read_tail, rotated_files, rotated_name
from gridtao.records.health import WriteHealth

__all__ = [
    "FILE_START",
    "GENESIS",
    "PAYLOAD_TEXT_MAX",
    "RECORD_KEYS",
    "AuditError",
    "AuditTrail",
    "Opener",
    "canonical",
    "record_hash",
    "rotated_name",
]

log = logging.getLogger("gridtao.audit")


#: Opens the live file for writing: (path, ``"wb"`` or ``"r+b"``) -> a buffered binary file, as
#: :func:`open` does (the default). Tests inject one whose writes fail as a full disk's do.
Opener = Callable[[Path, str], IO[bytes]]


def _open_file(path: Path, mode: str) -> IO[bytes]:
    return open(path, mode)  # owned by the trail until close()


class AuditError(GridtaoError):
    """The audit trail cannot be opened or written (the message names the file)."""


class AuditTrail:
    """The writer. ``start()``, then ``record()`` from any thread, then ``close()``.

    Thread-safe. ``clock`` stamps records (``t`` = ``clock.wall()`` when :meth:`record` was
    called); the fsync interval runs on real time. ``opener`` opens the live file (default:
    :func:`open`). :attr:`health` tells whether the latest write or flush reached the OS.
    """

    def __init__(self, config: AuditConfig, *, clock: Clock | None = None,
                 opener: Opener = _open_file) -> None:
        if config.path is None:
            raise ValueError("audit.path is unresolved (gridtao.config.paths.with_state_paths)")
        self.config = config
        self.path = Path(config.path)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._opener = opener
        self._queue: collections.deque[tuple[float, str, Mapping[str, object]]] = (
            collections.deque()
        )
        self._max_queue = config.queue_size
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._dropped = 0  # by record(), under _lock
        self._dropped_noted = 0  # of those, already put in a gap record (writer thread)
        self._file: IO[bytes] | None = None
        self._size = 0
        self._seq = -1  # last written
        self._last_hash = GENESIS
        self._file_first_seq = 0
        self._unsynced = False
        self._last_sync = time.monotonic()
        self._rotated_to: Path | None = None  # renamed away, its successor not yet created
        self.health = WriteHealth(
            f"audit trail {self.path}", logger=log,
            consequence="decisions are kept in memory up to a buffer, then dropped and counted")
        self._busy = False  # the writer is between taking records and having written them
        self.written = 0

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Open (or continue) the trail and start the writer. Raises :class:`AuditError`."""
        if self._thread is not None:
            return
        try:
            self._open()
        except OSError as e:
            raise AuditError(f"audit.path: cannot open {self.path}: {e.strerror or e}") from None
        self._thread = threading.Thread(target=self._run, name="gridtao-audit", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, fsync, and stop the writer (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop = True
        self._wake.set()
        thread.join(timeout_s)
        if thread.is_alive():
            log.error("audit writer did not finish within %.1f s", timeout_s)
            return
        if self._file is not None:
            f, self._file = self._file, None
            try:
                self._sync_file(f)
            except OSError as e:
                self.health.failed(e)
            finally:
                with contextlib.suppress(OSError):
                    f.close()  # closes the descriptor even when its last flush fails

    @property
    def dropped(self) -> int:
        """Records lost to a full queue or a failed write since start."""
        with self._lock:
            return self._dropped

    @property
    def last_hash(self) -> str:
        """Hash of the last record written (read after :meth:`flush` or :meth:`close`)."""
        return self._last_hash

    @property
    def seq(self) -> int:
        return self._seq

    # ---- producers (any thread) ---------------------------------------------------------

    def record(self, kind: str, fields: Mapping[str, object]) -> None:
        """Queue one record. O(1); never blocks on I/O; drops (and counts) when the queue is
        full. ``fields`` must not be mutated afterwards (it is serialized later)."""
        t = self._clock.wall()
        with self._lock:
            if len(self._queue) >= self._max_queue or self._stop:
                self._dropped += 1
                return
            self._queue.append((t, kind, fields))
        if not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown); True if done."""
        deadline = time.monotonic() + timeout_s
        while self._queue or self._busy:
            if time.monotonic() > deadline or self._thread is None:
                return not self._queue
            self._wake.set()
            time.sleep(0.005)
        return True

    # ---- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        interval = self.config.fsync_interval_s
        while True:
            self._wake.wait(interval if self.config.fsync == "interval" else 1.0)
            self._wake.clear()
            self._busy = True
            try:
                self._drain()
                due = time.monotonic() - self._last_sync >= interval
                if self._unsynced and self.config.fsync == "interval" and due:
                    self._sync_noting()
            except Exception:  # the writer must outlive any one bad record or disk hiccup
                log.exception("audit writer failed")
            finally:
                self._busy = False
            if self._stop and not self._queue:
                with contextlib.suppress(Exception):
                    self._drain()
                return

    def _drain(self) -> None:
        """Write what is queued, then flush it to the OS. While writes fail this retries the
        flush (each wake: at most a second apart) even with nothing queued, so the trail's
        health clears when the disk does; the ``gap`` record for what was lost meanwhile waits
        until writes work (writing it into a failing disk would only lose it too)."""
        wrote = False
        queue = self._queue
        while queue:
            t, kind, fields = queue.popleft()
            self._write_safely(t, kind, fields)
            wrote = True
        if wrote or not self.health.healthy:
            self._flush_noting()
        with self._lock:
            dropped = self._dropped
        if dropped > self._dropped_noted and self.health.healthy:
            lost = dropped - self._dropped_noted
            self._dropped_noted = dropped
            log.warning("audit: %d records lost (queue full or write failed)", lost)
            self._write_safely(self._clock.wall(), "gap", {"dropped": lost, "total": dropped})
            self._flush_noting()

    def _flush_noting(self) -> None:
        """Hand what is buffered to the OS (first finishing a rotation a failure interrupted).
        What the OS refuses stays buffered for the next flush; the outcome goes to
        :attr:`health`, not up."""
        try:
            if self._file is None:
                self._rotate()
            assert self._file is not None
            self._file.flush()
        except OSError as e:
            self.health.failed(e)
        else:
            self.health.succeeded()

    def _write_safely(self, t: float, kind: str, fields: Mapping[str, object]) -> None:
        try:
            self._append(t, kind, fields)
        except Exception as e:  # a full disk, or a value no JSON encoder takes: note the gap
            self.health.failed(e)
            with self._lock:
                self._dropped += 1

    def _append(self, t: float, kind: str, fields: Mapping[str, object]) -> None:
        clean = json_safe(fields)
        line = self._line(t, kind, clean)
        if self._file is None or (
                self._size > 0 and self._size + len(line[0]) > self.config.rotate_bytes):
            self._rotate()  # or finish a rotation a failed write interrupted
            line = self._line(t, kind, clean)
        self._write_line(line)

    def _line(self, t: float, kind: str, fields: Any) -> tuple[bytes, str]:
        """The next record's line (with its newline) and hash."""
        return encode_record(self._seq + 1, t, kind, fields, self._last_hash)

    def _write_line(self, line: tuple[bytes, str]) -> None:
        assert self._file is not None
        data, digest = line
        self._file.write(data)
        self._size += len(data)
        self._seq += 1
        self._last_hash = digest
        self.written += 1
        self._unsynced = True
        if self.config.fsync == "always":
            self._sync_noting()  # the record is in the chain (buffered) even if this fails

    def _sync(self) -> None:
        """Flush and (unless ``never``) fsync the live file; raises ``OSError``."""
        if self._file is not None:
            self._sync_file(self._file)

    def _sync_file(self, f: IO[bytes]) -> None:
        f.flush()
        if self.config.fsync != "never":
            os.fsync(f.fileno())
        self._unsynced = False
        self._last_sync = time.monotonic()

    def _sync_noting(self) -> None:
        """:meth:`_sync` on the writer thread: a failure goes to :attr:`health`, not up."""
        try:
            self._sync()
        except OSError as e:
            self.health.failed(e)
        else:
            self.health.succeeded()

    # ---- files --------------------------------------------------------------------------

    def _open(self) -> None:
        """Continue an existing file's chain (repairing a torn last line) or start a new one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            tail = read_tail(self.path)
            if tail is not None:
                last, good_size, torn = tail
                self._file = self._opener(self.path, "r+b")
                self._file.truncate(good_size)
                self._file.seek(good_size)
                self._size = good_size
                self._seq = int(last["seq"])
                self._last_hash = str(last["hash"])
                self._file_first_seq = read_first_seq(self.path)
                if torn:
                    log.warning("audit: %s ended in a torn record (%d bytes); cut it off",
                                self.path, torn)
                    self._write_line(self._line(self._clock.wall(), "tail_truncated",
                                                {"bytes": torn}))
                    self._sync()
                return
            # The last record is unreadable: keep the file for inspection, start a new chain.
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("audit: %s has an unreadable last record; moved to %s, new chain",
                      self.path, aside)
            self._new_file(prev_file=aside.name, reason="unreadable_tail")
            return
        self._new_file(prev_file=None, reason="new")

    def _new_file(self, *, prev_file: str | None, reason: str) -> None:
        self._file = self._opener(self.path, "wb")
        self._size = 0
        self._file_first_seq = self._seq + 1
        self._write_line(self._line(self._clock.wall(), FILE_START,
                                    {"prev_file": prev_file, "reason": reason}))
        self._sync()
        fsync_dir(self.path.parent)

    def _rotate(self) -> None:
        """Rename the live file away and start its successor. Raises ``OSError`` at any step;
        called again (by :meth:`_append`), it takes up from the step that failed."""
        if self._file is not None:
            self._sync()
            f, self._file = self._file, None
            f.close()
        if self._rotated_to is None:
            target = rotated_name(self.path, self._file_first_seq)
            if target.exists():  # a chain restarted after an unreadable file: never overwrite
                target = target.with_name(f"{target.name}-{time.time_ns()}")
            os.replace(self.path, target)
            self._rotated_to = target
        prev = self._rotated_to
        try:
            self._new_file(prev_file=prev.name, reason="rotated")
        finally:
            if self._file is not None:  # created: the rotation is done even if its sync failed
                self._rotated_to = None
        self._prune()

    def _prune(self) -> None:
        keep = self.config.keep_files
        if keep <= 0:
            return
        rotated = rotated_files(self.path)
        for old in rotated[: max(0, len(rotated) - keep)]:
            with contextlib.suppress(OSError):
                old.unlink()
                log.info("audit: removed %s (keep_files %d)", old, keep)

