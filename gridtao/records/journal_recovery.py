"""Crash recovery from the state journal: whether a journal left by a crashed run belongs to
this node's GPUs, and which of its events to hold again, and for how long.

Recovery (:func:`plan_recovery`) is pure arithmetic on wall-clock times, since nothing else
survives a restart; every hold it grants is also bounded in monotonic time from the restart, so a
wall-clock jump can shorten a recovered hold but never make it longer than
``max_capped_after_crash_s``. Times in seconds (walls: Unix seconds).

Pure functions, no state: called once at start (gridtao/records/ledger.py), from any thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gridtao.records.journal_format import JournalEvent, JournalState

__all__ = ["RecoveryPlan", "match_gpus", "plan_recovery"]


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


def match_gpus(state: JournalState, uuids: Sequence[str]) -> str | None:
    """Why ``state`` does not belong to these GPUs, or None if it does."""
    if tuple(uuids) != state.gpu_uuids:
        return (f"journal lists GPUs {list(state.gpu_uuids)} but this node has {list(uuids)}")
    return None
