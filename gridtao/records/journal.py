"""The state journal: what the agent has changed on the GPUs, kept durably for crash recovery.

GPU power limits outlive the process that set them. If the agent is killed mid-event, the GPUs
stay capped and the next start would take the capped limits for the ones to restore. The journal
(one small JSON file) holds the limits found by the *first* run, the events being held (enough
to re-create each one exactly: target, baseline, the per-GPU draw its caps were cut from, and
when it ends) and a heartbeat (``alive_wall``) that dates a crash.

This module is the journal's writer (:class:`Journal`). What the file holds and its format are
in :mod:`gridtao.records.journal_format`, what a restart does with one in
:mod:`gridtao.records.journal_recovery`; both are re-exported here, where the agent and the
tests import them from.

Durability: every version is written to a temporary file, fsynced, renamed over the journal and
the directory fsynced, so a crash leaves either the old or the new version, never a mix. Writes
happen on a background thread (the hot path only hands over a record); the newest state wins.
A write that fails (a full disk) is retried at the next change or heartbeat, whichever comes
first; while writes fail, :attr:`Journal.health` says so (one log line per change of problem,
one when writing works again), since an event held then would not survive a crash.
A clean stop deletes the file: a journal found at start means the previous run did not stop
cleanly. An exclusive ``flock`` on ``<path>.lock`` keeps two agents off one journal (the kernel
drops it when a process dies, even by SIGKILL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from gridtao.clock import Clock
from gridtao.durable import fsync_dir, write_atomically
from gridtao.holdlock import LockHeld, hold_lock
from gridtao.records.health import WriteHealth
from gridtao.records.journal_format import (
    VERSION,
    JournalError,
    JournalEvent,
    JournalState,
    from_json,
    load_journal,
    to_json,
)
from gridtao.records.journal_recovery import RecoveryPlan, match_gpus, plan_recovery

__all__ = [
    "VERSION",
    "Journal",
    "JournalError",
    "JournalEvent",
    "JournalState",
    "RecoveryPlan",
    "Writer",
    "from_json",
    "load_journal",
    "match_gpus",
    "plan_recovery",
    "to_json",
]

log = logging.getLogger("gridtao.records.journal")

#: Writes ``data`` durably as the file at the path (``gridtao.durable.write_atomically``); raises
#: ``OSError`` when it cannot. Tests inject one that fails as a full disk does.
Writer = Callable[[Path, bytes], None]


@dataclass
class _Pending:
    events: dict[str, JournalEvent] = field(default_factory=dict)
    safe_mode: str | None = None
    initial_limits_mw: tuple[int, ...] | None = None  # None: the opened state's
    version: int = 0  # bumped by every change


class Journal:
    """Owns the journal file for one run: :meth:`open` (lock, write), :meth:`start`, changes from
    any thread (O(1), never blocking on I/O), :meth:`close`.

    ``heartbeat_s``: seconds between rewrites when nothing changes (also the retry period of a
    failed write). ``writer``: how a version is written (default
    :func:`gridtao.durable.write_atomically`). :attr:`health` tells whether the latest write
    reached the disk; :attr:`writes` counts successful writes.
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock, heartbeat_s: float,
                 writer: Writer = write_atomically) -> None:
        if heartbeat_s <= 0:
            raise ValueError("heartbeat_s must be > 0")
        self.path = Path(path)
        self._clock = clock
        self._heartbeat_s = heartbeat_s
        self._writer = writer
        self._lock_file: IO[bytes] | None = None
        self._state: JournalState | None = None
        self._pending = _Pending()
        self._written_version = -1  # the newest version on disk
        self._tried_version = -1  # the newest version a write was attempted for
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.writes = 0
        self.health = WriteHealth(
            f"journal {self.path}", logger=log,
            consequence="events held meanwhile are not journaled and would not survive a crash")

    @property
    def failures(self) -> int:
        """Failed writes since start."""
        return self.health.write_errors

    def lock(self) -> None:
        """Take the journal's lock; raises :class:`JournalError` if another agent holds it."""
        if self._lock_file is not None:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = hold_lock(lock_path, holder=str(os.getpid()))
        except LockHeld as e:
            by = f" (pid {e.holder})" if e.holder.isdigit() else ""
            raise JournalError(
                f"journal.path: {self.path} is in use by another gridtao agent{by}, lock "
                f"{lock_path}: one agent per node id (a second agent on this machine needs "
                "GPUs of its own, and its own mqtt.node_id or journal.path)"
            ) from None
        except OSError as e:
            raise JournalError(f"journal {lock_path}: cannot open: {e.strerror or e}") from None
        self._lock_file = f

    def open(self, state: JournalState) -> None:
        """Write ``state`` synchronously (durable when this returns). Takes the lock first."""
        self.lock()
        self._state = state
        with self._cond:
            self._pending = _Pending({e.event_id: e for e in state.events}, state.safe_mode)
        try:
            self._writer(self.path, to_json(state))
        except OSError as e:  # the agent cannot start: said once, by the error
            raise JournalError(f"journal {self.path}: cannot write: {e.strerror or e}") from None
        self.health.succeeded()
        with self._cond:
            self._written_version = self._tried_version = 0
        self.writes += 1

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gridtao-journal",
                                            daemon=True)
            self._thread.start()

    def close(self, *, clean: bool) -> None:
        """Stop the writer. ``clean``: the limits are restored, remove the journal. Otherwise
        write the latest state and leave it for the next start."""
        self._stop_writer()
        if clean:
            if self._state is not None:  # never one a previous run left and this one never read
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    self._mark_stopped(e)
            if self._lock_file is not None:  # a start that failed after locking leaves none
                # Still holding the lock, so no other agent can be between open and flock.
                with contextlib.suppress(OSError):  # the lock file may stay: it is only a lock
                    self.path.with_name(self.path.name + ".lock").unlink()
            fsync_dir(self.path.parent)
        elif self._state is not None:
            self._write()
        self._unlock()

    def _mark_stopped(self, why: OSError) -> None:
        """The journal of a clean stop cannot be removed (its folder cannot be changed): write
        it over in place holding no event and ``stopped``, so the next start does not take
        this stop for a crash and hold its ended events again."""
        assert self._state is not None
        state = replace(self._state, events=(), safe_mode=None, stopped=True,
                        alive_wall=self._clock.wall())
        try:
            with open(self.path, "r+b") as f:
                f.truncate(0)
                f.write(to_json(state))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            log.error("journal %s: cannot remove it (%s) nor mark it stopped (%s): the next "
                      "start will take this clean stop for a crash", self.path,
                      why.strerror or why, e.strerror or e)
            return
        log.error("journal %s: cannot remove it (%s); marked stopped instead, with no event",
                  self.path, why.strerror or why)

    def abandon(self) -> None:
        """Stop the writer and release the lock without writing anything (what a crash does;
        for tests)."""
        self._stop_writer()
        self._unlock()

    def _stop_writer(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _unlock(self) -> None:
        f, self._lock_file = self._lock_file, None
        if f is not None:
            f.close()  # closing the descriptor drops the flock

    # ---- changes (any thread) ------------------------------------------------------------

    def add_event(self, event: JournalEvent) -> None:
        with self._cond:
            self._pending.events[event.event_id] = event
            self._changed_locked()

    def note_reached(self, event_id: str, wall: float, power_w: float | None) -> None:
        """Event ``event_id`` reached its target band at ``wall`` (Unix s), measured at
        ``power_w`` (W); nothing if it is not held."""
        with self._cond:
            ev = self._pending.events.get(event_id)
            if ev is not None:
                self._pending.events[event_id] = replace(ev, reached_wall=wall,
                                                         reached_power_w=power_w)
                self._changed_locked()

    def remove_event(self, event_id: str) -> None:
        with self._cond:
            if self._pending.events.pop(event_id, None) is not None:
                self._changed_locked()

    def clear_events(self) -> None:
        with self._cond:
            if self._pending.events:
                self._pending.events.clear()
                self._changed_locked()

    def set_initial_limits(self, limits_mw: tuple[int, ...]) -> None:
        """The limits to restore after a crash changed (an operator set one from outside)."""
        with self._cond:
            if self._pending.initial_limits_mw != limits_mw:
                self._pending.initial_limits_mw = limits_mw
                self._changed_locked()

    def set_safe_mode(self, mode: str | None) -> None:
        with self._cond:
            if self._pending.safe_mode != mode:
                self._pending.safe_mode = mode
                self._changed_locked()

    @property
    def event_ids(self) -> list[str]:
        with self._cond:
            return list(self._pending.events)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait (at most ``timeout_s`` s) until a write of the latest change was attempted
        (tests); True if it is on disk, False at once if that write failed (it is retried at
        the next change or heartbeat, not by this call)."""
        with self._cond:
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: self._tried_version >= self._pending.version or self._stop, timeout_s
            )
            return self._written_version >= self._pending.version

    def _changed_locked(self) -> None:
        self._pending.version += 1
        self._cond.notify_all()

    # ---- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                # A failed version waits for the next change or heartbeat: a full disk is
                # retried once a heartbeat, not in a loop that would starve the hot path.
                self._cond.wait_for(
                    lambda: self._stop or self._pending.version > self._tried_version,
                    self._heartbeat_s,
                )
                if self._stop:
                    return
            self._write()

    def _write(self) -> None:
        """Write the newest state with a fresh heartbeat (the writer thread, or :meth:`close`
        once it has stopped). A failure is counted and reported through :attr:`health`."""
        if self._state is None:
            return
        with self._cond:
            version = self._pending.version
            events = tuple(sorted(self._pending.events.values(), key=lambda e: e.started_wall))
            safe = self._pending.safe_mode
            initial = self._pending.initial_limits_mw or self._state.initial_limits_mw
        state = replace(self._state, events=events, safe_mode=safe, initial_limits_mw=initial,
                        alive_wall=self._clock.wall())
        try:
            self._writer(self.path, to_json(state))
        except (OSError, ValueError) as e:
            self.health.failed(e)
            with self._cond:
                self._tried_version = max(self._tried_version, version)
                self._cond.notify_all()
            return
        self.health.succeeded()
        self.writes += 1
        with self._cond:
            self._written_version = max(self._written_version, version)
            self._tried_version = max(self._tried_version, version)
            self._cond.notify_all()
