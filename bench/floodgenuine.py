"""The flood bench's genuine side: its signed meter, FFR triggers and dispatches, and the acks
they get back, each timed (``bench/flood.py``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gridtao.bench.floodsetup import (
    ACK_TIMEOUT_S,
    DIP_HZ,
    METER_PERIOD_S,
    MIN_HOLD_S,
    NOMINAL_HZ,
    PREFIX,
    REACHED_WAIT_S,
    RECOVERY_S,
    SETTLE_S,
    SHED_DURATION_S,
    SHED_FRACTION,
    Keys,
    Kind,
    Phase,
)
from gridtao.transport.localbroker import Publisher, Subscriber

# ---- the genuine side ----------------------------------------------------------------------------


class AckBook:
    """Every ack the node sent, decoded, with this side's receive time."""

    def __init__(self, sub: Subscriber) -> None:
        self._sub = sub
        self._seen = 0
        self.acks: list[dict[str, Any]] = []

    def update(self) -> None:
        messages = self._sub.messages
        while self._seen < len(messages):
            msg = messages[self._seen]
            ack = json.loads(msg.payload)
            ack["_seen_at"] = self._sub.received_wall[self._seen]
            self.acks.append(ack)
            self._seen += 1


class Meter:
    """The genuine frequency meter: a signed sample every ``METER_PERIOD_S`` at ``hz``."""

    def __init__(self, pub: Publisher, keys: Keys) -> None:
        self._pub = pub
        self._keys = keys
        self._topic = f"{PREFIX}/frequency"
        self._due = 0.0
        self._last_t = 0.0
        self.hz = NOMINAL_HZ

    def send(self) -> tuple[float, float]:
        """Publish one sample at ``hz`` now: (publish time, its ``t``), Unix s."""
        t = max(time.time(), self._last_t + 1e-6)  # t must increase strictly per key
        self._last_t = t
        payload = self._keys.sample(t, self.hz)  # signing is the meter's cost: before the clock
        sent = self._pub.send(self._topic, payload, qos=0)
        self._due = time.monotonic() + METER_PERIOD_S
        return sent, t

    def pump(self) -> tuple[float, float] | None:
        """Send a sample if one is due (else None)."""
        return self.send() if time.monotonic() >= self._due else None


@dataclass
class Trigger:
    """One genuine trigger and what came back for it."""

    kind: Kind
    phase: Phase
    index: int
    sent: float  # Unix s: the publish of the dispatch, or of the first dip sample
    event_id: str | None = None  # the dispatch id; for FFR, the ack's id once matched
    dip_t: list[float] = field(default_factory=list)  # FFR: t of every dip sample sent
    first: dict[str, Any] | None = None
    reached: dict[str, Any] | None = None

    def matches(self, ack: dict[str, Any]) -> bool:
        if self.kind == "dispatch":
            return ack.get("id") == self.event_id
        if self.event_id is not None:
            return ack.get("id") == self.event_id
        return (str(ack.get("id", "")).startswith("ffr-") and ack.get("accepted") is True
                and ack.get("sample_t") in self.dip_t)

    def take(self, ack: dict[str, Any]) -> None:
        if self.first is None:
            self.first = ack
            self.event_id = str(ack.get("id"))
        if ack.get("reached_at") is not None and self.reached is None:
            self.reached = ack

    def measures(self) -> dict[str, float] | None:
        """ms from publish (this side's clock) to the agent's receive and command."""
        first = self.first
        if first is None or not first.get("accepted") or first.get("commanded_at") is None:
            return None
        received, commanded = float(first["received_at"]), float(first["commanded_at"])
        return {"publish_to_command_ms": (commanded - self.sent) * 1e3,
                "publish_to_receive_ms": (received - self.sent) * 1e3,
                "receive_to_command_ms": (commanded - received) * 1e3}


class Genuine:
    """The aggregator and the meter: genuine triggers, one at a time, and their acks."""

    def __init__(self, pub: Publisher, book: AckBook, keys: Keys) -> None:
        self._pub = pub
        self._keys = keys
        self.book = book
        self.meter = Meter(pub, keys)
        self.triggers: list[Trigger] = []
        self._consumed = 0

    def settle(self, seconds: float) -> None:
        self.until(lambda: False, seconds)

    def until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Keep the meter going and read acks until ``done()`` or the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.meter.pump()
            self.match()
            if done():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    def match(self) -> None:
        """Give each new ack to the genuine trigger it belongs to."""
        self.book.update()
        acks = self.book.acks
        while self._consumed < len(acks):
            ack = acks[self._consumed]
            self._consumed += 1
            for trig in reversed(self.triggers):
                if trig.matches(ack):
                    trig.take(ack)
                    break

    def ffr(self, phase: Phase, k: int) -> Trigger:
        """A dip until the agent acks it, then nominal until the event has ended."""
        self.meter.hz = DIP_HZ
        sent, t = self.meter.send()
        trig = Trigger("ffr", phase, k, sent, dip_t=[t])
        self.triggers.append(trig)
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while trig.first is None and time.monotonic() < deadline:
            got = self.meter.pump()
            if got is not None:
                trig.dip_t.append(got[1])
            self.match()
            time.sleep(0.001)
        self.meter.hz = NOMINAL_HZ
        if trig.first is not None:
            self.until(lambda: trig.reached is not None, REACHED_WAIT_S)
        # Held min_hold_s, recovered after recovery_s of nominal samples, then a 50 ms ramp.
        self.settle(max(MIN_HOLD_S, RECOVERY_S) + SETTLE_S)
        return trig

    def dispatch(self, phase: Phase, k: int) -> Trigger:
        """A signed shed of 30 % for 0.35 s, then until it has ended."""
        event_id = f"genuine-{phase}-{k}"
        payload = self._keys.dispatch({"id": event_id, "kind": "shed",
                                       "fraction": SHED_FRACTION, "duration_s": SHED_DURATION_S})
        self.meter.pump()
        sent = self._pub.send(f"{PREFIX}/dispatch", payload, qos=1)
        trig = Trigger("dispatch", phase, k, sent, event_id=event_id)
        self.triggers.append(trig)
        if self.until(lambda: trig.first is not None, ACK_TIMEOUT_S):
            self.until(lambda: trig.reached is not None, REACHED_WAIT_S)
        self.settle(SHED_DURATION_S + SETTLE_S)
        return trig

    def sequence(self, phase: Phase, n: int, progress: Callable[[str], None]) -> None:
        for k in range(n):
            self.ffr(phase, k)
            self.dispatch(phase, k)
            if (k + 1) % 10 == 0 or k + 1 == n:
                progress(f"  {phase}: {k + 1}/{n} FFR triggers and dispatches")

    def missing(self) -> int:
        """Acks still owed: each trigger's first ack and its reached_at ack."""
        return sum((t.first is None) + (t.reached is None) for t in self.triggers)
