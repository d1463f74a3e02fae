"""What the audit trail and the journal hear of each message the intake handles: the verdict on
the message itself, then what it caused. Runs on the safety island's thread, like the intake.

While a message is handled its verdict is set (:meth:`Verdicts.count`, :meth:`Verdicts.note`)
and what it causes (an event started, released, refused) is held (:meth:`Verdicts.decide`);
once it is handled the verdict goes out first, then what was held, so a record of an event
always follows the record of the message that caused it. Accepted frequency samples that change
nothing are telemetry, not decisions; refusals of unproven input are recorded within the
:class:`~gridtao.hotpath.rejections.RejectionGate`'s budget (the rest are counted in one
``rejections_unrecorded`` record).
"""

from __future__ import annotations

from collections.abc import Callable

from gridtao.hotpath.events import Outgoing
from gridtao.hotpath.rejections import RejectionGate
from gridtao.telemetry.metrics import MessageResult, Metrics

__all__ = ["DecisionHook", "Verdicts"]

#: ``on_decision(kind, fields)``: every verdict and event change, for the audit trail and the
#: journal. Called on the lane's thread; must be O(1) and must not mutate ``fields`` later.
DecisionHook = Callable[[str, dict[str, object]], None]

#: A message's handler: ``(payload, received_at, received_wall)`` -> what to publish.
Handler = Callable[[bytes, float, float], list[Outgoing]]


class Verdicts:
    """The verdict on the message being handled, its metrics, and the decisions it caused.
    ``on_decision`` None: nothing is recorded (the metrics are still counted)."""

    def __init__(self, on_decision: DecisionHook | None, *, metrics: Metrics | None,
                 rejections: RejectionGate) -> None:
        self._on_decision = on_decision
        self._metrics = metrics
        self._rejections = rejections
        self.result: str | None = None
        self.event_id: str | None = None
        self.reason: str | None = None
        #: The message being handled passed its signature check (a refusal is then owed an ack).
        self.proven = False
        self._held: list[tuple[str, dict[str, object]]] | None = None  # during handle()

    @property
    def recording(self) -> bool:
        """Whether decisions are recorded at all."""
        return self._on_decision is not None

    def handle(self, topic: str, handler: Handler, payload: bytes, received_at: float,
               received_wall: float) -> list[Outgoing]:
        """Run ``handler`` on the message, then record its verdict and what it caused."""
        self.result = self.event_id = self.reason = None
        self.proven = False
        if self._on_decision is None:
            return handler(payload, received_at, received_wall)
        self._held = []
        try:
            out = handler(payload, received_at, received_wall)
        finally:
            held, self._held = self._held, None
        if self.result is not None and not (
            topic == "frequency" and self.result == "accepted" and self.event_id is None
        ) and (self.result != "rejected" or self._rejections.record_allowed(
                received_at, proven=self.proven)):
            self._on_decision("message", {
                "topic": topic, "result": self.result, "id": self.event_id,
                "reason": self.reason, "received_at": received_wall, "payload": payload,
            })
        for kind, fields in held:
            self._on_decision(kind, fields)
        return out

    def count(self, topic: str, result: MessageResult, *, event_id: str | None = None,
              reason: str | None = None) -> None:
        """The message's verdict (and its metric)."""
        self.result, self.event_id, self.reason = result, event_id, reason
        if self._metrics is not None:
            self._metrics.count_message(topic, result)

    def note(self, event_id: str | None, reason: str | None) -> None:
        """The id and reason the message was answered with."""
        self.event_id, self.reason = event_id, reason

    def decide(self, kind: str, fields: dict[str, object]) -> None:
        """A decision the message (or a tick) caused: held while a message is handled."""
        if self._held is not None:
            self._held.append((kind, fields))
        elif self._on_decision is not None:
            self._on_decision(kind, fields)
