"""Demand-response events (OpenADR-style): a queue of scheduled reductions. Pure logic.

An event from a ``dr`` dispatch (:class:`~gridtao.wire.messages.DrDispatch`) has a level that
is a function of time only (monotonic seconds, the wire's Unix ``start_at`` mapped once at
receipt)::

    0 ....... ramp in over ramp_s ....... 1 (start) ... hold duration_s ... 1 (end)
      ... recovery over recovery_s ... 0

The reduction it asks is ``level x amount``: ``reduction_w``, or ``fraction`` of the reference
power the caller passes (the node's power before the event, at the settlement point), never more
than the enrolled DR capacity. Events are kept in start order; where they overlap the deepest
binds (two events ask for one reduction of the same baseline, not a sum). An event is resolved
(dropped) once its recovery is over. ``cancel`` removes an event that has not begun ramping, or
starts the recovery of a running one from the level it had reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gridtao.wire.messages import DrDispatch

DrState = Literal["scheduled", "ramping", "active", "recovering", "done"]

MAX_QUEUED = 32


@dataclass
class DrEvent:
    """One accepted event. Times are monotonic seconds; ``start_s`` is when full level is due."""

    event_id: str
    start_s: float
    start_wall: float
    duration_s: float
    ramp_s: float
    recovery_s: float
    reduction_w: float | None
    fraction: float | None
    cancelled_at_s: float | None = None
    level_at_cancel: float = 0.0

    @property
    def ramp_start_s(self) -> float:
        return self.start_s - self.ramp_s

    @property
    def end_s(self) -> float:
        """When the hold ends (or when it was cancelled)."""
        if self.cancelled_at_s is not None:
            return self.cancelled_at_s
        return self.start_s + self.duration_s

    @property
    def done_s(self) -> float:
        return self.end_s + self.recovery_s

    def _uncancelled_level(self, t: float) -> float:
        if t < self.ramp_start_s:
            return 0.0
        if t < self.start_s:
            return (t - self.ramp_start_s) / self.ramp_s  # ramp_s > 0 here
        end = self.start_s + self.duration_s
        if t < end:
            return 1.0
        if t < end + self.recovery_s:
            return 1.0 - (t - end) / self.recovery_s
        return 0.0

    def level(self, t: float) -> float:
        """Fraction of the event's amount asked at time ``t``, in [0, 1]."""
        if self.cancelled_at_s is None or t < self.cancelled_at_s:
            return self._uncancelled_level(t)
        if self.recovery_s <= 0 or t >= self.done_s:
            return 0.0
        return self.level_at_cancel * (1.0 - (t - self.cancelled_at_s) / self.recovery_s)

    def state(self, t: float) -> DrState:
        if t >= self.done_s:
            return "done"
        if t >= self.end_s:
            return "recovering"
        if t >= self.start_s:
            return "active"
        return "ramping" if t >= self.ramp_start_s else "scheduled"

    def amount_w(self, reference_w: float, capacity_w: float) -> float:
        asked = self.reduction_w if self.reduction_w is not None else (
            (self.fraction or 0.0) * max(0.0, reference_w))
        return min(asked, capacity_w)


class DrSchedule:
    """The node's queue of demand-response events, bounded by the enrolled ``capacity_w``."""

    def __init__(self, capacity_w: float, *, max_events: int = MAX_QUEUED) -> None:
        if not capacity_w > 0 or max_events < 1:
            raise ValueError("capacity_w must be > 0 and max_events >= 1")
        self.capacity_w = capacity_w
        self._max_events = max_events
        self._events: list[DrEvent] = []

    def add(self, msg: DrDispatch, *, now_s: float, wall_s: float) -> str | None:
        """Queue ``msg`` received at ``now_s`` (monotonic) / ``wall_s`` (Unix). Returns None if
        accepted, else the reason it was refused (for the ack)."""
        self._prune(now_s)
        if any(ev.event_id == msg.id for ev in self._events):
            return f"event {msg.id!r} is already scheduled"
        if msg.reduction_w is not None and msg.reduction_w > self.capacity_w:
            return (f"reduction_w {msg.reduction_w:g} W exceeds the enrolled demand-response "
                    f"capacity {self.capacity_w:g} W")
        start_wall = wall_s if msg.start_at is None else msg.start_at
        start_s = now_s + (start_wall - wall_s)
        ev = DrEvent(msg.id, start_s, start_wall, msg.duration_s, msg.ramp_s, msg.recovery_s,
                     msg.reduction_w, msg.fraction)
        if ev.done_s <= now_s:
            return "the event is already over (start_at + duration_s + recovery_s is past)"
        if len(self._events) >= self._max_events:
            return f"{len(self._events)} demand-response events already queued"
        self._events.append(ev)
        self._events.sort(key=lambda e: (e.ramp_start_s, e.start_s))
        return None

    def cancel(self, event_id: str, *, now_s: float) -> bool:
        """Cancel ``event_id``; False if it is not queued (or already resolved)."""
        self._prune(now_s)
        for k, ev in enumerate(self._events):
            if ev.event_id != event_id:
                continue
            if now_s < ev.ramp_start_s:
                del self._events[k]
            elif ev.cancelled_at_s is None and now_s < ev.end_s:
                ev.level_at_cancel = ev.level(now_s)
                ev.cancelled_at_s = now_s
            return True
        return False

    def holds(self, event_id: str, now_s: float) -> bool:
        """Whether ``event_id`` is queued or in force now and not cancelled."""
        self._prune(now_s)
        return any(ev.event_id == event_id and ev.cancelled_at_s is None for ev in self._events)

    def __contains__(self, event_id: object) -> bool:
        return any(ev.event_id == event_id for ev in self._events)

    def required_reduction_w(self, now_s: float, reference_w: float) -> float:
        """The reduction asked now, W: the deepest of the overlapping events."""
        self._prune(now_s)
        best = 0.0
        for ev in self._events:
            if ev.ramp_start_s > now_s:
                break  # sorted by ramp start: nothing later has begun
            best = max(best, ev.level(now_s) * ev.amount_w(reference_w, self.capacity_w))
        return best

    def events(self, now_s: float) -> list[tuple[DrEvent, DrState]]:
        """Queued events in start order with their state now."""
        self._prune(now_s)
        return [(ev, ev.state(now_s)) for ev in self._events]

    def _prune(self, now_s: float) -> None:
        self._events = [ev for ev in self._events if ev.done_s > now_s]
