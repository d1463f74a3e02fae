"""Tier 2's demand-response events into the per-event energy ledger (gridtao/records/energy.py),
so each gets an ``event_energy`` record as the island's events do.

A demand-response event asks for less over its whole span: the ramp in, the hold and the
recovery (gridtao/products/dr.py). Its reference draw is tier 2's frozen reference
(``reference_it_w`` of the tracker snapshot, IT W: the natural draw frozen when the commitment
began, or the FCR-N baseline), held over that span; the ledger measures the draw and turns both
into meter figures through the facility model, exactly as for an island event.

:class:`DrEventEnergy` watches the tracker snapshots (``dr``: each queued event with its
state and schedule) once a tier-2 period, on the controller loop, after the ``dr_state``
transitions are audited. The span's ends are the schedule's (``start_at - ramp_s`` and
``start_at + duration_s + recovery_s``, Unix s, mapped to the monotonic clock at each
observation), each clamped into the period in which the snapshots saw the change: an event
received after its ramp began starts at the observation before the one that first saw it
running (at most one tier-2 period before its receipt), and a cancelled one (its recovery
began before the hold's end; it left the queue before its scheduled end) ends when it was
seen gone at the latest. So an event that runs as scheduled has its exact span, and the
others' spans are long by at most one tier-2 period at either end: seconds in which the node
draws its reference, which add to the drawn and the reference energy alike.

Threads: :meth:`DrEventEnergy.observe` on the controller loop only; the ledger's
``event_started``/``event_ended`` are O(1) and take any thread. Times monotonic s unless named
``wall``; powers W.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gridtao.clock import Clock

__all__ = ["DrEventEnergy", "EventLedger"]

log = logging.getLogger("gridtao.app.drenergy")

#: Snapshot states in which a demand-response event asks for a reduction.
RUNNING = frozenset({"ramping", "active", "recovering"})
#: A recovery seen this long before the hold's scheduled end means a cancel (clock jitter).
CANCEL_SLACK_S = 1e-3


class EventLedger(Protocol):
    """The per-event energy ledger (``EventEnergy``, gridtao/records/energy.py)."""

    def event_started(self, event_id: str, kind: str, *, t0_s: float, wall0_s: float,
                      baseline_mw: float) -> None: ...

    def event_ended(self, event_id: str, *, t1_s: float, wall1_s: float) -> None: ...


@dataclass
class _Running:
    """One running event: when it is due to be over (monotonic s); ``measured``: handed to
    the ledger (False: tier 2 had no reference for it)."""

    done_s: float
    recovery_s: float
    measured: bool = True
    cancelled: bool = False


class DrEventEnergy:
    """Hands each demand-response event's span and reference to ``ledger`` (module docstring).
    ``kind``: the kind its ``event_energy`` record carries."""

    def __init__(self, ledger: EventLedger, clock: Clock, *, kind: str = "dr") -> None:
        self._ledger = ledger
        self._clock = clock
        self._kind = kind
        self._running: dict[str, _Running] = {}
        self._last_s: float | None = None  # the previous observation (monotonic s)

    @property
    def running(self) -> frozenset[str]:
        """The events handed over and not yet ended (controller loop)."""
        return frozenset(self._running)

    def observe(self, snapshot: Mapping[str, Any]) -> None:
        """One tracker snapshot (``Tier2.snapshot``), taken just before this call."""
        now, wall = self._clock.now(), self._clock.wall()
        since = now if self._last_s is None else self._last_s
        self._last_s = now

        def mono(at_wall: float) -> float:
            return now - (wall - at_wall)

        seen: set[str] = set()
        for event in snapshot.get("dr", []):
            event_id, state = str(event.get("id")), str(event.get("state"))
            try:
                start = float(event["start_at"])
                ramp, hold = float(event.get("ramp_s") or 0.0), float(event["duration_s"])
                recovery = float(event.get("recovery_s") or 0.0)
            except (KeyError, TypeError, ValueError):
                continue
            if not all(math.isfinite(x) for x in (start, ramp, hold, recovery)):
                continue
            if state not in RUNNING:
                continue
            seen.add(event_id)
            known = self._running.get(event_id)
            if known is None:
                reference_w = _reference_w(snapshot)
                if reference_w is None:
                    log.warning("demand-response event %r: tier 2 has no reference draw; "
                                "no event_energy record", event_id)
                    self._running[event_id] = _Running(math.inf, recovery, measured=False)
                    continue
                t0 = min(now, max(since, mono(start - ramp)))
                self._ledger.event_started(event_id, self._kind, t0_s=t0,
                                           wall0_s=wall - (now - t0),
                                           baseline_mw=reference_w * 1000.0)
                known = self._running[event_id] = _Running(mono(start + hold + recovery),
                                                           recovery)
            if (known.measured and state == "recovering" and not known.cancelled
                    and now < mono(start + hold) - CANCEL_SLACK_S):
                # Cancelled in the last period: its recovery is over recovery_s after the
                # cancel, at the latest this long from now.
                known.cancelled = True
                known.done_s = min(known.done_s, now + known.recovery_s)
        for event_id in [e for e in self._running if e not in seen]:
            known = self._running.pop(event_id)
            if not known.measured:
                continue
            t1 = min(now, max(since, known.done_s))
            self._ledger.event_ended(event_id, t1_s=t1, wall1_s=wall - (now - t1))


def _reference_w(snapshot: Mapping[str, Any]) -> float | None:
    """Tier 2's frozen IT reference (W), else its natural draw; None when it has neither."""
    for key in ("reference_it_w", "natural_it_w"):
        value = snapshot.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and (
                math.isfinite(value) and value > 0):
            return float(value)
    return None
