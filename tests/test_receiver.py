"""MqttReceiver, the island's receive-only connection, against a real Mosquitto: what it
receives and acknowledges, the retained messages it never asks for, a backlog drained into the
bounded inbox (the newest kept, the rest counted), reconnection, and a refused connection
diagnosed like any other link's."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple, cast

import pytest
from broker import MosquittoBroker, publish
from test_packets import publish_bytes
from waiting import wait_until

from gridtao.clock import MonotonicClock
from gridtao.transport import packets as p
from gridtao.transport.errors import ConnectionLost
from gridtao.transport.localbroker import Publisher
from gridtao.transport.mqtt import new_event_loop
from gridtao.transport.receiver import MqttReceiver, _Protocol, ping_keepalive_s
from gridtao.transport.supervision import InboundMessage

WAIT_S = 10.0


class Address(NamedTuple):
    host: str
    port: int


@contextmanager
def receiving(broker: MosquittoBroker | Address, subscriptions: list[tuple[str, int]],
              **kw: object) -> Iterator[tuple[MqttReceiver, asyncio.AbstractEventLoop]]:
    """A receiver running on its own loop and thread, as the island lane runs it."""
    loop = new_event_loop()
    receiver = MqttReceiver(host=broker.host, port=broker.port,
                            client_id=f"rx-{random.randrange(1 << 30)}",
                            subscriptions=subscriptions, keepalive_s=5, reconnect_min_s=0.02,
                            reconnect_max_s=0.2, **kw)
    task = loop.create_task(receiver.run())

    def serve() -> None:
        with suppress(asyncio.CancelledError):
            loop.run_until_complete(task)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield receiver, loop
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(5.0)
        with suppress(Exception):
            loop.close()


def drain(receiver: MqttReceiver, loop: asyncio.AbstractEventLoop) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []

    done = threading.Event()

    def take() -> None:
        while (m := receiver.poll()) is not None:
            out.append((m.topic, m.payload))
        done.set()

    loop.call_soon_threadsafe(take)
    assert done.wait(5.0)
    return out


def test_receives_qos0_and_qos1_but_no_retained_command(mqtt_broker: MosquittoBroker) -> None:
    publish(mqtt_broker.host, mqtt_broker.port, "rx/cmd", b"left on the broker", retain=True)
    publish(mqtt_broker.host, mqtt_broker.port, "rx/state", b"a state", retain=True)
    with receiving(mqtt_broker, [("rx/cmd", 1), ("rx/freq", 0), ("rx/state", 0)],
                   retained_topics=["rx/state"]) as (rx, loop):
        wait_until(lambda: rx.is_connected, "the receiver to connect", timeout_s=WAIT_S)
        with Publisher(mqtt_broker.host, mqtt_broker.port) as pub:
            pub.send("rx/cmd", b"one", qos=1)
            pub.send("rx/freq", b"two", qos=0)
        wait_until(lambda: rx.stats.received >= 3, "three messages", timeout_s=WAIT_S)
        got = drain(rx, loop)
    assert sorted(got) == [("rx/cmd", b"one"), ("rx/freq", b"two"), ("rx/state", b"a state")]
    assert rx.stats.dropped_inbound == 0 and rx.stats.connects == 1


def test_a_backlog_is_drained_at_once_and_the_newest_kept(tmp_path: Path) -> None:
    n, keep = 3000, 100
    # A broker that queues the whole backlog for us (its default drops past 1,000).
    broker = MosquittoBroker(tmp_path / "deep", extra_conf=["max_queued_messages 10000"])
    broker.start()
    try:
        with receiving(broker, [("rx/flood", 1)], max_inbound=keep) as (rx, loop):
            wait_until(lambda: rx.is_connected, "the receiver to connect", timeout_s=WAIT_S)
            # Hold the receiver's loop while the broker queues the flood for it.
            loop.call_soon_threadsafe(time.sleep, 1.5)
            with Publisher(broker.host, broker.port) as pub:
                for k in range(n):
                    pub.send("rx/flood", b"%d" % k, qos=1)
            wait_until(lambda: rx.stats.received == n, "every message read", timeout_s=WAIT_S)
            got = drain(rx, loop)
    finally:
        broker.stop()
    assert [payload for _, payload in got] == [b"%d" % k for k in range(n - keep, n)]
    assert rx.stats.dropped_inbound == n - keep


def test_it_reconnects_and_resubscribes_after_a_broker_restart(
        mqtt_broker: MosquittoBroker) -> None:
    with receiving(mqtt_broker, [("rx/again", 1)]) as (rx, loop):
        wait_until(lambda: rx.is_connected, "the receiver to connect", timeout_s=WAIT_S)
        mqtt_broker.restart()
        wait_until(lambda: rx.stats.reconnects >= 1 and rx.is_connected, "a reconnection",
                   timeout_s=WAIT_S)
        publish(mqtt_broker.host, mqtt_broker.port, "rx/again", b"after", qos=1)
        wait_until(lambda: rx.stats.received == 1, "the message after the restart",
                   timeout_s=WAIT_S)
        assert drain(rx, loop) == [("rx/again", b"after")]
    assert rx.stats.losses == 1


def test_a_refused_connection_is_diagnosed_and_retried(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "closed", anonymous=False)
    broker.start()
    try:
        with receiving(broker, [("rx/x", 0)]) as (rx, _):
            wait_until(lambda: rx.stats.refused >= 2, "two refused attempts", timeout_s=WAIT_S)
            assert rx.problem is not None and rx.problem.kind == "credentials"
            assert "refused the credentials" in rx.problem.line
            assert not rx.is_connected
    finally:
        broker.stop()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def against_scripted_broker(script: Script, done: Callable[[MqttReceiver], bool],
                            **options: Any) -> MqttReceiver:
    """A receiver run against ``script`` (a broker's side of one connection, written by hand,
    on a loopback port) until ``done`` says so or ``WAIT_S`` passed; then stopped."""

    async def main() -> MqttReceiver:
        server = await asyncio.start_server(script, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        rx = MqttReceiver(host="127.0.0.1", port=port, client_id="scripted",
                          subscriptions=[("rx/k", 1)], **options)
        task = asyncio.ensure_future(rx.run())
        try:
            deadline = time.monotonic() + WAIT_S
            while not done(rx) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            server.close()
        return rx

    loop = new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def test_the_brokers_keepalive_overrides_its_own() -> None:
    """A broker that caps keepalive (Server Keep Alive in CONNACK, MQTT-3.2.2-21) is obeyed:
    pinging at the receiver's own slower pace would have the broker drop it every 1.5 of its
    keepalives, losing whatever was sent meanwhile. A scripted broker on loopback says 1 s to
    a receiver that asked for 60 s, and counts the pings."""
    pings: list[float] = []

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        props = bytes((0x13,)) + (1).to_bytes(2, "big")  # Server Keep Alive: 1 s
        writer.write(bytes((0x20, 3 + len(props), 0, 0, len(props))) + props)
        await reader.read(1024)  # SUBSCRIBE, packet id 1
        writer.write(bytes((0x90, 4, 0, 1, 0, 1)))  # SUBACK: granted QoS 1
        while data := await reader.read(1024):
            for _ in range(data.count(bytes((0xC0, 0)))):  # PINGREQ
                pings.append(time.monotonic())
                writer.write(bytes((0xD0, 0)))  # PINGRESP

    rx = against_scripted_broker(broker, lambda _rx: len(pings) >= 3, keepalive_s=60)
    assert len(pings) >= 3, pings  # every 0.5 s, not every 30 s
    assert all(b - a < 5.0 for a, b in itertools.pairwise(pings)), pings
    assert rx.stats.losses == 0


def test_the_keepalive_pinged_by_is_the_shorter() -> None:
    assert ping_keepalive_s(60, 10) == 10  # a broker that caps it is obeyed
    assert ping_keepalive_s(10, 60) == 10  # pinging more often is allowed, and finds a dead
    assert ping_keepalive_s(10, 0) == 10  # connection sooner; 0 would never look
    assert ping_keepalive_s(10, None) == 10


def test_each_line_names_its_connection(caplog: pytest.LogCaptureFixture) -> None:
    """An agent holds four connections to one broker: a dead broker is reported by each, and
    each line says which connection it is about."""
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = Address("127.0.0.1", port)
    with caplog.at_level(logging.WARNING, logger="gridtao.transport.mqtt"), \
            receiving(dead, [("rx/x", 0)], name="dispatch") as (rx, _):
        wait_until(lambda: rx.problem is not None, "a failed attempt", timeout_s=WAIT_S)
        wait_until(lambda: bool(caplog.records), "the warning", timeout_s=WAIT_S)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("[dispatch] cannot connect to MQTT broker 127.0.0.1:"), lines


def test_qos2_is_not_asked_for() -> None:
    with pytest.raises(ValueError, match="QoS 0 or 1"):
        MqttReceiver(host="127.0.0.1", port=1, client_id="x", subscriptions=[("t", 2)])


class _Wire:
    """What a protocol writes, and whether it aborted (an asyncio transport's two calls used)."""

    def __init__(self) -> None:
        self.written = b""
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += bytes(data)

    def abort(self) -> None:
        self.aborted = True


def test_a_trigger_before_a_bad_packet_is_delivered_and_acknowledged() -> None:
    loop = new_event_loop()
    try:
        got: list[InboundMessage] = []
        protocol = _Protocol(loop, clock=MonotonicClock(), deliver=got.append,
                             max_packet_bytes=None)
        wire = _Wire()
        protocol.connection_made(cast(asyncio.Transport, wire))
        trigger = publish_bytes("a/dispatch", b"shed", qos=1, packet_id=9)
        protocol.data_received(trigger + bytes((0x36, 2, 0, 0)))  # then a QoS 3 PUBLISH
        assert [m.payload for m in got] == [b"shed"]
        assert wire.written == p.puback_packet(9) and wire.aborted
        with pytest.raises(ConnectionLost, match="QoS 3"):
            protocol.closed.result()
    finally:
        loop.close()


def test_a_connack_it_cannot_read_is_a_lost_connection_not_a_crash(
        caplog: pytest.LogCaptureFixture) -> None:
    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        writer.write(bytes((0x20, 5, 0, 0, 2, 0x7F, 0)))  # a property MQTT v5 does not have
        await reader.read(1024)

    with caplog.at_level(logging.DEBUG, logger="gridtao.transport.mqtt"):
        rx = against_scripted_broker(broker, lambda r: r.problem is not None,
                                     reconnect_min_s=0.05, reconnect_max_s=0.1)
    assert rx.problem is not None and "unknown property 0x7f" in rx.problem.line
    assert not any(r.exc_info for r in caplog.records)
