"""Intake: wire messages in, island actions and acks out. Runs on the safety island's thread.

Transport-agnostic and synchronous: ``on_message(topic, payload, ...)`` returns the messages to
publish. The hot path is parse -> island trigger (parallel writes) -> ack; nothing here blocks on
the controller, allocates much, or touches the disk before the caps are commanded.

Invariants: a rejected message changes no GPU setting and gets exactly one ack with a reason;
a duplicate event id is acted on once (the original ack is sent again); every accepted event
that ends is released through the island's ramp, never dropped at full cut.

With a :class:`~gridtao.grid.guard.Guard`, a dispatch goes: parse -> rate limit -> signature ->
duplicate check -> freshness, replay and bounds -> island -> replay store fsync -> ack; a
frequency sample: rate limit -> parse -> signature, freshness and order -> monitor.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass

from gridtao.clock import Clock
from gridtao.grid import messages as wire
from gridtao.grid.frequency import Activate, FrequencyMonitor, Release
from gridtao.grid.guard import Guard
from gridtao.telemetry.metrics import Metrics
from safety.island import Activation, SafetyIsland

log = logging.getLogger("gridtao.intake")

DEDUP_WINDOW = 10_000  # event ids remembered for idempotency (bounded memory under floods)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass
class _Event:
    event_id: str
    kind: str
    ends_at: float | None  # monotonic s; None = until released by the frequency monitor
    received_at: float  # monotonic s
    received_wall: float
    commanded_wall: float


class Intake:
    """Validates each message, drives the island, and builds the acks."""

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
        guard: Guard | None = None,
    ) -> None:
        self._island = island
        self._topics = topics
        self._clock = clock
        self._monitor = monitor
        self._max_bytes = max_payload_bytes
        self._metrics = metrics
        self._on_activation = on_activation
        self._guard = guard
        self._acks: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._events: dict[str, _Event] = {}

    @property
    def active_events(self) -> list[str]:
        return list(self._events)

    def on_message(
        self, topic: str, payload: bytes, *, received_at: float, received_wall: float
    ) -> list[Outgoing]:
        if topic == self._topics.frequency:
            return self._on_frequency(payload, received_at, received_wall)
        if topic == self._topics.dispatch:
            return self._on_dispatch(payload, received_at, received_wall)
        return []

    def on_tick(self) -> list[Outgoing]:
        """Time-driven work (~20 Hz): frequency recovery and dispatch durations."""
        now = self._clock.now()
        for action in self._monitor.on_tick(now):
            self._release(action.event_id)
        for ev in list(self._events.values()):
            if ev.ends_at is not None and now >= ev.ends_at:
                log.info("event %s: duration over, ramping out", ev.event_id)
                self._release(ev.event_id)
        # Events the island ended by itself (max_event_s) must not linger here.
        live = set(self._island.view().active_event_ids)
        for event_id in [e for e in self._events if e not in live]:
            self._events.pop(event_id, None)
            self._monitor.forget(event_id)
        return []

    # ---- frequency ------------------------------------------------------------------------

    def _on_frequency(self, payload: bytes, received_at: float, wall: float) -> list[Outgoing]:
        # Frequency is QoS 0 telemetry from a meter: refusals get no ack, but are counted.
        guard = self._guard
        if guard is not None and not guard.take("frequency", received_at):
            self._count("frequency", "rejected")
            return []
        try:
            sample = wire.parse_frequency(payload, max_bytes=self._max_bytes)
        except wire.MessageRejected as e:
            self._count("frequency", "rejected")
            log.debug("frequency sample rejected: %s", e.reason)
            return []
        if guard is not None:
            problem = guard.check_frequency(payload, sample.t)
            if problem is not None:
                self._count("frequency", "rejected")
                log.info("frequency sample rejected: %s", problem)
                return []
        self._count("frequency", "accepted")
        out: list[Outgoing] = []
        for action in self._monitor.on_sample(sample.hz, received_at, wall_s=wall):
            if isinstance(action, Activate):
                act = self._island.trigger_armed(action.level_key, action.event_id)
                if act is None:
                    log.warning("frequency level %s fired but is not armed yet", action.level_key)
                    self._monitor.forget(action.event_id)
                    continue
                self._events[act.event_id] = _Event(
                    act.event_id, "frequency", None, received_at, wall, act.commanded_wall
                )
                self._activated(act, received_at)
                out.append(
                    self._ack(act.event_id, True, None, wall, act.commanded_wall,
                              extra={"source": "frequency", "hz": sample.hz, "sample_t": sample.t})
                )
            elif isinstance(action, Release):
                self._release(action.event_id)
        return out

    # ---- dispatch -------------------------------------------------------------------------

    def _on_dispatch(self, payload: bytes, received_at: float, wall: float) -> list[Outgoing]:
        guard = self._guard
        limited = guard is not None and not guard.take("dispatch", received_at)
        try:
            msg = wire.parse_dispatch(payload, max_bytes=self._max_bytes)
        except wire.MessageRejected as e:
            reason = guard.rate_reason("dispatch") if guard is not None and limited else e.reason
            return [self._reject(e.event_id, reason, wall)]
        if guard is not None:
            problem = guard.rate_reason("dispatch") if limited else (
                guard.authenticate_dispatch(payload))
            if problem is not None:
                return [self._reject(msg.id, problem, wall)]
        previous = self._acks.get(msg.id)
        if previous is not None:
            self._count("dispatch", "duplicate")
            return [Outgoing(self._topics.ack, previous)]
        note = None
        fraction = msg.fraction if isinstance(msg, wire.ShedDispatch) else None
        if guard is not None:
            verdict = guard.admit_dispatch(msg, now_s=received_at, in_flight=len(self._events))
            if verdict.reason is not None:
                guard.after_dispatch()
                return [self._reject(msg.id, verdict.reason, wall)]
            fraction, note = verdict.fraction, verdict.note
        if isinstance(msg, wire.ReleaseDispatch):
            out = self._on_release(msg, wall)
        else:
            out = self._on_cut(msg, fraction, note, received_at, wall)
        if guard is not None:
            guard.accepted(msg, now_s=received_at)
            guard.after_dispatch()
        return [out]

    def _on_cut(
        self, msg: wire.ShedDispatch | wire.CapDispatch, fraction: float | None,
        note: str | None, received_at: float, wall: float,
    ) -> Outgoing:
        if isinstance(msg, wire.ShedDispatch):
            act = self._island.trigger_shed(msg.id, fraction if fraction is not None
                                            else msg.fraction)
        else:
            act = self._island.trigger_cap(msg.id, msg.node_w)
        self._count("dispatch", "accepted")
        self._events[msg.id] = _Event(
            msg.id, type(msg).KIND, received_at + msg.duration_s, received_at, wall,
            act.commanded_wall,
        )
        self._activated(act, received_at)
        notes = [n for n in (note, _write_note(act)) if n]
        return self._ack(msg.id, True, "; ".join(notes) or None, wall, act.commanded_wall)

    def _reject(self, event_id: str | None, reason: str, wall: float) -> Outgoing:
        self._count("dispatch", "rejected")
        log.info("dispatch %s rejected: %s", event_id, reason)
        return self._ack(event_id, False, reason, wall, None)

    def _on_release(self, msg: wire.ReleaseDispatch, wall: float) -> Outgoing:
        if msg.ref not in self._events:
            self._count("dispatch", "rejected")
            return self._ack(msg.id, False, f"no active event {msg.ref!r} to release", wall, None)
        self._release(msg.ref)
        self._count("dispatch", "accepted")
        return self._ack(msg.id, True, None, wall, self._clock.wall())

    # ---- helpers --------------------------------------------------------------------------

    def _release(self, event_id: str) -> None:
        self._events.pop(event_id, None)
        self._monitor.forget(event_id)
        if not self._island.release(event_id):
            log.debug("release of %s: island had no such active event", event_id)

    def _activated(self, act: Activation, received_at: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_trigger_to_command(act.commanded_at - received_at)
        if self._on_activation is not None:
            self._on_activation(act)

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
        payload = wire.ack_payload(
            event_id, accepted, reason, received_wall, commanded_wall, None, extra=extra
        )
        if event_id is not None and accepted:
            self._acks[event_id] = payload
            while len(self._acks) > DEDUP_WINDOW:
                self._acks.popitem(last=False)
        return Outgoing(self._topics.ack, payload)

    def reached_ack(self, event_id: str, reached_wall: float) -> Outgoing | None:
        """The second ack for ``event_id``, with ``reached_at`` filled in."""
        ev = self._events.get(event_id)
        if ev is None:
            return None
        payload = wire.ack_payload(
            event_id, True, None, ev.received_wall, ev.commanded_wall, reached_wall
        )
        return Outgoing(self._topics.ack, payload)

    def activation_time(self, event_id: str) -> float | None:
        """Monotonic receive time of an active event's trigger (for trigger-to-target)."""
        ev = self._events.get(event_id)
        return ev.received_at if ev is not None else None

    def _count(self, topic: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.count_message(topic, result)  # type: ignore[arg-type]


def _write_note(act: Activation) -> str | None:
    """Accepted with failures on some GPUs: say which, so the aggregator knows the cut is short."""
    if not act.errors:
        return None
    return "; ".join(f"gpu {i}: {err}" for i, err in sorted(act.errors.items()))
