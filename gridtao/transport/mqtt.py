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
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gridtao.clock import Clock, MonotonicClock
from gridtao.config.agent import MqttConfig
from gridtao.transport.diagnose import AttemptLog, Diagnosis, PahoTap, connected
from gridtao.transport.outbox import DropReason, OutboundMessage, Outbox

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


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A received message; ``received_at`` is ``clock.now()`` (monotonic s) when the link took it
    from the socket's queue, ``received_wall`` is ``clock.wall()`` (Unix s) at the same moment."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at: float
    received_wall: float


#: What ``on_connect_publish`` returns: ``(topic, payload, qos, retain)`` tuples.
PublishSpec = tuple[str, bytes, int, bool]


@dataclass(slots=True)
class LinkStats:
    """Counters since the link was created. Plain ints written on the link's loop; other
    threads (the metrics collector at scrape time) read them without a lock, which is safe for
    ints and may lag by one increment."""

    connects: int = 0  # successful connections, the first included
    reconnects: int = 0  # successful connections after the first
    losses: int = 0  # established connections that ended in an error
    received: int = 0
    published: int = 0
    dropped_outbound: int = 0  # outbox overflow, or QoS 0 message cut off by a connection loss
    dropped_inbound: int = 0  # inbox overflow (oldest message discarded)
    refused: int = 0  # attempts refused for credentials, ACL or TLS (Diagnosis.persistent)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop when uvloop is importable, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _check_qos(qos: int) -> None:
    if qos not in (0, 1, 2):
        raise ValueError(f"QoS must be 0, 1 or 2, got {qos!r}")


class MqttLink:
    """A supervised MQTT v5 client connection. Create it, then run :meth:`run` as a task.

    Invariants: subscriptions are re-established on every connection before ``connected`` is
    set; messages from ``on_connect_publish`` go out first on every connection; the outbox never
    holds more than ``max_outbound`` messages; QoS >= 1 messages interrupted by a connection loss
    are sent again after reconnecting (at-least-once), QoS 0 ones may be lost.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: Will | None = None,
        keepalive_s: int = 10,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        on_connect_publish: Callable[[], Sequence[PublishSpec]] | None = None,
        clock: Clock | None = None,
        max_outbound: int = 1000,
        max_inbound: int = 10_000,
        op_timeout_s: float = 10.0,
        rng: random.Random | None = None,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        error_log_interval_s: float = 60.0,
        max_packet_bytes: int | None = None,
        retained_topics: Sequence[str] = (),
    ) -> None:
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        if keepalive_s < 1:
            raise ValueError("keepalive_s must be >= 1")
        if max_outbound < 1 or max_inbound < 1:
            raise ValueError("max_outbound and max_inbound must be >= 1")
        for _, qos in subscriptions:
            _check_qos(qos)
        if will is not None:
            _check_qos(will.qos)
        self.host = host
        self.port = port
        self.client_id = client_id
        self.subscriptions = tuple(subscriptions)
        #: Subscriptions whose retained message the broker may send on subscribing (state, not
        #: commands: every other subscription asks for none).
        self.retained_topics = frozenset(retained_topics)
        self.will = will
        self.keepalive_s = keepalive_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.op_timeout_s = op_timeout_s
        self._on_connect_publish = on_connect_publish
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._rng = rng if rng is not None else random.Random()
        self.error_log_interval_s = error_log_interval_s
        # MQTT v5 Maximum Packet Size: the broker never sends a larger packet (it drops it), so
        # an oversize flood costs the broker, not this process's memory.
        self.max_packet_bytes = max_packet_bytes
        self.set_credentials(tls=tls, username=username, password=password)
        self._tap: PahoTap | None = None

        self.connected = asyncio.Event()
        self.stats = LinkStats()
        self._inbox: asyncio.Queue[InboundMessage] = asyncio.Queue(maxsize=max_inbound)
        #: Called on the link's loop after each message lands in the inbox (a reader that
        #: serves several links waits on one event instead of a getter per link).
        self.on_inbound: Callable[[], None] | None = None
        self._outbox = Outbox(max_outbound, on_drop=self._dropped)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._was_up = False  # whether the current/last session got as far as `connected`

    @classmethod
    def for_broker(cls, mqtt: MqttConfig, *, client_id: str, tls: ssl.SSLContext | None,
                   password: str | None, clock: Clock | None = None,
                   **options: Any) -> MqttLink:
        """A link to the broker ``mqtt`` names, with its connection settings (keepalive,
        reconnect backoff, user name, error log interval); ``tls`` and ``password`` as read
        from its files (gridtao/transport/tls.py); ``options``: the other constructor
        arguments (subscriptions, will, bounds)."""
        return cls(host=mqtt.host, port=mqtt.port, client_id=client_id,
                   keepalive_s=mqtt.keepalive_s, reconnect_min_s=mqtt.reconnect_min_s,
                   reconnect_max_s=mqtt.reconnect_max_s, tls=tls, username=mqtt.username,
                   password=password, error_log_interval_s=mqtt.error_log_interval_s,
                   clock=clock, **options)

    # ---- receiving -------------------------------------------------------------------------

    def set_credentials(
        self, *, tls: ssl.SSLContext | None, username: str | None, password: str | None
    ) -> None:
        """Broker credentials (TLS context, MQTT user and password) for the next connection on;
        a connection that is up keeps its session. Thread-safe: one atomic swap."""
        self._credentials = (tls, username, password)
        self._attempts = AttemptLog(log, host=self.host, port=self.port, tls=tls,
                                    username=username, interval_s=self.error_log_interval_s,
                                    clock=self._clock.now)

    @property
    def tls(self) -> ssl.SSLContext | None:
        return self._credentials[0]

    async def get(self) -> InboundMessage:
        """The next received message (waits; survives reconnections)."""
        return await self._inbox.get()

    def poll(self) -> InboundMessage | None:
        """The next received message if one is waiting, else None (never waits)."""
        try:
            return self._inbox.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def messages(self) -> AsyncIterator[InboundMessage]:
        """Iterate over received messages forever."""
        while True:
            yield await self._inbox.get()

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
        _check_qos(qos)
        self._outbox.push(OutboundMessage(topic, bytes(payload), qos, retain, expendable))

    def publish_threadsafe(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> None:
        """:meth:`publish` from any thread (e.g. a control thread reporting ``reached_at``)."""
        if self._loop is None:
            raise RuntimeError("the link is not running: start run() first")
        _check_qos(qos)
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

    @property
    def problem(self) -> Diagnosis | None:
        """Why the last connection attempt failed; None once connected."""
        return self._attempts.problem

    @property
    def is_connected(self) -> bool:
        """Connection state as a plain bool (safe to read from other threads)."""
        return self.connected.is_set()

    def _dropped(self, message: OutboundMessage, reason: DropReason) -> None:
        self.stats.dropped_outbound += 1
        n = self.stats.dropped_outbound
        if reason == "full" and (n == 1 or n % 1000 == 0):
            log.warning(
                "MQTT outbox full (%d): dropped %s (QoS %d); %d dropped so far",
                self.max_outbound,
                message.topic,
                message.qos,
                n,
            )

    # ---- supervision -----------------------------------------------------------------------

    def _discarded(self) -> None:
        """aiomqtt's bounded queue was full: one incoming message dropped."""
        self.stats.dropped_inbound += 1

    def backoff_s(self, attempt: int) -> float:
        """Delay before reconnection attempt ``attempt`` (0-based): uniform in
        [min, min(max, min * 2**attempt)]."""
        ceiling = min(self.reconnect_max_s, self.reconnect_min_s * 2.0 ** min(attempt, 60))
        return self._rng.uniform(self.reconnect_min_s, ceiling)

    async def run(self) -> None:
        """Supervise the connection until cancelled; it never returns otherwise.

        Each lost connection is logged once (warning); failed attempts while the broker stays
        away are logged at debug level after the first.
        """
        if self._running:
            raise RuntimeError("MqttLink.run() is already running")
        self._running = True
        self._loop = asyncio.get_running_loop()
        attempt = 0
        quiet = False
        try:
            while True:
                try:
                    await self._session()
                except (aiomqtt.MqttError, OSError) as e:
                    reason = str(e) or type(e).__name__
                    if e.__cause__ is not None:
                        reason = f"{reason}: {e.__cause__}"
                    tap_error = self._tap.last_error if self._tap is not None else None
                    if tap_error and tap_error not in reason:
                        reason = f"{reason} ({tap_error})"
                    if self._was_up:
                        self.stats.losses += 1
                        log.warning(
                            "MQTT connection to %s:%d lost (%s); reconnecting",
                            self.host,
                            self.port,
                            reason,
                        )
                        attempt = 0
                        quiet = True
                    else:
                        quiet = self._attempts.failed(e, quiet)
                        if self.problem is not None and self.problem.persistent:
                            self.stats.refused += 1
                        log.debug("MQTT connect to %s:%d failed: %s", self.host, self.port, reason)
                except Exception:
                    # A bug must not leave the node deaf to the grid: log it loudly and reconnect.
                    self.stats.losses += 1
                    log.exception("MQTT link to %s:%d failed unexpectedly", self.host, self.port)
                    quiet = True
                await asyncio.sleep(self.backoff_s(attempt))
                attempt += 1
        finally:
            self.connected.clear()
            self._running = False
            self._loop = None

    def _connect_properties(self) -> Properties | None:
        if self.max_packet_bytes is None:
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.MaximumPacketSize = self.max_packet_bytes
        return props

    async def _session(self) -> None:
        """One connection: returns only by raising (MqttError on loss, CancelledError on stop)."""
        self._was_up = False
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
                    _check_qos(qos)
                    self._outbox.push(OutboundMessage(topic, bytes(payload), qos, retain),
                                      front=True)
            self.stats.connects += 1
            self._attempts.connected()
            if self.stats.connects > 1:
                self.stats.reconnects += 1
                log.info("MQTT reconnected to %s:%d", self.host, self.port)
            self._was_up = True
            self.connected.set()
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
        inbox = self._inbox
        async for message in client.messages:
            payload = message.payload
            inbound = InboundMessage(
                topic=message.topic.value,
                payload=payload if isinstance(payload, bytes) else str(payload).encode(),
                qos=message.qos,
                retain=message.retain,
                received_at=clock.now(),
                received_wall=clock.wall(),
            )
            self.stats.received += 1
            if inbox.full():
                # The oldest sample is the least useful one to a controller.
                inbox.get_nowait()
                self.stats.dropped_inbound += 1
            inbox.put_nowait(inbound)
            if self.on_inbound is not None:
                self.on_inbound()

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
