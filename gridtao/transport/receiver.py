"""A receive-only MQTT v5 connection that drains its socket as fast as it can be read.

The island's inbound connections (frequency samples; dispatches and the node's own inbox) must
keep up with whatever the broker forwards, junk included, or a genuine trigger waits behind the
backlog in socket buffers and at the broker. :class:`MqttReceiver` reads with an asyncio
:class:`~asyncio.Protocol`: every socket read is split into packets at once
(gridtao/transport/packets.py, about 8 us a message against about 130 us through aiomqtt), each
PUBLISH goes to the bounded inbox (the oldest dropped and counted when full), and QoS 1 messages
are acknowledged in one write per read. What the lane cannot handle in time is then dropped
here, oldest first, where it is counted, and the newest messages are always the next read.

It speaks only what a subscriber needs: CONNECT (clean start; user name, password; Maximum
Packet Size so the broker never sends an oversize packet), SUBSCRIBE (QoS 0 or 1; retain
handling 2 except for ``retained_topics``), PUBACK, PINGREQ every half keepalive (the broker's
Server Keep Alive when its CONNACK sets a shorter one than ``keepalive_s``; a connection silent
for 1.5 keepalives is lost), DISCONNECT on stop. TLS through the context given
(``ssl.SSLContext``, as for :class:`~gridtao.transport.mqtt.MqttLink`; the certificate is
verified against ``mqtt.tls.server_hostname`` when set). A refused CONNECT raises
:class:`ConnectRefused` with the CONNACK's reason code, which transport/diagnose.py reads like
aiomqtt's. A malformed packet from the broker ends the connection, after the good packets of
the same read are delivered and acknowledged.

Threads: all of it runs on the event loop that runs :meth:`~Supervised.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, cast

from paho.mqtt.packettypes import PacketTypes

from gridtao.clock import Clock
from gridtao.transport import packets as p
from gridtao.transport.errors import ConnectionLost, ConnectRefused, named_code
from gridtao.transport.supervision import InboundMessage, Supervised

__all__ = ["ConnectRefused", "MqttReceiver"]

_SUBSCRIBE_ID = 1


def ping_keepalive_s(own_s: int, server_s: int | None) -> int:
    """The keepalive the connection pings by: the broker's Server Keep Alive when it is
    shorter than ours (MQTT-3.2.2-21: pinging at our pace under a broker that caps it would
    have the broker drop us again and again), else ours. Pinging more often than the broker
    asks is allowed, and a broker's 0 or longer value must not leave a half-open connection
    unnoticed for longer than ours would."""
    if server_s is None or server_s <= 0:
        return own_s
    return min(own_s, server_s)


def disconnect_reason(code: int) -> str:
    """A server DISCONNECT's reason code, named (MQTT v5 section 3.14.2.1)."""
    rc = named_code(PacketTypes.DISCONNECT, code)
    return f"reason code {code}" if rc is None else f"{rc}, code {code}"


class _Protocol(asyncio.Protocol):
    """One connection's bytes: packets to the receiver, CONNACK/SUBACK to waiting futures."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, clock: Clock,
                 deliver: Callable[[InboundMessage], None],
                 max_packet_bytes: int | None) -> None:
        self._clock = clock
        self._deliver = deliver
        self._reader = p.PacketReader(max_packet_bytes)
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[p.Packet] = loop.create_future()
        self.suback: asyncio.Future[p.Packet] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.last_read = clock.now()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            packets = self._reader.feed(data)
        except p.ProtocolError as e:
            # The good packets before the bad one are handled (and acknowledged) first: a
            # trigger that came whole is not lost with the connection.
            if self._handle(e.parsed):
                self._fail(ConnectionLost(f"protocol error from the broker: {e.reason}"))
            return
        self._handle(packets)

    def _handle(self, packets: list[p.Publish | p.Packet]) -> bool:
        """Deliver and acknowledge ``packets``; False if one ended the connection."""
        deliver = self._deliver
        now, wall = self._clock.now(), self._clock.wall()
        self.last_read = now
        acks = bytearray()
        for packet in packets:
            if isinstance(packet, p.Publish):
                if packet.packet_id is not None:
                    acks += p.puback_packet(packet.packet_id)
                deliver(InboundMessage(packet.topic, packet.payload, packet.qos, packet.retain,
                                       now, wall))
            elif packet.kind == p.CONNACK:
                if not self.connack.done():
                    self.connack.set_result(packet)
            elif packet.kind == p.SUBACK:
                if not self.suback.done():
                    self.suback.set_result(packet)
            elif packet.kind == p.DISCONNECT:
                code = packet.body[0] if packet.body else 0
                self._write(acks)
                why = disconnect_reason(code)
                self._fail(ConnectionLost(f"the broker disconnected us ({why})"))
                return False
            elif packet.kind != p.PINGRESP:
                self._write(acks)
                self._fail(ConnectionLost(f"unexpected packet type {packet.kind}"))
                return False
        self._write(acks)
        return True

    def _write(self, data: bytes | bytearray) -> None:
        if data and self.transport is not None:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLost(str(exc) if exc else "connection closed by the broker"))

    def _fail(self, error: ConnectionLost) -> None:
        for future in (self.connack, self.suback):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: the session may not be waiting on it
        if not self.closed.done():
            self.closed.set_exception(error)
            self.closed.exception()
        if self.transport is not None:
            self.transport.abort()


class MqttReceiver(Supervised):
    """A supervised, receive-only MQTT v5 subscription (see the module docstring). Create it,
    then run :meth:`run` as a task; read with :meth:`poll`, :meth:`get` or ``on_inbound``.

    Invariants: subscriptions are made on every connection before ``connected`` is set; QoS 1
    messages are acknowledged once they are in the inbox (the broker's subscription QoS caps
    what arrives; QoS 2 is not asked for); the inbox never holds more than ``max_inbound``.
    """

    def __init__(self, **options: Any) -> None:
        """``options``: :class:`~gridtao.transport.supervision.Supervised`'s."""
        super().__init__(**options)
        for topic, qos in self.subscriptions:
            if qos > 1:
                raise ValueError(f"{topic}: a receiver subscribes at QoS 0 or 1, not {qos}")

    async def _session(self) -> None:
        tls, username, password = self._credentials
        loop = asyncio.get_running_loop()
        protocol = _Protocol(loop, clock=self._clock, deliver=self._deliver,
                             max_packet_bytes=self.max_packet_bytes)
        try:
            transport, _ = await asyncio.wait_for(loop.create_connection(
                lambda: protocol, self.host, self.port, ssl=tls,
                server_hostname=self.host if tls is not None else None), self.op_timeout_s)
        except TimeoutError:
            raise ConnectionLost("Operation timed out") from None
        sock = transport.get_extra_info("socket")
        if sock is not None:  # no Nagle: PUBACKs and pings go out at once
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            transport.write(p.connect_packet(
                self.client_id, keepalive_s=self.keepalive_s, username=username,
                password=password, max_packet_bytes=self.max_packet_bytes))
            try:
                ack = p.connack(await self._wait(protocol.connack))
            except p.ProtocolError as e:
                raise ConnectionLost(f"protocol error from the broker: {e.reason}") from None
            if ack.code:  # any other code: a refusal, or a broker that does not speak v5
                raise ConnectRefused(ack.code)
            keepalive_s = ping_keepalive_s(self.keepalive_s, ack.server_keepalive_s)
            if self.subscriptions:
                transport.write(p.subscribe_packet(_SUBSCRIBE_ID, [
                    (topic, qos, 0 if topic in self.retained_topics else 2)
                    for topic, qos in self.subscriptions]))
                suback = await self._wait(protocol.suback)
                codes = p.suback_codes(suback)
                refused = [topic for (topic, _), c in zip(self.subscriptions, codes,
                                                          strict=False) if c >= 0x80]
                if refused or len(codes) < len(self.subscriptions):
                    raise ConnectionLost(f"broker refused subscription to {refused}")
            self._connected_now()
            try:
                await self._serve(protocol, transport, keepalive_s)
            finally:
                self.connected.clear()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                transport.write(p.disconnect_packet())
            raise
        finally:
            transport.close()

    async def _wait(self, future: asyncio.Future[p.Packet]) -> p.Packet:
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.op_timeout_s)
        except TimeoutError:
            raise ConnectionLost("Operation timed out") from None

    async def _serve(self, protocol: _Protocol, transport: asyncio.Transport,
                     keepalive_s: int) -> None:
        """Ping every half ``keepalive_s``; the connection is lost when the broker closes it or
        has said nothing (a PINGRESP at least) for 1.5 keepalives."""
        interval = keepalive_s / 2.0
        while True:
            done, _ = await asyncio.wait((protocol.closed,), timeout=interval)
            if done:
                protocol.closed.result()  # raises why
            if self._clock.now() - protocol.last_read > 1.5 * keepalive_s:
                raise ConnectionLost("keepalive: no answer from the broker")
            transport.write(p.PINGREQ_PACKET)
