"""A worker process of ``gridtao bench fleet``: many simulated nodes (bench/fleetnode.py) and,
for the baseline, as many plain subscribers, each with broker connections of its own.

Each node has three MQTT v5 connections, as the agent's island has: a receive-only one for
``dispatch`` and its own dispatch inbox and another for ``frequency``, both read with the
agent's own packet parser (bench/fleetrecv.py), and a paho one its acks and retained status go
out on, with the offline status as its last will. :func:`worker_main` runs every socket on one
``selectors`` loop (paho clients driven without a network thread each), a command pipe to the
bench (bench/fleetproc.py), and timers: the lane's tick (every ``TICK_S`` for nodes with an
event, every ``IDLE_TICK_S`` for the others), keepalives, and the statuses, staggered over a
period. Timers wait while messages are waiting (up to ``MAX_DEFER_S``), and statuses then go
out ``STATUS_BATCH`` at a time, so that nodes sharing a core do not hold up each other's
messages with periodic work; for the same reason a pass of the loop sends the acks of the
dispatches it handled at its end (an agent sends its acks on a connection and thread of their
own). Likewise garbage: a worker's heap holds hundreds of nodes, and an automatic collection
would stop them all at once for tens of milliseconds (30-38 ms measured for a full one), a
pause no node's own process, whose heap is one node's, would see. Automatic collection is off
in a worker; it collects while its nodes are idle: once they settle after each dispatch, and
on the idle tick at most every ``COLLECT_S`` when no node holds an event. Receipt and command
times are Unix seconds (``time.time()``).
"""

from __future__ import annotations

import collections
import functools
import gc
import logging
import math
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from gridtao.app.links import PACKET_OVERHEAD_BYTES
from gridtao.bench.fleetnode import FleetNode
from gridtao.bench.fleetrecv import RawReceiver
from gridtao.clock import MonotonicClock
from gridtao.config.agent import config_from_mapping
from gridtao.hotpath.intake import Outgoing
from gridtao.transport.packets import Publish
from gridtao.wire.payloads import offline_payload

__all__ = ["FIRST_STATUS_S", "WorkerSpec", "worker_main"]

TICK_S = 0.05  # the island lane's tick (gridtao/hotpath/lane.py), for nodes with an event
IDLE_TICK_S = 1.0  # the other nodes' tick, and every client's keepalive check
MAX_DEFER_S = 0.2  # how long ticks and statuses may wait behind waiting messages
STATUS_BATCH = 4  # statuses sent per pass of the loop while messages are waiting
KEEPALIVE_S = 60
COLLECT_S = 5.0  # the longest a worker goes without collecting its garbage while idle
#: A node's first status (and first reading of its GPUs) after one refresh of the simulated
#: GPUs' instant power (``gpus.sim.refresh_ms``), s.
FIRST_STATUS_S = 1.0

#: Per dispatch payload: [received, commanded, max received_at, max commanded_at,
#: min commanded_at]; the first acks of nodes that did not command, in ``refusals``.
DispatchStats = list[float]


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process's share of the fleet. ``config``: the nodes' configuration mapping
    (``mqtt.node_id`` is set per node); ``status_period_s``: seconds between statuses."""

    host: str
    port: int
    prefix: str
    node_ids: tuple[str, ...]
    config: dict[str, Any]
    status_period_s: float
    writer_threads: bool = False


@dataclass
class _Conn:
    """A paho client on the worker's selector, and what it subscribes to once connected."""

    client: paho.Client
    topics: list[tuple[str, int]]
    subscribed: bool = False
    writing: bool = False


@dataclass
class _Worker:
    spec: WorkerSpec
    pipe: Connection
    sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    conns: list[_Conn] = field(default_factory=list)
    plain: list[_Conn] = field(default_factory=list)
    nodes: list[FleetNode] = field(default_factory=list)
    island_conn: dict[str, _Conn] = field(default_factory=dict)
    receivers: list[RawReceiver] = field(default_factory=list)
    busy: set[FleetNode] = field(default_factory=set)
    dispatches: dict[bytes, DispatchStats] = field(default_factory=dict)
    refusals: dict[bytes, list[str]] = field(default_factory=dict)
    # Per frequency sample: [received, accepted, last receipt, first receipt].
    samples: dict[bytes, list[float]] = field(default_factory=dict)
    plain_seen: dict[bytes, list[float]] = field(default_factory=dict)  # [received, max]
    waiting: dict[str, Callable[[], bool]] = field(default_factory=dict)
    #: The acks of this pass of the loop, sent at its end (``_on_dispatch``).
    acks: list[tuple[FleetNode, list[Outgoing]]] = field(default_factory=list)
    #: Receivers holding PUBACKs, written with the acks (bench/fleetrecv.py).
    acking: list[RawReceiver] = field(default_factory=list)
    running: bool = True

    # ---- connections ---------------------------------------------------------------------

    def connect(self, client_id: str, topics: list[tuple[str, int]],
                on_message: Callable[[paho.Client, object, paho.MQTTMessage], None],
                will: tuple[str, bytes] | None = None) -> _Conn:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        conn = _Conn(c, topics)
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)

        def on_connect(client: paho.Client, userdata: object, flags: object, rc: object,
                       props: object) -> None:
            if not topics:  # a node's acks and status: it publishes only
                conn.subscribed = True
                return
            client.subscribe([(t, SubscribeOptions(qos=q, retainHandling=2)) for t, q in topics])

        def on_subscribe(client: paho.Client, userdata: object, mid: int, codes: object,
                         props: object) -> None:
            conn.subscribed = True

        c.on_connect = on_connect
        c.on_subscribe = on_subscribe
        c.on_message = on_message
        c.connect(self.spec.host, self.spec.port, keepalive=KEEPALIVE_S)
        sock = c.socket()
        assert sock is not None
        self.sel.register(sock, selectors.EVENT_READ, conn)
        self.flush(conn)
        return conn

    def flush(self, conn: _Conn) -> None:
        """Write what the client has queued now; wait for the socket only if it is full."""
        c = conn.client
        if c.want_write():
            c.loop_write()
        want = c.want_write()
        if want != conn.writing:
            sock = c.socket()
            if sock is not None:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
                self.sel.modify(sock, events, conn)
                conn.writing = want

    def close(self, conns: list[_Conn]) -> None:
        for conn in conns:
            sock = conn.client.socket()
            conn.client.disconnect()
            if sock is not None:
                self.sel.unregister(sock)
        conns.clear()

    # ---- nodes ---------------------------------------------------------------------------

    def start_nodes(self) -> None:
        clock = MonotonicClock()
        spec = self.spec
        for node_id in spec.node_ids:
            config = config_from_mapping(
                spec.config | {"mqtt": spec.config["mqtt"] | {"node_id": node_id}},
                source="gridtao bench fleet")
            node = FleetNode(node_id, config, clock, writer_threads=spec.writer_threads)
            t = node.topics
            # As the agent's island: dispatches and frequency each on a receive-only
            # connection of their own, acks and the status (with the last will) on a third.
            island = self.connect(f"fleet-{node_id}-island", [], self._on_plain,
                                  will=(t.status, offline_payload(node_id)))
            self.conns.append(island)
            self.island_conn[node_id] = island
            biggest = config.mqtt.max_payload_bytes + PACKET_OVERHEAD_BYTES
            for role, topics, handle in (
                    ("dispatch", [(t.dispatch, 1), (t.node_dispatch, 1)], self._on_dispatch),
                    ("frequency", [(t.frequency, 0)], self._on_frequency)):
                receiver = RawReceiver(
                    spec.host, spec.port, f"fleet-{node_id}-{role}", topics,
                    functools.partial(handle, node), keepalive_s=KEEPALIVE_S,
                    max_packet_bytes=biggest)
                self.sel.register(receiver.sock, selectors.EVENT_READ, receiver)
                self.receivers.append(receiver)
            self.nodes.append(node)
        gc.collect()
        gc.freeze()  # the nodes live as long as the process: keep them out of every collection

    def _on_dispatch(self, node: FleetNode, msg: Publish) -> None:
        wall, mono = time.time(), time.monotonic()
        payload = msg.payload
        node.activated = None
        out = node.intake.on_message(msg.topic, payload, received_at=mono,
                                     received_wall=wall, retained=msg.retain)
        act = node.activated
        st = self.dispatches.get(payload)
        if st is None:
            st = self.dispatches[payload] = [0, 0, 0.0, 0.0, float("inf")]
        st[0] += 1
        st[2] = max(st[2], wall)
        if act is not None and act.commanded:
            st[1] += 1
            st[3] = max(st[3], act.commanded_wall)
            st[4] = min(st[4], act.commanded_wall)
            self.busy.add(node)
            node.idle_since = None
        elif out:
            self.refusals.setdefault(payload, []).append(out[0].payload.decode())
        # Sent once the loop's pass has handled every message it read: an agent's acks go out
        # on a connection and thread of their own, so one node's ack must not hold up the
        # next node's command here, where many nodes share a core.
        self.acks.append((node, out))
        if st[0] == len(self.nodes):
            self.pipe.send(("dispatch", payload, st, self.refusals.get(payload, [])))

    def _on_frequency(self, node: FleetNode, msg: Publish) -> None:
        wall, mono = time.time(), time.monotonic()
        payload = msg.payload
        before = node.monitor.last_sample_s
        out = node.intake.on_message(msg.topic, payload, received_at=mono,
                                     received_wall=wall, retained=msg.retain)
        st = self.samples.get(payload)
        if st is None:
            st = self.samples[payload] = [0, 0, wall, wall]
        st[0] += 1
        st[1] += node.monitor.last_sample_s != before
        st[2] = max(st[2], wall)
        st[3] = min(st[3], wall)
        if out:
            self.busy.add(node)
            node.idle_since = None
            self._publish(node, out)

    def _on_plain(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        wall, payload = time.time(), bytes(msg.payload)
        st = self.plain_seen.get(payload)
        if st is None:
            st = self.plain_seen[payload] = [0, 0.0]
        st[0] += 1
        st[1] = max(st[1], wall)
        if st[0] == len(self.plain):
            self.pipe.send(("plain_seen", payload, st))

    def _publish(self, node: FleetNode, out: list[Outgoing]) -> None:
        conn = self.island_conn[node.node_id]
        for o in out:
            conn.client.publish(o.topic, o.payload, qos=o.qos, retain=o.retain)
        self.flush(conn)

    def publish_status(self, node: FleetNode) -> None:
        node.read_draw()
        conn = self.island_conn[node.node_id]
        conn.client.publish(node.topics.status, node.status(), qos=1, retain=True)
        self.flush(conn)

    # ---- the loop ------------------------------------------------------------------------

    def serve(self) -> None:
        self.sel.register(self.pipe.fileno(), selectors.EVENT_READ, None)
        self.pipe.send(("hello", None))  # imports done: the bench's CPU figures start after
        statuses: collections.deque[tuple[float, FleetNode]] = collections.deque()
        next_tick = next_idle = collected_at = time.monotonic()
        next_ping = next_idle + KEEPALIVE_S / 2
        gc.disable()  # the module docstring: collected while the nodes are idle
        while self.running:
            due = min(next_tick, next_idle, statuses[0][0] if statuses else math.inf)
            ready = self.sel.select(max(0.0, due - time.monotonic()))
            for key, events in ready:
                conn = key.data
                if conn is None:
                    self.command(statuses)
                    if not self.running:  # stopped: every connection is closed
                        break
                    continue
                if isinstance(conn, RawReceiver):
                    if conn.on_readable():
                        self.acking.append(conn)
                    continue
                c = conn.client
                if events & selectors.EVENT_READ:
                    c.loop_read()
                if events & selectors.EVENT_WRITE:
                    c.loop_write()
                self.flush(conn)
            if not self.running:
                break
            # Messages that arrived meanwhile are handled before the acks go: on a real site a
            # node's acks take none of another node's CPU.
            while self.acks:
                more = [key.data for key, _ in self.sel.select(0)
                        if isinstance(key.data, RawReceiver)]
                if not more:
                    break
                for receiver in more:
                    if receiver.on_readable():
                        self.acking.append(receiver)
            for receiver in self.acking:
                receiver.send_pubacks()
            self.acking.clear()
            for node, out in self.acks:
                self._publish(node, out)
            self.acks.clear()
            for kind, done in list(self.waiting.items()):
                if done():
                    del self.waiting[kind]
                    if kind == "settled":  # the nodes are idle until the next dispatch
                        collected_at = self.collect()
                    self.pipe.send((kind, None))
            now = time.monotonic()
            # Periodic work waits while messages are waiting (up to MAX_DEFER_S), and statuses
            # then go out a few at a time: nodes that share a core must not hold up each
            # other's messages with it.
            if not self.running or now < due:
                continue
            late = now - due >= MAX_DEFER_S
            batch = STATUS_BATCH if ready and not late else len(statuses)
            while batch > 0 and statuses and statuses[0][0] <= now:
                at, node = statuses.popleft()
                self.publish_status(node)
                statuses.append((max(at + self.spec.status_period_s, now), node))
                batch -= 1
            if ready and not late:
                continue
            if now >= next_tick:
                next_tick = now + TICK_S
                for node in list(self.busy):
                    self._publish(node, node.tick())
                    if not node.busy:
                        self.busy.discard(node)
            if now >= next_idle:
                next_idle = now + IDLE_TICK_S
                if not self.busy and now - collected_at >= COLLECT_S:
                    collected_at = self.collect()
                if now >= next_ping:
                    next_ping = now + KEEPALIVE_S / 2
                    for receiver in self.receivers:
                        receiver.ping()
                for node in self.nodes:
                    if node not in self.busy:
                        self._publish(node, node.intake.on_tick())
                for conn in (*self.conns, *self.plain):
                    conn.client.loop_misc()
                    self.flush(conn)
        self.sel.close()

    @staticmethod
    def collect() -> float:
        """Collect the garbage of every generation; when it was done (monotonic s)."""
        gc.collect()
        return time.monotonic()

    def command(self, statuses: collections.deque[tuple[float, FleetNode]]) -> None:
        kind, arg = self.pipe.recv()
        if kind == "plain":  # arg: the topic
            for k, node_id in enumerate(self.spec.node_ids):
                self.plain.append(self.connect(f"fleet-plain-{node_id}-{k}", [(arg, 1)],
                                               self._on_plain))
            self.waiting["plain_ready"] = lambda: all(c.subscribed for c in self.plain)
        elif kind == "plain_close":
            self.close(self.plain)
            seen, self.plain_seen = self.plain_seen, {}
            self.pipe.send(("plain_closed", seen))
        elif kind == "nodes":
            self.start_nodes()
            now, period = time.monotonic(), self.spec.status_period_s
            for k, node in enumerate(self.nodes):  # staggered over a period
                statuses.append((now + FIRST_STATUS_S + period * k / len(self.nodes), node))
            self.waiting["nodes_ready"] = lambda: (all(c.subscribed for c in self.conns)
                                                   and all(r.subscribed for r in self.receivers))
        elif kind == "query":  # arg: a dispatch payload whose nodes did not all answer
            st = self.dispatches.get(arg, [0, 0, 0.0, 0.0, float("inf")])
            self.pipe.send(("dispatch", arg, st, self.refusals.get(arg, [])))
        elif kind == "settle":
            self.waiting["settled"] = lambda: not self.busy
        elif kind == "frequency":
            samples, self.samples = self.samples, {}
            self.pipe.send(("frequency", samples))
        elif kind == "stop":
            for node in self.nodes:
                self.island_conn[node.node_id].client.publish(
                    node.topics.status, offline_payload(node.node_id), qos=1, retain=True)
                self.flush(self.island_conn[node.node_id])
            self.close(self.conns)
            self.close(self.plain)
            for receiver in self.receivers:
                self.sel.unregister(receiver.sock)
                receiver.close()
            self.receivers.clear()
            for node in self.nodes:
                node.island.close()
                node.backend.close()
            self.running = False
            self.pipe.send(("stopped", len(self.nodes)))


def worker_main(spec: WorkerSpec, pipe: Connection) -> None:
    """A worker process's body: serve ``spec``'s nodes until the bench says stop."""
    logging.basicConfig(level=logging.WARNING, format="%(processName)s %(name)s: %(message)s")
    # The island warns on every batch it writes in turn (writer threads not started): that is
    # this bench's choice, said once in its output, not news per trigger.
    logging.getLogger("gridtao.safety").setLevel(logging.ERROR)
    # Every node says once when the bench's frequency feed stops ("frequency feed stale"): a
    # thousand identical lines between two phases.
    logging.getLogger("gridtao.frequency").setLevel(logging.ERROR)
    _Worker(spec, pipe).serve()
