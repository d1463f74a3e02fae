"""The intake's state, and the steps its message handlers share.

:class:`IntakeCore` holds what :class:`~gridtao.hotpath.intake.Intake` keeps between messages
(the events held and ramping out, each accepted id's ack, the demand-response events accepted,
the last sample's time) and implements the steps every handler ends in: building and noting an
ack, counting a verdict, refusing a message (coalesced and ack-limited, rejections.py),
refusing an event no GPU took, recording an activation, and releasing and ending an event
through the island's ramp. Message routing and the frequency and dispatch handlers live in
``hotpath/intake.py``, whose invariants these steps keep: a refused message changes no GPU
setting and its ack gives the reason; every accepted event that ends is released through the
island's ramp, never dropped at full cut.

Threads: the safety island's lane thread only (hotpath/lane.py), like the intake; nothing here
locks. Times: ``received_at``/``now`` are monotonic clock seconds, ``wall`` Unix seconds; power
in mW.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gridtao.clock import Clock
from gridtao.hotpath.acks import write_fields, write_note
from gridtao.hotpath.events import EventBook, Outgoing, started_fields
from gridtao.hotpath.rejections import RejectionGate
from gridtao.hotpath.verdicts import DecisionHook, Verdicts
from gridtao.products.frequency import FrequencyMonitor
from gridtao.products.portfolio import ProductMonitor
from gridtao.safety.island import Activation, SafetyIsland
from gridtao.security.guard import Guard
from gridtao.telemetry.metrics import MessageResult, Metrics
from gridtao.wire import messages as wire

log = logging.getLogger("gridtao.intake")

__all__ = ["IntakeCore"]


class IntakeCore:
    """The intake's state and shared steps (see the module docstring); constructed as
    :class:`~gridtao.hotpath.intake.Intake`."""

    def __init__(
        self,
        island: SafetyIsland,
        topics: wire.Topics,
        *,
        clock: Clock,
        monitor: FrequencyMonitor,
        max_payload_bytes: int,
        metrics: Metrics | None = None,
        on_activation: Callable[[Activation], None] | None = None,
        on_event_ended: Callable[[str], None] | None = None,
        guard: Guard | None = None,
        on_decision: DecisionHook | None = None,
        dr: ProductMonitor | None = None,
        simulated: bool = False,
        max_sample_skew_s: float | None = None,
        rejections: RejectionGate | None = None,
    ) -> None:
        self._island = island
        # Refusals of unproven input: acks rate limited, log lines coalesced (rejections.py).
        self.rejections = rejections if rejections is not None else RejectionGate()
        # Samples dated far from this node's clock (t=0, a stuck meter, a replay) never act.
        self._max_skew_s = max_sample_skew_s
        self._topics = topics
        self._clock = clock
        self._monitor = monitor
        self._max_bytes = max_payload_bytes
        self._metrics = metrics
        self._on_activation = on_activation
        # Every event's end (its id), whether or not decisions are recorded (on_decision).
        self._on_event_ended = on_event_ended
        self._guard = guard
        self._dr = dr  # demand-response queue (kind "dr"); None: not enrolled
        #: Demand-response events accepted here: id -> when received (Unix s).
        self._dr_accepted: dict[str, float] = {}
        self._last_sample_t: float | None = None  # the last accepted sample's own time (Unix s)
        # Events held and ramping out, and every accepted id's ack (events.py).
        self._book = EventBook(topics.ack, simulated=simulated)
        self._events = self._book.held
        self._ending = self._book.ending  # released, still ramping out on the island: why
        # The verdict on each message and what it caused, for on_decision (verdicts.py).
        self._verdicts = Verdicts(on_decision, metrics=metrics, rejections=self.rejections)

    # ---- shared steps ---------------------------------------------------------------------

    def _refuse_unwritten(self, act: Activation, topic: str, wall: float,
                          extra: dict[str, object]) -> Outgoing:
        """Every GPU refused the event's write: nothing changed, so the event is not taken.
        The island lets go of its latch (it holds no GPU) and the ack says why, per GPU."""
        self._island.release(act.event_id)
        reason = f"no GPU took the new limit ({write_note(act)})"
        if topic == "dispatch":  # a valid frequency sample is not a rejected message
            self._count(topic, "rejected", event_id=act.event_id, reason=reason)
        log.error("event %s not taken: %s", act.event_id, reason)
        self._decide("event_refused", {"event": act.event_id, "kind": act.kind,
                                       "reason": reason, "failed_gpus": list(act.failed_gpus)})
        return self._ack(act.event_id, False, reason, wall, None,
                         extra=extra | write_fields(act))

    def _count_write_errors(self, act: Activation) -> None:
        if self._metrics is not None:
            for index, error in act.errors.items():
                self._metrics.count_gpu_error(index, type(error).__name__)

    def _reject(self, event_id: str | None, reason: str, received_at: float,
                wall: float) -> list[Outgoing]:
        """A refused dispatch: counted and logged (coalesced in a flood), and acked unless it
        is unproven input over the reject-ack budget (rejections.py)."""
        self._count("dispatch", "rejected")
        self._verdicts.note(event_id, reason)
        self.rejections.log("dispatch without an id" if event_id is None
                            else f"dispatch {event_id!r}", reason, received_at)
        if not self.rejections.ack_allowed(received_at, proven=self._verdicts.proven):
            return []
        # Anyone can send a message under a live event's id: its refusal must not read as the
        # event being refused. It says the event stands, unchanged.
        held = event_id is not None and self._in_force(event_id, received_at)
        return [self._ack(event_id, False, reason, wall, None,
                          extra={"in_force": True} if held else None)]

    def _in_force(self, event_id: str, now_s: float) -> bool:
        """Whether ``event_id`` names an event this node holds now: on the island, or a
        demand-response event queued or running."""
        return event_id in self._events or (
            self._dr is not None and self._dr.dr_holds(event_id, now_s=now_s))

    def _reject_sample(self, reason: str, received_at: float) -> list[Outgoing]:
        # Frequency is QoS 0 telemetry from a meter: refusals get no ack, but are counted.
        self._count("frequency", "rejected", reason=reason)
        self.rejections.log("frequency sample", reason, received_at)
        return []

    def _release(self, event_id: str, why: str) -> None:
        ev = self._events.pop(event_id, None)
        self._monitor.forget(event_id)
        if not self._island.release(event_id):
            log.debug("release of %s: island had no such active event", event_id)
        if ev is not None:
            self._ending[event_id] = why
            self._decide("event_released", {"event": event_id, "why": why})

    def _activated(self, act: Activation, received_at: float) -> None:
        if self._metrics is not None and act.commanded:
            self._metrics.observe_trigger_to_command(act.commanded_at - received_at)
        if self._on_activation is not None:
            self._on_activation(act)
        if self._verdicts.recording:
            self._decide("event_started", started_fields(act, self._events.get(act.event_id)))

    def _ended(self, event_id: str, why: str) -> None:
        """Event ``event_id`` is over: the energy ledger hears of it (recorded or not), and the
        decision is recorded."""
        if self._on_event_ended is not None:
            self._on_event_ended(event_id)
        self._decide("event_ended", {"event": event_id, "why": why})

    def _decide(self, kind: str, fields: dict[str, object]) -> None:
        self._verdicts.decide(kind, fields)

    def _ack(
        self,
        event_id: str | None,
        accepted: bool,
        reason: str | None,
        received_wall: float,
        commanded_wall: float | None,
        *,
        extra: dict[str, object] | None = None,
    ) -> Outgoing:
        self._verdicts.note(event_id, reason)
        return self._book.ack(event_id, accepted, reason, received_wall, commanded_wall,
                              extra=extra)

    def _count(self, topic: str, result: MessageResult, *, event_id: str | None = None,
               reason: str | None = None) -> None:
        self._verdicts.count(topic, result, event_id=event_id, reason=reason)
