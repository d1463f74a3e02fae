"""A light node's receive-only broker connection in a ``gridtao bench fleet`` worker, read the
way the agent's island reads its own (gridtao/transport/receiver.py): every socket read is split
into packets by the agent's parser (gridtao/transport/packets.py, about 8 us a message against
about 130 us through paho) and each PUBLISH handed on at once. QoS 1 messages are acknowledged
after they were handled, in one write when the worker sends the node's acks at the end of its
loop's pass (:meth:`RawReceiver.send_pubacks`): an agent's receiver acknowledges a read's
messages once it has handled them, on its own core, so here one node's PUBACK must not hold up
the next node's dispatch on the core they share.

It speaks only what a subscriber needs: CONNECT (clean start, Maximum Packet Size), SUBSCRIBE
(retain handling 2: no retained message on subscribing, as the agent), PUBACK, PINGREQ,
DISCONNECT. The worker's selectors loop calls :meth:`RawReceiver.on_readable` when the socket
has data; everything runs on that loop's thread. A node's acks and status go out on a paho
connection of its own (bench/fleetworker.py), as an agent's go out on its island link.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType

from gridtao.transport import packets as p

__all__ = ["RawReceiver", "RawSubscriber"]

_SUBSCRIBE_ID = 1


class RawReceiver:
    """One receive-only MQTT v5 connection (see the module docstring). ``on_publish(msg)`` is
    called for every message received; :attr:`subscribed` turns True on the broker's SUBACK."""

    def __init__(self, host: str, port: int, client_id: str,
                 subscriptions: list[tuple[str, int]],
                 on_publish: Callable[[p.Publish], None], *, keepalive_s: int,
                 max_packet_bytes: int) -> None:
        self._subscriptions = subscriptions
        self._on_publish = on_publish
        self._reader = p.PacketReader(max_packet_bytes)
        self.subscribed = False
        #: PUBACKs of the messages handled, not yet written (:meth:`send_pubacks`).
        self.pubacks = b""
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(p.connect_packet(client_id, keepalive_s=keepalive_s,
                                           max_packet_bytes=max_packet_bytes))
        self.sock.setblocking(False)

    def on_readable(self) -> bool:
        """Read what the socket holds and hand on each message; the QoS 1 ones' PUBACKs are
        kept for :meth:`send_pubacks`. True when PUBACKs are waiting. Raises ConnectionError
        when the broker closed the connection or broke the protocol."""
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return bool(self.pubacks)
        if not data:
            raise ConnectionError("the broker closed a node's receive connection")
        acks: list[bytes] = []
        for packet in self._reader.feed(data):
            if isinstance(packet, p.Publish):
                self._on_publish(packet)
                if packet.packet_id is not None:
                    acks.append(p.puback_packet(packet.packet_id))
            elif packet.kind == p.CONNACK:
                if p.connack(packet).code:
                    raise ConnectionError("the broker refused a node's receive connection")
                self._send(p.subscribe_packet(
                    _SUBSCRIBE_ID, [(topic, qos, 2) for topic, qos in self._subscriptions]))
            elif packet.kind == p.SUBACK:
                if any(code >= 0x80 for code in p.suback_codes(packet)):
                    raise ConnectionError("the broker refused a node's subscription")
                self.subscribed = True
        if acks:
            self.pubacks += b"".join(acks)
        return bool(self.pubacks)

    def send_pubacks(self) -> None:
        """Write the PUBACKs kept since the last call (one write)."""
        if self.pubacks:
            data, self.pubacks = self.pubacks, b""
            self._send(data)

    def ping(self) -> None:
        """A PINGREQ, to keep the connection alive (call every half keepalive)."""
        self._send(p.PINGREQ_PACKET)

    def close(self) -> None:
        """DISCONNECT and close the socket."""
        with contextlib.suppress(OSError):  # the broker may have gone first
            self._send(p.disconnect_packet())
        self.sock.close()

    def _send(self, data: bytes) -> None:
        # A few bytes at a time on loopback: the socket's buffer takes them at once; should it
        # be full, wait for it rather than lose an acknowledgement.
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self.sock.setblocking(True)
            try:
                self.sock.sendall(data[sent:])
            finally:
                self.sock.setblocking(False)


class RawSubscriber:
    """One topic filter's messages, read on a thread of its own through :class:`RawReceiver`
    (the agent's parser: the bench process keeps up with a thousand nodes' acks, which a paho
    subscriber there did not), each stamped with its receipt (Unix s). ``messages`` and
    ``received_wall`` only grow, in step (appended on the reading thread; read them by index).
    Use as a context manager: it is subscribed on entry and disconnected on exit."""

    POLL_S = 0.1  # how often the reading thread looks for its stop
    PING_S = 30.0  # half the keepalive

    def __init__(self, host: str, port: int, topic: str, *, qos: int = 1,
                 max_packet_bytes: int = 1 << 20) -> None:
        self.messages: list[p.Publish] = []
        self.received_wall: list[float] = []
        self._receiver = RawReceiver(host, port, f"fleet-bench-{uuid.uuid4().hex[:8]}",
                                     [(topic, qos)], self._on_publish, keepalive_s=60,
                                     max_packet_bytes=max_packet_bytes)
        self._stop = threading.Event()
        self._error: BaseException | None = None  # what ended the reading thread early
        self._thread = threading.Thread(target=self._run, name="fleet-bench-subscriber",
                                        daemon=True)

    def _on_publish(self, msg: p.Publish) -> None:
        self.received_wall.append(time.time())
        self.messages.append(msg)

    def _run(self) -> None:
        next_ping = time.monotonic() + self.PING_S
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self._receiver.sock, selectors.EVENT_READ)
                while not self._stop.is_set():
                    if sel.select(self.POLL_S):
                        self._receiver.on_readable()
                        self._receiver.send_pubacks()
                    if time.monotonic() >= next_ping:
                        next_ping += self.PING_S
                        self._receiver.ping()
        except (ConnectionError, OSError) as e:  # raised again by close(), where it is seen
            self._error = e

    def __enter__(self) -> RawSubscriber:
        self._thread.start()
        deadline = time.monotonic() + 5.0
        while not self._receiver.subscribed:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.close()
                raise TimeoutError("no SUBACK for the bench's subscription")
            time.sleep(0.01)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and disconnect. Raises ConnectionError when the connection was lost
        while reading (the messages then stop short: the caller must know why)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2 * self.POLL_S + 1.0)
        self._receiver.close()
        if self._error is not None:
            raise ConnectionError(f"the bench's subscription was lost: {self._error}")
