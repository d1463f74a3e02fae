"""MqttReceiver, the island's receive-only connection, against a real Mosquitto: what it
receives and acknowledges, the retained messages it never asks for, a backlog drained into the
bounded inbox (the newest kept, the rest counted), reconnection, and a refused connection
diagnosed like any other link's."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

import pytest
from broker import MosquittoBroker, publish
from waiting import wait_until

from gridtao.transport.localbroker import Publisher
from gridtao.transport.mqtt import new_event_loop
from gridtao.transport.receiver import MqttReceiver

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
