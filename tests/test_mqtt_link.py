"""MqttLink against a real mosquitto: delivery, publishing, will, reconnection, threads."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import TypeVar

import aiomqtt
import pytest
from broker import MosquittoBroker
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gridtao.clock import VirtualClock
from gridtao.transport.mqtt import InboundMessage, MqttLink, Will, new_event_loop
from gridtao.wire.messages import Topics, offline_payload

T = TypeVar("T")
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def run(main: Callable[[], Awaitable[T]], *, loop: str = "uvloop", timeout_s: float = 15.0) -> T:
    """Run ``main()`` on a fresh loop of the given kind, with an overall timeout."""
    ev = LOOPS[loop]()
    try:
        return ev.run_until_complete(asyncio.wait_for(main(), timeout_s))
    finally:
        ev.run_until_complete(ev.shutdown_default_executor())
        ev.close()


def make_link(broker: MosquittoBroker, **kw: object) -> MqttLink:
    options: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": f"link-{random.randrange(1 << 30)}",
        "keepalive_s": 5,
        "reconnect_min_s": 0.02,
        "reconnect_max_s": 0.2,
    }
    options.update(kw)
    return MqttLink(**options)  # type: ignore[arg-type]


@asynccontextmanager
async def running(link: MqttLink, *, wait: bool = True) -> AsyncIterator[MqttLink]:
    task = asyncio.ensure_future(link.run())
    try:
        if wait:
            await asyncio.wait_for(link.connected.wait(), 5)
        yield link
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    assert not link.connected.is_set()


async def until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)


async def get(link: MqttLink, timeout_s: float = 5.0) -> InboundMessage:
    return await asyncio.wait_for(link.get(), timeout_s)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_subscribe_receive_and_publish(mqtt_broker: MosquittoBroker, loop: str) -> None:
    clock = VirtualClock(12.5)
    link = make_link(mqtt_broker, subscriptions=[("t/in", 1), ("t/freq", 0)], clock=clock)

    async def main() -> None:
        async with running(link):
            await asyncio.to_thread(mqtt_broker.publish, "t/in", b'{"a": 1}', qos=1)
            msg = await get(link)
            assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("t/in", b'{"a": 1}', 1, False)
            assert msg.received_at == 12.5 and msg.received_wall == clock.wall()
            await asyncio.to_thread(mqtt_broker.publish, "t/freq", b"49.9", qos=0)
            msg = await get(link)
            assert (msg.topic, msg.payload) == ("t/freq", b"49.9")

            with mqtt_broker.subscriber("t/out") as sub:
                await link.publish("t/out", b"one", qos=1)
                await link.publish("t/out", b"two", qos=0)
                assert await link.flush(5)
                got = await asyncio.to_thread(sub.wait, 2)
            assert [m.payload for m in got] == [b"one", b"two"]
            assert link.stats.published == 2 and link.stats.received == 2
            assert link.stats.connects == 1 and link.stats.reconnects == 0

    run(main, loop=loop)


def test_messages_iterator(mqtt_broker: MosquittoBroker) -> None:
    link = make_link(mqtt_broker, subscriptions=[("t/#", 1)])

    async def main() -> list[bytes]:
        async with running(link):
            for i in range(3):
                await asyncio.to_thread(mqtt_broker.publish, f"t/{i}", str(i).encode())
            out: list[bytes] = []
            async for msg in link.messages():
                out.append(msg.payload)
                if len(out) == 3:
                    break
            return out

    assert run(main) == [b"0", b"1", b"2"]


WILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from gridtao.wire.messages import Topics, offline_payload, status_payload
    from gridtao.transport.mqtt import MqttLink, Will

    port, node = int(sys.argv[1]), sys.argv[2]
    topics = Topics("gridtao/test", node)

    async def main():
        link = MqttLink(
            host="127.0.0.1", port=port, client_id=node, keepalive_s=60,
            will=Will(topics.status, offline_payload(node), qos=1, retain=True),
            on_connect_publish=lambda: [
                (topics.status, status_payload(node, True, 1.0, None, []), 1, True)
            ],
        )
        task = asyncio.ensure_future(link.run())
        await link.connected.wait()
        await link.flush(5)
        print("up", flush=True)
        await task

    asyncio.run(main())
    """
)


def test_retained_status_and_last_will_on_abrupt_death(mqtt_broker: MosquittoBroker) -> None:
    node = "node-will"
    topics = Topics("gridtao/test", node)
    proc = subprocess.Popen(
        [sys.executable, "-c", WILL_SCRIPT, str(mqtt_broker.port), node],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == b"up\n", proc.stderr.read() if proc.stderr else line
        with mqtt_broker.subscriber(topics.status) as sub:
            first = sub.wait(1)[0]
            assert first.retain
            assert json.loads(first.payload)["online"] is True
            os.kill(proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker must fire the will
            proc.wait(5)
            will = sub.wait(2)[1]
        assert json.loads(will.payload) == {"node": node, "online": False}
        assert will.payload == offline_payload(node)
        # The will was retained: a newcomer sees the node offline.
        late = mqtt_broker.collect(topics.status, 1)[0]
        assert late.retain and json.loads(late.payload)["online"] is False
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_broker_restart_reconnects_resubscribes_and_flushes(
    mqtt_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    connects = 0

    def hello() -> list[tuple[str, bytes, int, bool]]:
        nonlocal connects
        connects += 1
        return [("t/status", f"hello {connects}".encode(), 1, True)]

    link = make_link(
        mqtt_broker, subscriptions=[("t/echo", 1), ("t/in", 1)], on_connect_publish=hello
    )

    async def main() -> None:
        async with running(link):
            assert await link.flush(5)
            await asyncio.to_thread(mqtt_broker.stop)
            await until(lambda: not link.connected.is_set())
            await link.publish("t/echo", b"queued-1", qos=1)
            await link.publish("t/echo", b"queued-0", qos=0)
            assert link.outbox_len == 2
            assert not await link.flush(0.3)  # several failed reconnect attempts happen here
            await asyncio.to_thread(mqtt_broker.start)
            await asyncio.wait_for(link.connected.wait(), 5)
            # Our own queued messages come back through the renewed subscription, in order.
            got = [(await get(link)).payload for _ in range(2)]
            assert got == [b"queued-1", b"queued-0"]
            await asyncio.to_thread(mqtt_broker.publish, "t/in", b"after")
            assert (await get(link)).payload == b"after"
            status = await asyncio.to_thread(mqtt_broker.collect, "t/status", 1)
            assert status[0].payload == b"hello 2"  # re-announced on the new connection
            assert link.stats.connects == 2 and link.stats.reconnects == 1
            assert link.stats.losses == 1 and link.stats.dropped_outbound == 0

    with caplog.at_level(logging.DEBUG, logger="gridtao.transport.mqtt"):
        run(main)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lost" in warnings[0].getMessage()
    assert any("failed" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_unacknowledged_qos1_publish_is_resent_after_loss(mqtt_broker: MosquittoBroker) -> None:
    link = make_link(mqtt_broker, subscriptions=[("t/echo", 1)])

    async def main() -> None:
        async with running(link):
            await asyncio.to_thread(mqtt_broker.pause)
            await link.publish("t/echo", b"in-flight", qos=1)
            await until(lambda: link.outbox_len == 0)  # taken by the sender, awaiting PUBACK
            assert not await link.flush(0.2)
            await asyncio.to_thread(mqtt_broker.kill)  # the PUBACK never comes
            await until(lambda: not link.connected.is_set())
            assert link.outbox_len == 1
            await asyncio.to_thread(mqtt_broker.start)
            assert (await get(link)).payload == b"in-flight"
            assert await link.flush(5)
            assert link.stats.published == 1

    run(main)


def test_connects_once_broker_appears(mqtt_broker: MosquittoBroker) -> None:
    mqtt_broker.stop()
    link = make_link(mqtt_broker, subscriptions=[("t/x", 1)])

    async def main() -> None:
        async with running(link, wait=False):
            await asyncio.sleep(0.2)
            assert not link.connected.is_set()
            await link.publish("t/x", b"early", qos=1)
            await asyncio.to_thread(mqtt_broker.start)
            await asyncio.wait_for(link.connected.wait(), 5)
            assert (await get(link)).payload == b"early"
            assert link.stats.connects == 1 and link.stats.losses == 0

    run(main)


def test_outbox_bound_drops_oldest_qos0_first(mqtt_broker: MosquittoBroker) -> None:
    link = make_link(mqtt_broker, subscriptions=[("t/o", 1)], max_outbound=3)

    async def main() -> list[bytes]:
        for name, qos in [("a", 1), ("b", 0), ("c", 0), ("d", 1), ("e", 0), ("f", 1), ("g", 1)]:
            await link.publish("t/o", name.encode(), qos=qos)
        assert link.outbox_len == 3 and link.stats.dropped_outbound == 4
        async with running(link):
            return [(await get(link)).payload for _ in range(3)]

    # a,b,c,d -> drop b; +e -> drop c; +f -> drop e; +g -> no QoS 0 left, drop a.
    assert run(main) == [b"d", b"f", b"g"]


def test_inbox_overflow_keeps_newest(mqtt_broker: MosquittoBroker) -> None:
    link = make_link(mqtt_broker, subscriptions=[("t/f", 1)], max_inbound=2)

    async def main() -> list[bytes]:
        async with running(link):
            for i in range(5):
                await asyncio.to_thread(mqtt_broker.publish, "t/f", str(i).encode())
            await until(lambda: link.stats.received == 5)
            assert link.stats.dropped_inbound == 3
            return [(await get(link)).payload for _ in range(2)]

    assert run(main) == [b"3", b"4"]


def test_link_on_its_own_thread_and_loop(mqtt_broker: MosquittoBroker) -> None:
    """The safety island's shape: its own loop (uvloop) on its own thread, own connection."""
    link = make_link(mqtt_broker, subscriptions=[("island/in", 1)])
    loop = new_event_loop()
    ready = threading.Event()
    errors: list[BaseException] = []
    task_box: list[asyncio.Future[None]] = []

    async def island() -> None:
        task = asyncio.ensure_future(link.run())
        task_box.append(task)
        await link.connected.wait()
        ready.set()
        async for msg in link.messages():
            await link.publish("island/out", b"echo:" + msg.payload, qos=1)

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(island())
        except asyncio.CancelledError:
            pass
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)
        finally:
            for task in task_box:
                task.cancel()
            with suppress(asyncio.CancelledError):
                loop.run_until_complete(asyncio.gather(*task_box, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=thread_main, name="island-test", daemon=True)
    thread.start()
    try:
        assert ready.wait(5), errors
        assert threading.current_thread() is threading.main_thread()
        with mqtt_broker.subscriber("island/out") as sub:
            mqtt_broker.publish("island/in", b"ping")
            link.publish_threadsafe("island/out", b"from-main", qos=1)
            payloads = sorted(m.payload for m in sub.wait(2))
        assert payloads == [b"echo:ping", b"from-main"]
        assert link.is_connected
    finally:
        loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
        thread.join(5)
    assert not thread.is_alive()
    assert not errors


def test_backoff_grows_with_jitter_within_bounds() -> None:
    link = MqttLink(
        host="127.0.0.1",
        port=1,
        client_id="b",
        reconnect_min_s=0.1,
        reconnect_max_s=2.0,
        rng=random.Random(7),
    )
    for attempt in range(20):
        ceiling = min(2.0, 0.1 * 2**attempt)
        for _ in range(50):
            assert 0.1 <= link.backoff_s(attempt) <= ceiling
    assert max(link.backoff_s(10) for _ in range(200)) > 1.5  # reaches near the max
    assert max(link.backoff_s(0) for _ in range(200)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kw",
    [
        {"reconnect_min_s": 0.0},
        {"reconnect_min_s": 2.0, "reconnect_max_s": 1.0},
        {"keepalive_s": 0},
        {"max_outbound": 0},
        {"subscriptions": [("t", 3)]},
        {"will": Will("t", b"x", qos=5)},
    ],
)
def test_invalid_options_rejected(kw: dict[str, object]) -> None:
    options: dict[str, object] = {"host": "127.0.0.1", "port": 1, "client_id": "x"}
    options.update(kw)
    with pytest.raises(ValueError):
        MqttLink(**options)  # type: ignore[arg-type]


def test_publish_threadsafe_requires_running_link() -> None:
    link = MqttLink(host="127.0.0.1", port=1, client_id="x")
    with pytest.raises(RuntimeError):
        link.publish_threadsafe("t", b"x")
    with pytest.raises(ValueError):
        link.publish_nowait("t", b"x", qos=3)


def _sockets_to(port: int) -> list[socket.socket]:
    """This process's TCP sockets connected to ``port`` on loopback (duplicated fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            found.append(socket.socket(fileno=os.dup(int(fd))))
    return found


def test_the_link_sends_without_nagle_delay(mqtt_broker: MosquittoBroker) -> None:
    """TCP_NODELAY on the link's socket: a small publish is not held back ~40 ms waiting for
    the acknowledgement of the one before (Nagle's algorithm with delayed ACKs)."""
    link = make_link(mqtt_broker)

    async def main() -> list[int]:
        async with running(link):
            socks = _sockets_to(mqtt_broker.port)
            try:
                return [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in socks]
            finally:
                for s in socks:
                    s.close()

    flags = run(main)
    assert flags and all(flags), flags


def _lost(code: int) -> BaseException:
    """aiomqtt's error for a connection lost during message iteration, caused by ``code``."""
    try:
        try:
            raise aiomqtt.MqttCodeError(ReasonCode(PacketTypes.DISCONNECT, identifier=code))
        except aiomqtt.MqttCodeError as cause:
            raise aiomqtt.MqttError("Disconnected during message iteration") from cause
    except aiomqtt.MqttError as e:
        return e


def test_a_socket_the_broker_closed_is_said_as_the_receivers_say_it() -> None:
    link = MqttLink(host="127.0.0.1", port=1, client_id="words")
    assert link._lost_reason(_lost(128)) == "connection closed by the broker"
    # A reason the broker gave is kept, with its name.
    assert link._lost_reason(_lost(139)) == ("Disconnected during message iteration: "
                                             "[code:139] Server shutting down")
