"""The safety island's state, and the steps its public operations share.

:class:`IslandCore` holds one node's island state (events, armed levels, draws, resting limits,
safe mode, generation) behind its two locks, starts and stops the per-GPU writer threads, and
implements the steps the operations of :class:`~gridtao.safety.island.SafetyIsland` are made
of: opening an event and queueing its caps, finishing an activation, ending finished events,
and restoring the resting limits. The invariants and threads are the island's
(``safety/island.py``); a method named ``*_locked`` is called with ``_lock`` held. Power is in
mW, times in clock seconds.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from types import MappingProxyType, TracebackType
from typing import Self

from .armed import ArmedTable
from .envelope import Envelope
from .latch import (
    Activation,
    EventKind,
    LatchedEvent,
    SafeMode,
    activation_of,
    most_restrictive,
)
from .ports import Clock, GpuPort
from .writer import ParallelWriter, WriteBatch, WriteRecord

__all__ = ["IslandCore"]

log = logging.getLogger("gridtao.safety")


class IslandCore:
    """The island's state and shared steps (see the module docstring); constructed through
    :class:`~gridtao.safety.island.SafetyIsland`, whose docstring gives the arguments."""

    def __init__(
        self,
        backend: GpuPort,
        *,
        clock: Clock,
        release_rate_per_s: float,
        max_event_s: float,
        write_timeout_s: float = 2.0,
        resting_mw: Sequence[int] | None = None,
        dry_run: bool = False,
    ) -> None:
        if not (release_rate_per_s > 0 and max_event_s > 0 and write_timeout_s > 0):
            raise ValueError("release rate, max event time and write timeout must be > 0")
        indices = [d.index for d in backend.devices()]
        if indices != list(range(len(indices))):
            raise ValueError(f"GPU indices must be 0..n-1, got {indices}")
        self._backend = backend
        self._clock = clock
        self._rate = release_rate_per_s
        self._dry_run = dry_run  # the backend only logs its writes: say "would write"
        self._max_event_s = max_event_s
        self._write_timeout_s = write_timeout_s
        self.envelope = Envelope([backend.power_limits(i) for i in indices])
        # Cuts are split inside this one: the envelope with minimums raised to priority floors.
        self._cut_envelope = self.envelope
        self._floors_mw: tuple[int, ...] | None = None
        self._commitment: tuple[float, float] | None = None  # (target mW, expires at)
        self._writer = ParallelWriter(
            backend, len(indices), timeout_s=write_timeout_s, clock=clock
        )
        self._lock = threading.Lock()
        self._cmd_lock = threading.Lock()
        self._generation = 0
        self._draw: tuple[float, ...] = tuple(float(d) for d in self.envelope.default_mw)
        self._frozen_draw: tuple[float, ...] | None = None
        self._armed = ArmedTable(self._cut_envelope)
        self._events: dict[str, LatchedEvent] = {}
        self._mode: SafeMode | None = None
        # Where limits return when nothing holds them: the operator's limits found at start
        # (clamped into the envelope), else the defaults.
        self._normal_mw: tuple[int, ...] = (
            tuple(self.envelope.clamp_all(resting_mw)) if resting_mw is not None
            else self.envelope.default_mw
        )
        self._resting_mw: tuple[int, ...] = self._normal_mw
        self._unread_at_start: frozenset[int] = frozenset()  # GPUs start() could not read
        self._sealed = False  # the agent is restoring at stop: tier 1 writes nothing more
        self._exits = 0  # safe states left through a ramp (names their exit events)
        self._watching = True  # refresh_enforced takes a limit it did not write as an outside one
        self._writes = WriteRecord(self.envelope.default_mw)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the per-GPU writer threads and take a first draw and limit reading (a GPU that
        cannot be read counts as drawing its default and limited at its resting limit; it is
        never written before it has been read or commanded)."""
        self._writer.start()
        draw, limits = [], []
        read: list[int | None] = []  # None: not read, so no later reading can be "changed"
        for i, default in enumerate(self.envelope.default_mw):
            try:
                draw.append(float(self._backend.instant_power_mw(i)))
                limits.append(self._backend.enforced_limit_mw(i))
                read.append(limits[-1])
            except Exception as e:  # any failure is this GPU's: the others still start
                log.warning("GPU %d: unreadable at start (%s); assuming its resting limit", i,
                            e)
                draw.append(float(default))
                limits.append(self._resting_mw[i])
                read.append(None)
        self._unread_at_start = frozenset(i for i, mw in enumerate(read) if mw is None)
        with self._lock:
            self._draw = tuple(draw)
        self._writes.reset_limits(limits)
        for i, mw in enumerate(read):
            with self._writer.gpu_lock(i):
                self._writer.note_read(i, mw)

    def close(self) -> None:
        """Stop the writer threads. Does not touch the limits: call :meth:`restore_defaults`
        first at shutdown (it still works after close, writing the GPUs in turn)."""
        self._writer.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ inputs from tiers 1-2

    def _trigger_computed(
        self, event_id: str, kind: EventKind, target_of: Callable[[float], float]
    ) -> Activation:
        with self._cmd_lock:
            with self._lock:
                existing = self._events.get(event_id)
                if existing is not None:
                    return activation_of(existing)
                draw = self._basis_locked()
                baseline = math.fsum(draw)
                requested = target_of(baseline)
                target = max(requested, float(self._cut_envelope.min_total_mw))
                caps = tuple(self._cut_envelope.cut_caps_mw(draw, target))
                ev, batch = self._open_locked(event_id, kind, None, baseline, target, caps,
                                              basis_mw=draw, requested_target_mw=requested)
            return self._finish(ev, batch)

    def _open_locked(
        self,
        event_id: str,
        kind: EventKind,
        level: str | None,
        baseline_mw: float,
        target_mw: float,
        caps_mw: tuple[int, ...],
        release_mw_per_s: float | None = None,
        *,
        basis_mw: tuple[float, ...],
        requested_target_mw: float | None = None,
    ) -> tuple[LatchedEvent, WriteBatch | None]:
        now = self._clock.now()
        ceiling = float(sum(caps_mw))
        winner = self._winner_locked(now)
        # Binding: the caps lower some limit. With no event, that is a cap under a resting
        # limit (a cap far above the draw writes nothing and claims no command).
        can_cut = self._caps_below_rest(caps_mw)
        binding = can_cut if winner is None else ceiling < winner[1]
        ev = LatchedEvent(event_id, kind, level, baseline_mw, target_mw, ceiling, caps_mw, now,
                          release_mw_per_s=release_mw_per_s, basis_mw=basis_mw,
                          requested_target_mw=requested_target_mw)
        self._events[event_id] = ev
        if self._frozen_draw is None and can_cut:
            # From now on the draw is the event's doing: armed levels and later events cut from
            # the draw before it. An event whose caps sit at or above every resting limit can
            # never cut anything, so it leaves the basis live (freezing it would keep armed
            # levels on a stale draw for as long as that event lasts).
            self._frozen_draw = basis_mw
        if not binding:
            return ev, None
        self._generation += 1
        limits = [min(c, r) for c, r in zip(caps_mw, self._resting_mw, strict=True)]
        return ev, self._writer.submit(limits)

    def _finish(self, ev: LatchedEvent, batch: WriteBatch | None) -> Activation:
        if batch is not None:
            self._writer.help(batch)
        outcomes = batch.wait(self._write_timeout_s) if batch is not None else []
        # Commanded when the last driver call returned, not after the read-backs.
        commanded = batch.commanded if batch is not None else None
        now, wall = commanded or (self._clock.now(), self._clock.wall())
        errors = {o.index: o.error for o in outcomes if o.error is not None}
        enforced: list[int | None] = [None] * len(ev.caps_mw)
        for o in outcomes:
            enforced[o.index] = o.enforced_mw
        act = Activation(
            ev.event_id, ev.kind, ev.baseline_mw, ev.target_mw, ev.caps_mw, now, wall,
            binding=batch is not None, level=ev.level, errors=MappingProxyType(errors),
            basis_mw=ev.basis_mw, dry_run=self._dry_run,
            requested_target_mw=ev.requested_target_mw, enforced_mw=tuple(enforced),
        )  # fmt: skip
        with self._lock:
            ev.activation = act
            # Armed levels are now cut from the same frozen pre-event draw.
            self._rearm_locked()
        self._writes.record(outcomes)
        if log.isEnabledFor(logging.INFO):  # the arguments cost more than the check
            outcome = ("not binding" if not act.binding
                       else "caps not written (dry run)" if self._dry_run
                       else "caps written" if len(errors) < len(ev.caps_mw)
                       else "no cap confirmed (writes timed out)" if act.timed_out
                       else "no cap written")
            log.info("event %s (%s%s): target %.1f W of %.1f W, %s, %d GPU errors",
                     ev.event_id, ev.kind, f" {ev.level}" if ev.level else "",
                     ev.target_mw / 1000, ev.baseline_mw / 1000, outcome, len(errors))
        return act

    def _end_finished(self) -> None:
        with self._cmd_lock:
            now = self._clock.now()
            with self._lock:
                rest = self._rest_locked()
                ended = [k for k, ev in self._events.items() if ev.done(now, self._rate, rest)]
                for k in ended:
                    del self._events[k]
                batch = None
                if ended and not any(self._caps_below_rest(ev.caps_mw)
                                     for ev in self._events.values()):
                    self._frozen_draw = None  # no event left that can cut: the basis is live
                    self._rearm_locked()
                if ended and not self._events:
                    self._generation += 1
                    batch = self._writer.submit(self._resting_mw)
            for k in ended:
                log.info("event %s ended", k)
            if batch is not None:
                log.info("last event ended: limits back to %s W",
                         ", ".join(f"{mw / 1000:g}" for mw in self._resting_mw))
                self._writes.record(batch.wait(self._write_timeout_s))

    def _restore(self, reason: str) -> None:
        with self._cmd_lock:
            with self._lock:
                self._generation += 1
                self._events.clear()
                self._commitment = None
                self._frozen_draw = None
                self._mode = None
                self._resting_mw = self._normal_mw
                self._rearm_locked()
                batch = self._writer.submit(self._resting_mw)
            log.warning("%s: every GPU to its resting limit, latches cleared", reason)
            self._writes.record(batch.wait(self._write_timeout_s))

    def _caps_below_rest(self, caps_mw: Sequence[int]) -> bool:
        return any(c < r for c, r in zip(caps_mw, self._resting_mw, strict=True))

    def _basis_locked(self) -> tuple[float, ...]:
        return self._frozen_draw if self._frozen_draw is not None else self._draw

    def _rearm_locked(self) -> None:
        self._armed.rearm(self._basis_locked())

    def _winner_locked(self, now: float) -> tuple[LatchedEvent, float] | None:
        return most_restrictive(self._events.values(), now, self._rate, self._rest_locked())

    def _rest_locked(self) -> float:
        """Where released ceilings end: the total of the limits the last event's end writes."""
        return float(sum(self._resting_mw))
