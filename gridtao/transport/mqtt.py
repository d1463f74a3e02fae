"""One supervised MQTT v5 connection (aiomqtt): connect, subscribe, reconnect, publish.

:meth:`MqttLink.run` owns the connection for the life of the process: it connects, (re)subscribes
on every connection, hands incoming messages to an :class:`asyncio.Queue`, and after any
``aiomqtt.MqttError`` reconnects with exponential backoff and full jitter in
``[reconnect_min_s, reconnect_max_s]``. Publishing never blocks on the network: messages go to a
bounded outbox (gridtao/transport/outbox.py) that a sender task drains while connected, so publishes
made while the broker is away are delivered after reconnection (oldest QoS 0 messages are dropped
first when it is full).

Optionally over TLS (``tls``: a verifying client context, gridtao/transport/tls.py) with a username
and password. A failed attempt is logged as one line naming the cause (transport/diagnose.py);
refused credentials and TLS failures at error level, then at most every ``error_log_interval_s``
while they persist, and retrying continues with backoff (the broker may be fixed).

A link is bound to the event loop that runs it; nothing here assumes the main thread, so the
safety island can run its own link on its own loop and thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gridtao.transport.diagnose import PahoTap, connected
from gridtao.transport.outbox import DropReason, OutboundMessage, Outbox
from gridtao.transport.supervision import InboundMessage, LinkStats, Supervised, check_qos

__all__ = [
    "InboundMessage",
    "LinkStats",
    "MqttLink",
    "OutboundMessage",
    "Will",
    "new_event_loop",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Will:
    """Last will the broker publishes if the connection dies without a clean DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


#: What ``on_connect_publish`` returns: ``(topic, payload, qos, retain)`` tuples.
PublishSpec = tuple[str, bytes, int, bool]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop when uvloop is importable, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class MqttLink(Supervised):
    """A supervised MQTT v5 client connection (aiomqtt). Create it, then run :meth:`run` as a
    task.

    Invariants: subscriptions are re-established on every connection before ``connected`` is
    set; messages from ``on_connect_publish`` go out first on every connection; the outbox never
    holds more than ``max_outbound`` messages; QoS >= 1 messages interrupted by a connection loss
    are sent again after reconnecting (at-least-once), QoS 0 ones may be lost.
    """

    _lost_errors = (aiomqtt.MqttError, *Supervised._lost_errors)

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        will: Will | None = None,
        on_connect_publish: Callable[[], Sequence[PublishSpec]] | None = None,
        max_outbound: int = 1000,
        **options: Any,
    ) -> None:
        """``options``: :class:`~gridtao.transport.supervision.Supervised`'s (subscriptions,
        keepalive, backoff, clock, inbox bound, credentials, Maximum Packet Size)."""
        if max_outbound < 1:
            raise ValueError("max_outbound must be >= 1")
        if will is not None:
            check_qos(will.qos)
        super().__init__(host=host, port=port, client_id=client_id, **options)
        self.will = will
        self._on_connect_publish = on_connect_publish
        self._tap: PahoTap | None = None
        self._outbox = Outbox(max_outbound, on_drop=self._dropped)

    # ---- publishing ------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Queue a message for the broker; returns at once, connected or not.

        Use :meth:`flush` to wait until the outbox has drained.
        """
        self.publish_nowait(topic, payload, qos, retain)

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, *,
        expendable: bool = False,
    ) -> None:
        """Synchronous :meth:`publish`; call it only from the link's own event loop.
        ``expendable``: dropped first when the outbox is full (see :mod:`.outbox`)."""
        check_qos(qos)
        self._outbox.push(OutboundMessage(topic, bytes(payload), qos, retain, expendable))

    def publish_threadsafe(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> None:
        """:meth:`publish` from any thread (e.g. a control thread reporting ``reached_at``)."""
        if self._loop is None:
            raise RuntimeError("the link is not running: start run() first")
        check_qos(qos)
        message = OutboundMessage(topic, bytes(payload), qos, retain)
        self._loop.call_soon_threadsafe(self._outbox.push, message)

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message has been handed to the broker; False on timeout."""
        return await self._outbox.flush(timeout_s)

    @property
    def max_outbound(self) -> int:
        return self._outbox.max_len

    @property
    def outbox_len(self) -> int:
        return len(self._outbox)

    def undelivered(self) -> list[OutboundMessage]:
        """What the broker has not acknowledged yet (the link's loop only; or once it has
        stopped)."""
        return self._outbox.pending()

    def _dropped(self, message: OutboundMessage, reason: DropReason) -> None:
        self.stats.dropped_outbound += 1
        n = self.stats.dropped_outbound
        if reason == "full" and (n == 1 or n % 1000 == 0):
            log.warning(
                "%sMQTT outbox full (%d): dropped %s (QoS %d); %d dropped so far",
                self.log_prefix,
                self.max_outbound,
                message.topic,
                message.qos,
                n,
            )

    # ---- supervision -----------------------------------------------------------------------

    def _discarded(self) -> None:
        """aiomqtt's bounded queue was full: one incoming message dropped."""
        self.stats.dropped_inbound += 1

    def _detail(self) -> str | None:
        return self._tap.last_error if self._tap is not None else None

    def _lost_reason(self, error: BaseException) -> str:
        # paho reports a socket the broker closed as v5 reason 128, "Unspecified error", and
        # aiomqtt as "Disconnected during message iteration": said as the receivers say it.
        cause = error.__cause__
        if (isinstance(cause, aiomqtt.MqttCodeError)
                and getattr(cause.rc, "value", cause.rc) == 128
                and str(error).startswith("Disconnected")):
            return "connection closed by the broker"
        return super()._lost_reason(error)

    def _connect_properties(self) -> Properties | None:
        if self.max_packet_bytes is None:
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.MaximumPacketSize = self.max_packet_bytes
        return props

    async def _session(self) -> None:
        """One connection: returns only by raising (MqttError on loss, CancelledError on stop)."""
        credentials = self._credentials  # one consistent set, even if a reload swaps it now
        # paho's log of this connection: the only trace of a TLS alert after the handshake.
        tap = self._tap = PahoTap(asyncio.get_running_loop(), on_discard=self._discarded)
        will = None
        if self.will is not None:
            will = aiomqtt.Will(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            # aiomqtt's own queue is bounded too (it drops the newest when full, counted by
            # the tap): a flood costs bounded memory, never an unbounded backlog.
            max_queued_incoming_messages=self._inbox.maxsize,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=self.keepalive_s,
            timeout=self.op_timeout_s,
            tls_context=credentials[0],
            username=credentials[1],
            password=credentials[2],
            logger=tap,
            properties=self._connect_properties(),
            # No Nagle: a small message (an ack, a site order) goes out at once instead of
            # waiting up to ~40 ms for the broker's acknowledgement of the one before.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        async with connected(client, tap):
            if self.subscriptions:
                # retainHandling 2: the broker sends no retained message on subscribing (a
                # command left on the broker must never act at start; see docs/security.md).
                # Only state documents (``retained_topics``, e.g. the planner's signals) are
                # taken as they stand on the broker.
                codes = await client.subscribe([
                    (topic, SubscribeOptions(
                        qos=qos, retainHandling=0 if topic in self.retained_topics else 2))
                    for topic, qos in self.subscriptions])
                refused = [
                    topic
                    for (topic, _), code in zip(self.subscriptions, codes, strict=False)
                    if getattr(code, "is_failure", False)
                ]
                if refused:
                    raise aiomqtt.MqttError(f"broker refused subscription to {refused}")
            if self._on_connect_publish is not None:
                for topic, payload, qos, retain in reversed(list(self._on_connect_publish())):
                    check_qos(qos)
                    self._outbox.push(OutboundMessage(topic, bytes(payload), qos, retain),
                                      front=True)
            self._connected_now()
            try:
                await self._pump(client)
            finally:
                self.connected.clear()

    async def _pump(self, client: aiomqtt.Client) -> None:
        receiver = asyncio.ensure_future(self._receive(client))
        sender = asyncio.ensure_future(self._send(client))
        try:
            done, _ = await asyncio.wait((receiver, sender), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiver, sender):
                task.cancel()
            for task in (receiver, sender):
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task
        for task in done:
            task.result()  # re-raise the MqttError that ended the session
        raise aiomqtt.MqttError("MQTT session ended")  # pragma: no cover - both loop forever

    async def _receive(self, client: aiomqtt.Client) -> None:
        clock = self._clock
        async for message in client.messages:
            payload = message.payload
            self._deliver(InboundMessage(
                topic=message.topic.value,
                payload=payload if isinstance(payload, bytes) else str(payload).encode(),
                qos=message.qos,
                retain=message.retain,
                received_at=clock.now(),
                received_wall=clock.wall(),
            ))

    async def _send(self, client: aiomqtt.Client) -> None:
        outbox = self._outbox
        while True:
            message = await outbox.take()
            delivered = False
            try:
                await client.publish(message.topic, message.payload, message.qos, message.retain)
                delivered = True
                self.stats.published += 1
            finally:
                outbox.settle(delivered=delivered)
