"""The intake's memory of events: those held, those ramping out, and the ack each accepted id
was answered with. Runs on the safety island's thread (the lane's), like the intake.

Invariants: an accepted event id is answered with the same ack, updated as the event goes
(``reached_at``, its end), for as long as it is remembered; at most ``DEDUP_WINDOW`` ids are
remembered (bounded memory under floods, the oldest forgotten first), each with the terms it
asked, so a retry is told from a reuse of the id with a different body.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass

from gridtao.safety.island import Activation
from gridtao.wire import messages as wire

__all__ = ["DEDUP_WINDOW", "EventBook", "HeldEvent", "Outgoing", "started_fields"]

DEDUP_WINDOW = 10_000  # event ids remembered for idempotency (bounded memory under floods)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    # A reject or a resent duplicate ack: the first to go if the outbox overflows, so a flood
    # of them can never push an activation's ack out.
    expendable: bool = False


@dataclass
class HeldEvent:
    """An event the island holds for this intake. Times: monotonic s, and Unix s (``_wall``)."""

    event_id: str
    kind: str
    ends_at: float | None  # monotonic s; None = until released by the frequency monitor
    received_at: float  # monotonic s
    received_wall: float
    commanded_wall: float | None  # None: nothing written (a deeper event already held the GPUs)
    ack_extra: dict[str, object] = dataclasses.field(default_factory=dict)  # also on reached_at
    reached_wall: float | None = None  # once the meter saw the target band: on every later ack
    recovered: bool = False  # held again after a crash, for less than its sender asked
    note: str | None = None  # the first ack's reason (a shortfall, a floor): on reached_at too


def started_fields(act: Activation, ev: HeldEvent | None) -> dict[str, object]:
    """The ``event_started`` record of an activation (``ev``: the event it started, if held):
    what was asked and written, and when (Unix s)."""
    return {
        "event": act.event_id, "kind": ev.kind if ev is not None else act.kind,
        "level": act.level, "baseline_mw": act.baseline_mw, "target_mw": act.target_mw,
        "caps_mw": act.caps_mw, "enforced_mw": act.enforced_mw, "binding": act.binding,
        "errors": {str(i): str(e) for i, e in act.errors.items()},
        "received_at": ev.received_wall if ev is not None else None,
        "commanded_at": act.commanded_wall if act.commanded else None,
        "duration_s": None if ev is None or ev.ends_at is None else ev.ends_at - ev.received_at,
    }


class EventBook:
    """Events held (``held``, by id) and ramping out (``ending``: id -> why it was released),
    and the acks of accepted ids. ``simulated``: every ack says so (an aggregator must never
    mistake simulated GPUs for real ones)."""

    def __init__(self, ack_topic: str, *, simulated: bool = False) -> None:
        self._topic = ack_topic
        self._simulated = simulated
        self.held: dict[str, HeldEvent] = {}
        self.ending: dict[str, str] = {}
        self._acks: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        # What each acked dispatch asked (wire.dispatch_terms), to tell a retry from a reuse.
        self._terms: dict[str, tuple[object, ...]] = {}

    def ack(self, event_id: str | None, accepted: bool, reason: str | None,
            received_wall: float, commanded_wall: float | None, *,
            extra: dict[str, object] | None = None,
            reached_wall: float | None = None) -> Outgoing:
        """The ack to send; an accepted id's is remembered as its answer to a duplicate. A
        refusal is expendable (the outbox drops it first)."""
        if self._simulated:
            extra = {**(extra or {}), "simulated": True}
        payload = wire.ack_payload(
            event_id, accepted, reason, received_wall, commanded_wall, reached_wall, extra=extra
        )
        if event_id is not None and accepted:
            self.remember(event_id, payload)
        return Outgoing(self._topic, payload, expendable=not accepted)

    def remember(self, event_id: str, payload: bytes) -> None:
        """``payload`` is ``event_id``'s answer from now on (the oldest id goes past
        ``DEDUP_WINDOW``)."""
        self._acks[event_id] = payload
        while len(self._acks) > DEDUP_WINDOW:
            old, _ = self._acks.popitem(last=False)
            self._terms.pop(old, None)

    def answer(self, event_id: str) -> bytes | None:
        """The ack ``event_id`` was last answered with, if it is remembered."""
        return self._acks.get(event_id)

    def terms(self, event_id: str) -> tuple[object, ...] | None:
        return self._terms.get(event_id)

    def keep_terms(self, event_id: str, terms: tuple[object, ...]) -> None:
        """What an accepted, remembered id asked (a later duplicate is compared with it)."""
        if event_id in self._acks:
            self._terms[event_id] = terms

    def reached(self, event_id: str, reached_wall: float,
                power_w: float | None = None) -> Outgoing | None:
        """The second ack of a held event, with ``reached_at`` and ``reached_power_w`` (the
        node's measured power then, W): also its answer to a duplicate from now on, and every
        later ack of the event (its end) keeps both."""
        ev = self.held.get(event_id)
        if ev is None:
            return None
        ev.reached_wall = reached_wall
        if power_w is not None:
            ev.ack_extra["reached_power_w"] = round(power_w, 1)
        extra = dict(ev.ack_extra)  # the first ack's fields (binding, failed_gpus, ...)
        if self._simulated:
            extra["simulated"] = True
        payload = wire.ack_payload(
            event_id, True, ev.note, ev.received_wall, ev.commanded_wall, reached_wall,
            extra=extra or None,
        )
        if event_id in self._acks:
            self._acks[event_id] = payload
        return Outgoing(self._topic, payload)

    def ended_ack(self, ev: HeldEvent, why: str, ended_wall: float) -> Outgoing:
        """The ack that tells ``ev``'s sender it ended (``ended_at``, Unix s) and why."""
        return self.ack(ev.event_id, True, why, ev.received_wall, ev.commanded_wall,
                        extra=dict(ev.ack_extra) | {"ended_at": ended_wall},
                        reached_wall=ev.reached_wall)

    def deadline_wall(self, event_id: str) -> float | None:
        """Unix time at which a held event's duration ends (None: no duration)."""
        ev = self.held.get(event_id)
        if ev is None or ev.ends_at is None:
            return None
        return ev.received_wall + (ev.ends_at - ev.received_at)

    def received_wall(self, event_id: str) -> float | None:
        """Unix time at which a held event's trigger was received (None: not held)."""
        ev = self.held.get(event_id)
        return ev.received_wall if ev is not None else None

    def activation_time(self, event_id: str) -> float | None:
        """Monotonic receive time of a held event's trigger (for trigger-to-target)."""
        ev = self.held.get(event_id)
        return ev.received_at if ev is not None else None
