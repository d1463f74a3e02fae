"""The bounded outbox of an MQTT link: what to send next, what to drop, and when it has drained.

:class:`Outbox` holds the messages a link has accepted but not yet handed to the broker, plus the
one message its sender is publishing right now (``in_flight``). It knows nothing of sockets: the
link's sender task calls :meth:`Outbox.take`, publishes, then :meth:`Outbox.settle` with the
outcome.

Invariants:

* Bound: after every call, ``len(outbox) <= max_len`` (the in-flight message is not counted).
* Drop order when a push overflows it: the QoS 0 message nearest the front (the next to be sent,
  normally the oldest) goes first; then the expendable message nearest the front (a reject ack);
  only when neither is queued does the front message go, whatever its QoS. So a QoS >= 1 message
  is never dropped while a QoS 0 one is queued, and an activation's ack never while a reject
  ack is. Every drop is reported to ``on_drop`` with reason ``"full"``.
* Order: messages are taken in the order pushed, except that ``front=True`` pushes (announcements
  made on connecting, a QoS >= 1 message whose publish failed) go ahead of everything queued.
* At-least-once: a QoS >= 1 message whose publish did not complete goes back to the front; a QoS 0
  one is lost and reported to ``on_drop`` with reason ``"lost"``.
* At most one message is in flight, between :meth:`take` and :meth:`settle`.
* :meth:`flush` waits until the queue is empty *and* nothing is in flight, i.e. until the last
  message has been handed to the broker (for QoS >= 1, acknowledged by it).

Threads: an outbox belongs to the event loop that runs its link. Call everything on it from that
loop only (other threads hop in with ``loop.call_soon_threadsafe(outbox.push, message)``); its
events are asyncio events. ``len()`` alone may be read from any thread, as a snapshot.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["DropReason", "OutboundMessage", "Outbox"]

#: Why a message left the outbox without reaching the broker: ``"full"`` (pushed out by the
#: bound) or ``"lost"`` (a QoS 0 message whose publish a connection loss cut off).
DropReason = Literal["full", "lost"]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A message waiting to be published (``qos`` already checked to be 0, 1 or 2)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    # May go before any other QoS >= 1 message when the outbox is full (a reject ack: a flood of
    # them must never push an activation's ack out).
    expendable: bool = False


class Outbox:
    """A bounded queue of :class:`OutboundMessage` with one in-flight slot (see the module doc)."""

    def __init__(
        self,
        max_len: int,
        on_drop: Callable[[OutboundMessage, DropReason], None] | None = None,
    ) -> None:
        if max_len < 1:
            raise ValueError("max_len must be >= 1")
        self._max_len = max_len
        self._on_drop = on_drop
        self._queue: collections.deque[OutboundMessage] = collections.deque()
        self._in_flight: OutboundMessage | None = None
        self._ready = asyncio.Event()  # set while the queue is non-empty
        self._idle = asyncio.Event()  # set while nothing is queued or in flight
        self._idle.set()

    @property
    def max_len(self) -> int:
        return self._max_len

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> OutboundMessage | None:
        """The message taken by the sender and not yet settled."""
        return self._in_flight

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        return self._idle.is_set()

    def pending(self) -> list[OutboundMessage]:
        """What has not reached the broker yet, in the order it would be sent: the in-flight
        message first (its publish may still complete), then the queue."""
        first = [self._in_flight] if self._in_flight is not None else []
        return [*first, *self._queue]

    def push(self, message: OutboundMessage, *, front: bool = False) -> None:
        """Queue ``message`` (at the back, or ahead of everything with ``front``), then drop
        messages by the drop order until the bound holds again."""
        if front:
            self._queue.appendleft(message)
        else:
            self._queue.append(message)
        while len(self._queue) > self._max_len:
            self._drop_one()
        self._ready.set()
        self._idle.clear()

    async def take(self) -> OutboundMessage:
        """Wait for a queued message, remove the front one and hold it as in flight until
        :meth:`settle`."""
        if self._in_flight is not None:
            raise RuntimeError("a message is already in flight: settle() it first")
        while True:
            await self._ready.wait()
            if self._queue:
                break
            self._update()
        message = self._queue.popleft()
        self._in_flight = message
        return message

    def settle(self, *, delivered: bool) -> None:
        """End the in-flight message: gone if ``delivered``; otherwise QoS >= 1 goes back to the
        front (which may push another message out) and QoS 0 is lost."""
        message = self._in_flight
        if message is None:
            raise RuntimeError("no message in flight")
        self._in_flight = None
        if not delivered:
            if message.qos > 0:
                self.push(message, front=True)
            elif self._on_drop is not None:
                self._on_drop(message, "lost")
        self._update()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or in flight; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _drop_one(self) -> None:
        queued = self._take_first(lambda m: m.qos == 0) or self._take_first(
            lambda m: m.expendable) or self._queue.popleft()
        if self._on_drop is not None:
            self._on_drop(queued, "full")

    def _take_first(self, which: Callable[[OutboundMessage], bool]) -> OutboundMessage | None:
        for i, queued in enumerate(self._queue):
            if which(queued):
                del self._queue[i]
                return queued
        return None

    def _update(self) -> None:
        if self._queue:
            self._ready.set()
        else:
            self._ready.clear()
            if self._in_flight is None:
                self._idle.set()
