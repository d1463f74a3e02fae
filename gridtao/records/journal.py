"""The state journal: what the agent has changed on the GPUs, kept durably for crash recovery.

GPU power limits outlive the process that set them. If the agent is killed mid-event, the GPUs
stay capped and the next start would take the capped limits for the ones to restore. The journal
(one small JSON file) holds the limits found by the *first* run, the events being held (enough
to re-create each one exactly: target, baseline, the per-GPU draw its caps were cut from, and
when it ends) and a heartbeat (``alive_wall``) that dates a crash.

Durability: every version is written to a temporary file, fsynced, renamed over the journal and
the directory fsynced, so a crash leaves either the old or the new version, never a mix. Writes
happen on a background thread (the hot path only hands over a record); the newest state wins.
A write that fails (a full disk) is retried at the next change or heartbeat, whichever comes
first; while writes fail, :attr:`Journal.health` says so (one log line per change of problem,
one when writing works again), since an event held then would not survive a crash.
A clean stop deletes the file: a journal found at start means the previous run did not stop
cleanly. An exclusive ``flock`` on ``<path>.lock`` keeps two agents off one journal (the kernel
drops it when a process dies, even by SIGKILL).

Recovery (:func:`plan_recovery`) is pure arithmetic on wall-clock times, since nothing else
survives a restart; every hold it grants is also bounded in monotonic time from the restart, so a
wall-clock jump can shorten a recovered hold but never make it longer than
``max_capped_after_crash_s``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from gridtao.clock import Clock
from gridtao.durable import fsync_dir, write_atomically
from gridtao.errors import GridtaoError
from gridtao.holdlock import LockHeld, hold_lock
from gridtao.records.health import WriteHealth

log = logging.getLogger("gridtao.records.journal")

VERSION = 1

#: Writes ``data`` durably as the file at the path (``gridtao.durable.write_atomically``); raises
#: ``OSError`` when it cannot. Tests inject one that fails as a full disk does.
Writer = Callable[[Path, bytes], None]


class JournalError(GridtaoError):
    """The journal cannot be used (locked by another agent, unreadable, unwritable)."""


@dataclass(frozen=True)
class JournalEvent:
    """One event being held. Power in mW; times Unix seconds.

    ``basis_mw`` is the per-GPU draw the event's caps were cut from; ``hold_until_wall`` is when
    its duration ends (dispatch) or its minimum hold ends (frequency); None: no end of its own.
    """

    event_id: str
    kind: str
    target_mw: float
    baseline_mw: float
    basis_mw: tuple[float, ...]
    caps_mw: tuple[int, ...]
    started_wall: float
    hold_until_wall: float | None


@dataclass(frozen=True)
class JournalState:
    """What the journal file holds. ``alive_wall`` is the last heartbeat of the writing run."""

    node: str
    gpu_uuids: tuple[str, ...]
    initial_limits_mw: tuple[int, ...]
    first_started_wall: float
    alive_wall: float
    pid: int = 0
    events: tuple[JournalEvent, ...] = ()
    safe_mode: str | None = None
    version: int = VERSION
    #: The run stopped cleanly (limits restored) but could not remove its journal (a state
    #: folder it may no longer change): the next start takes it for no crash.
    stopped: bool = False


def _event_to_json(ev: JournalEvent) -> dict[str, Any]:
    return {
        "id": ev.event_id, "kind": ev.kind, "target_mw": ev.target_mw,
        "baseline_mw": ev.baseline_mw, "basis_mw": list(ev.basis_mw), "caps_mw": list(ev.caps_mw),
        "started_wall": ev.started_wall, "hold_until_wall": ev.hold_until_wall,
    }


def to_json(state: JournalState) -> bytes:
    body = {
        "version": state.version, "node": state.node, "pid": state.pid,
        "gpu_uuids": list(state.gpu_uuids), "initial_limits_mw": list(state.initial_limits_mw),
        "first_started_wall": state.first_started_wall, "alive_wall": state.alive_wall,
        "safe_mode": state.safe_mode, "events": [_event_to_json(e) for e in state.events],
    }
    if state.stopped:
        body["stopped"] = True
    return json.dumps(body, indent=1, allow_nan=False).encode("utf-8") + b"\n"


def _num(d: dict[str, Any], key: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{key} must be a finite number")
    return float(v)


def _str(d: dict[str, Any], key: str) -> str:
    v = d[key]
    if not isinstance(v, str):
        raise ValueError(f"{key} must be a string")
    return v


def _list(d: dict[str, Any], key: str) -> list[Any]:
    v = d[key]
    if not isinstance(v, list):
        raise ValueError(f"{key} must be a list")
    return v


def from_json(data: bytes) -> JournalState:
    """Parse a journal. Raises ``ValueError`` (or ``KeyError``) naming what is wrong."""
    d = json.loads(data)
    if not isinstance(d, dict):
        raise ValueError("top level must be an object")
    if d.get("version") != VERSION:
        raise ValueError(f"unsupported version {d.get('version')!r}")
    uuids = tuple(str(u) for u in _list(d, "gpu_uuids"))
    limits = tuple(int(_num({"v": v}, "v")) for v in _list(d, "initial_limits_mw"))
    if len(limits) != len(uuids):
        raise ValueError("initial_limits_mw and gpu_uuids differ in length")
    events = []
    for raw in _list(d, "events"):
        if not isinstance(raw, dict):
            raise ValueError("events must be objects")
        basis = tuple(_num({"v": v}, "v") for v in _list(raw, "basis_mw"))
        caps = tuple(int(_num({"v": v}, "v")) for v in _list(raw, "caps_mw"))
        if len(basis) != len(uuids) or len(caps) != len(uuids):
            raise ValueError(f"event {raw.get('id')!r}: one value per GPU expected")
        hold = raw.get("hold_until_wall")
        events.append(JournalEvent(
            event_id=_str(raw, "id"), kind=_str(raw, "kind"), target_mw=_num(raw, "target_mw"),
            baseline_mw=_num(raw, "baseline_mw"), basis_mw=basis, caps_mw=caps,
            started_wall=_num(raw, "started_wall"),
            hold_until_wall=None if hold is None else _num(raw, "hold_until_wall"),
        ))
    safe = d.get("safe_mode")
    return JournalState(
        node=_str(d, "node"), gpu_uuids=uuids, initial_limits_mw=limits,
        first_started_wall=_num(d, "first_started_wall"), alive_wall=_num(d, "alive_wall"),
        pid=int(_num(d, "pid")), events=tuple(events),
        safe_mode=safe if isinstance(safe, str) else None, stopped=d.get("stopped") is True,
    )


def load_journal(path: str | os.PathLike[str]) -> JournalState | None:
    """The journal at ``path``, or None if there is none (the last run stopped cleanly).
    Raises :class:`JournalError` if it exists but cannot be read or parsed."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise JournalError(f"journal {p}: cannot read: {e.strerror or e}") from None
    try:
        return from_json(data)
    except (ValueError, KeyError, TypeError) as e:
        raise JournalError(f"journal {p}: unreadable ({type(e).__name__}: {e})") from None


# ---- recovery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryPlan:
    """What a restart does with a journal: ``restore`` pairs an event with how long to hold it
    from now (s) before its release ramp starts; ``expired`` pairs an event id with why it is
    not restored. ``crash_age_s`` is how long ago the previous run last wrote its heartbeat."""

    restore: tuple[tuple[JournalEvent, float], ...]
    expired: tuple[tuple[str, str], ...]
    crash_age_s: float


def plan_recovery(
    state: JournalState,
    *,
    now_wall: float,
    max_capped_after_crash_s: float,
    max_event_s: float,
    ramp_s: float,
) -> RecoveryPlan:
    """Decide, per journaled event, whether to hold it again and for how long.

    The event must be fully released (hold + ``ramp_s`` of release ramp) by the earliest of:
    its own end (``hold_until_wall``; its ramp then comes after, as in normal operation), its
    start + ``max_event_s``, and the crash (last heartbeat) + ``max_capped_after_crash_s``. A
    crash time in the future (the wall clock went back) counts as now.
    """
    crash_age_s = max(0.0, now_wall - state.alive_wall)
    restore: list[tuple[JournalEvent, float]] = []
    expired: list[tuple[str, str]] = []
    for ev in sorted(state.events, key=lambda e: e.started_wall):
        by_bound = max_capped_after_crash_s - crash_age_s - ramp_s
        by_max = min(max_event_s, max(0.0, ev.started_wall + max_event_s - now_wall)) - ramp_s
        hold_s = min(by_bound, by_max)
        why = "crash bound" if by_bound <= by_max else "max_event_s"
        if ev.hold_until_wall is not None and ev.hold_until_wall - now_wall < hold_s:
            hold_s = ev.hold_until_wall - now_wall
            why = "its duration"
        if hold_s > 0:
            restore.append((ev, hold_s))
        else:
            expired.append((ev.event_id, f"{why} is over"))
    return RecoveryPlan(tuple(restore), tuple(expired), crash_age_s)


# ---- the writer ----------------------------------------------------------------------------


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


def match_gpus(state: JournalState, uuids: Sequence[str]) -> str | None:
    """Why ``state`` does not belong to these GPUs, or None if it does."""
    if tuple(uuids) != state.gpu_uuids:
        return (f"journal lists GPUs {list(state.gpu_uuids)} but this node has {list(uuids)}")
    return None
