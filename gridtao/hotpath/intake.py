"""Intake: wire messages in, island actions and acks out. Runs on the safety island's thread.

Transport-agnostic and synchronous: ``on_message(topic, payload, ...)`` returns the messages to
publish. The hot path is parse -> island trigger (parallel writes) -> ack; nothing here blocks on
the controller, allocates much, or touches the disk before the caps are commanded.

Invariants: a rejected message changes no GPU setting and gets exactly one ack with a reason;
a duplicate event id is acted on once (the original ack is sent again); every accepted event
that ends is released through the island's ramp, never dropped at full cut.

With a :class:`~gridtao.security.guard.Guard`, a dispatch goes: parse -> signature -> rate limit
-> duplicate check -> freshness, replay and bounds -> island -> replay store fsync -> ack; a
frequency sample: parse -> signature, freshness and order -> rate limit -> sample time -> monitor.
The rate quota is spent only by messages that passed the checks before it.

The intake's state and the steps its handlers share (acks and verdicts, refusals, releases and
event ends) live in ``hotpath/intakecore.py`` (:class:`IntakeCore`, the base of :class:`Intake`,
so they are its own methods: no extra call layer on the path).
"""

from __future__ import annotations

import logging

from gridtao.hotpath.acks import (
    shed_fields,
    shed_note,
    shortfall_note,
    write_fields,
    write_note,
)
from gridtao.hotpath.events import DEDUP_WINDOW, HeldEvent, Outgoing
from gridtao.hotpath.intakecore import IntakeCore
from gridtao.hotpath.verdicts import DecisionHook
from gridtao.products.frequency import Activate, Release
from gridtao.wire import messages as wire

log = logging.getLogger("gridtao.intake")

__all__ = ["DecisionHook", "Intake", "Outgoing"]

RETAINED = "retained message: not acted on"
#: The reason acked when an event held again after a crash ends (records/ledger.py bounds it).
RECOVERED_END = ("ended after the agent's restart: held again from its journal for at most "
                 "journal.max_capped_after_crash_s")


class Intake(IntakeCore):
    """Validates each message, drives the island, and builds the acks."""

    @property
    def active_events(self) -> list[str]:
        return list(self._events)

    def on_message(
        self, topic: str, payload: bytes, *, received_at: float, received_wall: float,
        retained: bool = False,
    ) -> list[Outgoing]:
        if topic == self._topics.frequency:
            handle, name = self._on_frequency, "frequency"
        elif topic == self._topics.dispatch or topic == self._topics.node_dispatch:
            handle, name = self._on_dispatch, "dispatch"
        else:
            return []
        if retained:
            # A retained message is the past replayed (a command or sample left on the broker,
            # delivered again on every connection): never acted on, never acked, counted.
            self._verdicts.count(name, "rejected", reason=RETAINED)
            log.warning("retained %s message ignored (%d bytes): commands act only when sent",
                        name, len(payload))
            return []
        return self._verdicts.handle(name, handle, payload, received_at, received_wall)

    def on_tick(self) -> list[Outgoing]:
        """Time-driven work (~20 Hz): frequency recovery and dispatch durations."""
        now = self._clock.now()
        self.rejections.flush(now)
        unrecorded = self.rejections.take_unrecorded() if self._verdicts.recording else 0
        if unrecorded:
            self._decide("rejections_unrecorded", {"count": unrecorded,
                                                   "at": round(self._clock.wall(), 3)})
        out: list[Outgoing] = []
        for action in self._monitor.on_tick(now):
            if isinstance(action, Activate):  # a debounced crossing confirmed by time
                # Confirmed by time: the last sample accepted is the one that held the dip.
                out.extend(self._fire(action, now, self._clock.wall(), None,
                                      self._last_sample_t))
            else:
                self._release(action.event_id, "frequency recovered")
        for ev in list(self._events.values()):
            if ev.ends_at is not None and now >= ev.ends_at:
                log.info("event %s: duration over, ramping out", ev.event_id)
                if ev.recovered:  # its sender was told the duration it asked, not this one
                    out.append(self._book.ended_ack(ev, RECOVERED_END,
                                                    round(self._clock.wall(), 6)))
                self._release(ev.event_id, "duration over")
        live = set(self._island.view().active_event_ids)
        for event_id in [e for e in self._ending if e not in live]:
            self._ended(event_id, self._ending.pop(event_id))
        # Events the island ended by itself (safety.max_event_s) must not linger here, and
        # their sender is told: an ack with ``ended_at`` and the reason.
        for event_id in [e for e in self._events if e not in live]:
            ev = self._events.pop(event_id)
            self._monitor.forget(event_id)
            why = "ended by the safety island (safety.max_event_s)"
            self._ended(event_id, why)
            out.append(self._book.ended_ack(ev, why, round(self._clock.wall(), 6)))
        return out

    def end_all(self, why: str) -> list[Outgoing]:
        """The agent is stopping (lane thread, its last call): every event still held ends
        now, each recorded (``event_ended``) and its sender told (an ack with ``ended_at``
        and ``why``), demand-response events queued or running included (cancelled); events
        already ramping out are recorded as ended (their release was acked)."""
        out: list[Outgoing] = []
        wall = round(self._clock.wall(), 6)
        for event_id, ev in list(self._events.items()):
            self._monitor.forget(event_id)
            self._ended(event_id, why)
            out.append(self._book.ended_ack(ev, why, wall))
        for event_id in self._ending:
            self._ended(event_id, why)
        # Demand-response events still queued or running: cancelled, and their sender told.
        now = self._clock.now()
        for event_id, received in self._dr_accepted.items():
            if self._dr is not None and self._dr.cancel_dr(event_id, now_s=now):
                self._ended(event_id, why)
                out.append(self._ack(event_id, True, why, received, None,
                                     extra={"scheduled": True, "ended_at": wall}))
        self._events.clear()
        self._ending.clear()
        self._dr_accepted.clear()
        return out

    def adopt(self, event_id: str, kind: str, *, ends_at: float, received_wall: float,
              commanded_wall: float | None, reached_wall: float | None = None,
              reached_power_w: float | None = None) -> None:
        """Track an event the island is holding again after a crash (records/ledger.py): it is
        released at ``ends_at`` (monotonic s), a release dispatch can end it, and its id counts
        as already seen. Its acks say the times (Unix s) its sender was told before the crash:
        receipt, caps commanded (None: it wrote no new limit) and, if it was reached,
        ``reached_at`` with the measured power then (``reached_power_w``, W). Call before the
        lane starts."""
        # Its receive time on this run's monotonic clock, so deadline_wall() stays right.
        received_at = self._clock.now() - max(0.0, self._clock.wall() - received_wall)
        extra: dict[str, object] = {"recovered": True}
        if reached_wall is not None and reached_power_w is not None:
            extra["reached_power_w"] = round(reached_power_w, 1)
        self._events[event_id] = HeldEvent(event_id, kind, ends_at, received_at, received_wall,
                                           commanded_wall, extra, reached_wall=reached_wall,
                                           recovered=True)
        # Its answer to a duplicate from now on (as the book words every ack: simulated too)
        self._book.ack(event_id, True, None, received_wall, commanded_wall, extra=dict(extra),
                       reached_wall=reached_wall)

    def deadline_wall(self, event_id: str) -> float | None:
        """Unix time at which an active event's duration ends (None: no duration)."""
        return self._book.deadline_wall(event_id)

    def received_wall(self, event_id: str) -> float | None:
        """Unix time at which an active event's trigger was received (None: not held)."""
        return self._book.received_wall(event_id)

    def reached_ack(self, event_id: str, reached_wall: float,
                    power_w: float | None = None) -> Outgoing | None:
        """The second ack for ``event_id``, with ``reached_at`` and the node's measured power
        then, ``reached_power_w`` (events.py)."""
        return self._book.reached(event_id, reached_wall, power_w)

    def activation_time(self, event_id: str) -> float | None:
        """Monotonic receive time of an active event's trigger (for trigger-to-target)."""
        return self._book.activation_time(event_id)

    # ---- frequency ------------------------------------------------------------------------

    def _on_frequency(self, payload: bytes, received_at: float, wall: float) -> list[Outgoing]:
        guard = self._guard
        try:
            data = wire.decode_object(payload, max_bytes=self._max_bytes)  # decoded once
            sample = wire.frequency_from(data)
        except wire.MessageRejected as e:
            return self._reject_sample(e.reason, received_at)
        if guard is not None:
            # The quota after the signature: unsigned junk cannot spend the meter's budget.
            problem = guard.check_frequency(data, sample.t)
            if problem is None and not guard.take("frequency", received_at):
                problem = guard.rate_reason("frequency")
            if problem is not None:
                return self._reject_sample(problem, received_at)
        # Signed samples already passed the (stricter) signed freshness; this holds for all.
        if self._max_skew_s is not None and abs(sample.t - wall) > self._max_skew_s:
            return self._reject_sample(
                f"sample time t={sample.t:.3f} is {sample.t - wall:+.1f} s from this node's "
                f"clock (limit {self._max_skew_s:g} s)", received_at)
        self._count("frequency", "accepted")
        self._last_sample_t = sample.t
        out: list[Outgoing] = []
        for action in self._monitor.on_sample(sample.hz, received_at, wall_s=wall):
            if isinstance(action, Activate):
                out.extend(self._fire(action, received_at, wall, sample.hz, sample.t))
            elif isinstance(action, Release):
                self._release(action.event_id, "frequency recovered")
        return out

    def _fire(self, action: Activate, received_at: float, wall: float, hz: float | None,
              sample_t: float | None) -> list[Outgoing]:
        act = self._island.trigger_armed(action.level_key, action.event_id)
        if act is None:
            log.warning("frequency level %s fired but is not armed yet", action.level_key)
            self._monitor.forget(action.event_id)
            return []
        source = {"source": "frequency", "hz": hz if hz is not None else action.hz,
                  "sample_t": sample_t}
        self._count_write_errors(act)
        if act.refused:
            self._monitor.forget(act.event_id)
            return [self._refuse_unwritten(act, "frequency", wall, source)]
        commanded = act.commanded_wall if act.commanded else None
        extra = source | write_fields(act)
        note = "; ".join(n for n in (shortfall_note(act), write_note(act)) if n) or None
        self._events[act.event_id] = HeldEvent(
            act.event_id, "frequency", None, received_at, wall, commanded, extra, note=note
        )
        self._activated(act, received_at)
        return [self._ack(act.event_id, True, note, wall, commanded, extra=extra)]

    # ---- dispatch -------------------------------------------------------------------------

    def _on_dispatch(self, payload: bytes, received_at: float, wall: float) -> list[Outgoing]:
        guard = self._guard
        # Cheap checks first, and the rate quota spent only by a message that passed them: junk
        # (malformed, unsigned, badly signed) can never use up what a genuine sender needs.
        try:
            data = wire.decode_object(payload, max_bytes=self._max_bytes)  # decoded once
            msg = wire.dispatch_from(data)
            addressed = wire.addressee(data)
        except wire.MessageRejected as e:
            return self._reject(e.event_id, e.reason, received_at, wall)
        if addressed is not None and addressed != self._topics.node:
            return self._reject(msg.id, f"addressed to node {addressed!r}, not this node "
                                f"({self._topics.node!r})", received_at, wall)
        if guard is not None:
            problem = guard.authenticate_dispatch(data)
            # Signed mode and a good signature: the sender is owed an ack for any refusal.
            self._verdicts.proven = problem is None and guard.signed
            if problem is None and not guard.take("dispatch", received_at):
                problem = guard.rate_reason("dispatch")
            if problem is not None:
                return self._reject(msg.id, problem, received_at, wall)
        previous = self._book.answer(msg.id)
        terms = wire.dispatch_terms(msg)
        if previous is not None:
            known = self._book.terms(msg.id)
            if known is not None and known != terms:
                first = ("the first is still in force" if self._in_force(msg.id, received_at)
                         else "the first was acted on; an id is used once")
                return self._reject(msg.id, f"id {msg.id!r} reused with a different body "
                                    f"({first})", received_at, wall)
            self._count("dispatch", "duplicate", event_id=msg.id)
            return [Outgoing(self._topics.ack, previous, expendable=True)]
        if guard is not None:
            # A shed the floor stops is cut to the floor by the island (_on_cut), on its own
            # basis: the verdict's fraction, from tier 1's reading a moment before, is not used.
            verdict = guard.admit_dispatch(msg, now_s=received_at, in_flight=len(self._events))
            if verdict.reason is not None:
                guard.after_dispatch()
                return self._reject(msg.id, verdict.reason, received_at, wall)
        if isinstance(msg, wire.DrDispatch):
            out = self._on_dr(msg, received_at, wall)
        elif isinstance(msg, wire.ReleaseDispatch):
            out = [self._on_release(msg, wall)]
        else:
            out = [self._on_cut(msg, received_at, wall)]
        if self._verdicts.result == "accepted":
            self._book.keep_terms(msg.id, terms)
        if guard is not None:
            if self._verdicts.result == "accepted":  # a cut or release that took effect
                guard.accepted(msg, now_s=received_at)
            guard.after_dispatch()
        return out

    def _on_cut(self, msg: wire.ShedDispatch | wire.CapDispatch, received_at: float,
                wall: float) -> Outgoing:
        floor_mw = self._guard.node_floor_mw if self._guard is not None else 0.0
        if isinstance(msg, wire.ShedDispatch):
            # The floor is applied by the island, to the very draw it cuts from: the bounds
            # judged the shed on tier 1's reading of a moment before.
            act = self._island.trigger_shed(msg.id, msg.fraction, floor_mw=floor_mw)
        else:
            act = self._island.trigger_cap(msg.id, msg.node_w)
        self._count_write_errors(act)
        if act.refused:
            return self._refuse_unwritten(act, "dispatch", wall, {})
        self._count("dispatch", "accepted")
        commanded = act.commanded_wall if act.commanded else None
        extra = write_fields(act)
        if isinstance(msg, wire.ShedDispatch):  # what a shed delivers: its own figures
            shortfall = shed_note(act, msg.fraction, floor_mw)
            extra |= shed_fields(act, msg.fraction)
        else:
            shortfall = shortfall_note(act)
        note = "; ".join(n for n in (shortfall, write_note(act)) if n) or None
        self._events[msg.id] = HeldEvent(
            msg.id, type(msg).KIND, received_at + msg.duration_s, received_at, wall, commanded,
            extra, note=note,
        )
        self._activated(act, received_at)
        return self._ack(msg.id, True, note, wall, commanded, extra=extra)

    def _on_dr(self, msg: wire.DrDispatch, received_at: float, wall: float) -> list[Outgoing]:
        """Queue a demand-response event: nothing is written now, tier 2 follows the queue."""
        reason = ("this node is not enrolled in demand response" if self._dr is None
                  else self._dr.schedule_dr(msg, now_s=received_at, wall_s=wall))
        if reason is not None:
            return self._reject(msg.id, reason, received_at, wall)
        self._count("dispatch", "accepted", event_id=msg.id)
        self._decide("dr_scheduled", {"event": msg.id, "start_at": msg.start_at,
                                      "duration_s": msg.duration_s})
        self._dr_accepted[msg.id] = wall
        while len(self._dr_accepted) > DEDUP_WINDOW:
            self._dr_accepted.pop(next(iter(self._dr_accepted)))
        return [self._ack(msg.id, True, None, wall, None, extra={"scheduled": True})]

    def _on_release(self, msg: wire.ReleaseDispatch, wall: float) -> Outgoing:
        if msg.ref not in self._events and self._dr is not None and self._dr.cancel_dr(
            msg.ref, now_s=self._clock.now()
        ):
            self._count("dispatch", "accepted", event_id=msg.id)
            self._decide("dr_cancelled", {"event": msg.ref, "by": msg.id})
            return self._ack(msg.id, True, None, wall, None)  # nothing written now
        if msg.ref not in self._events:
            self._count("dispatch", "rejected")
            return self._ack(msg.id, False, f"no active event {msg.ref!r} to release", wall, None)
        self._release(msg.ref, f"release dispatch {msg.id!r}")
        self._count("dispatch", "accepted")
        return self._ack(msg.id, True, None, wall, None)  # the ramp-out writes, not this ack
