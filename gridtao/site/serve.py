"""``gridtao site``'s lifecycle: one coordinator on the caller's event loop, until stopped.

Three broker connections. Two are receive-only (gridtao/transport/receiver.py, read with
gridtao's own packet parser: a thousand nodes' statuses and acks cost the coordinator little):
the commands' (dispatches, awards, the nodes' acks, the meter, the site's own retained record)
and the nodes' retained state's (status, tracker, plan), drained commands first so an ack never
waits behind statuses. The third is what the coordinator publishes on, with the offline status
as its last will; it connects once the commands' connection is subscribed, so the site never
says it is online before it can hear a dispatch. The coordinator is fed message by message and
ticked every ``TICK_S``, and its metrics served when ``metrics.enabled``.
SIGINT and SIGTERM stop it; it changes no node on the way out (the nodes keep their events).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from typing import Any, Final, TypeVar

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from gridtao.clock import Clock, MonotonicClock
from gridtao.config.agent import Config, ConfigError
from gridtao.errors import GridtaoError
from gridtao.security.auth import Verifier
from gridtao.site.coordinator import SiteCoordinator
from gridtao.site.meterauth import meter_unsignable
from gridtao.site.metrics import register
from gridtao.site.records import MAX_RECORD_BYTES
from gridtao.site.signing import signer
from gridtao.telemetry.collectors import LinkCollector
from gridtao.transport.check import read_retained
from gridtao.transport.instance import Instance, other_instance
from gridtao.transport.mqtt import MqttLink, Will
from gridtao.transport.receiver import MqttReceiver
from gridtao.transport.supervision import Supervised
from gridtao.transport.tls import read_password, ssl_context
from gridtao.wire.site import SiteTopics

__all__ = ["TICK_S", "run_site", "signer"]

log = logging.getLogger("gridtao.site")

_Conn = TypeVar("_Conn", bound=Supervised)

#: How often the coordinator checks deadlines, rebalances and publishes (s).
TICK_S: Final = 0.05
#: State messages handled between two looks at the commands' connection.
STATE_BATCH: Final = 100
#: The largest packet each connection takes, bytes: the commands' carries the site's own
#: retained events record (every order of every event in force: hundreds of kilobytes for a
#: thousand nodes); the state's carries node statuses, tier 2 states, plans and meter readings
#: (kilobytes each).
COMMAND_MAX_PACKET_BYTES: Final = MAX_RECORD_BYTES + 1024
STATE_MAX_PACKET_BYTES: Final = 1024 * 1024


def _hangup() -> None:
    log.warning("SIGHUP: the site coordinator reloads nothing; restart it to apply a changed "
                "configuration or key (it rebuilds its view from the retained topics, and the "
                "nodes keep their events meanwhile; after a change of the site's key, list "
                "the old one under site.signing.previous so that its record is taken back)")


class SiteInUse(GridtaoError):
    """Another running coordinator serves this site (its prefix)."""


async def _ensure_unique(config: Config, me: Instance, wall: float) -> None:
    """Raise :class:`SiteInUse` when the site's retained status shows another coordinator
    alive (transport/instance.py: online, fresh, and, on this host, its process alive): two
    would split every site dispatch twice. A broker that cannot be asked lets the start go on."""
    status = await read_retained(config, SiteTopics(config.mqtt.prefix).status)
    if status is None:
        return
    other = other_instance(status, me, wall=wall, status_period_s=config.site.status_period_s)
    if other is not None:
        raise SiteInUse(f"{config.source}: site {config.site.id!r} under "
                        f"{config.mqtt.prefix}/ is already coordinated by a running coordinator "
                        f"({other}): run one coordinator per site")


async def run_site(config: Config, *, stop: asyncio.Event | None = None,
                   clock: Clock | None = None,
                   registry: CollectorRegistry | None = None,
                   freeze_startup_heap: bool = False) -> int:
    """Run the coordinator until SIGINT/SIGTERM or ``stop``; 0 on a clean stop. SIGHUP (a
    ``systemctl reload``, a ``kill -HUP``) is logged and changes nothing: the coordinator
    reloads nothing live, and a restart applies a change (it rebuilds its view from the retained
    topics, and the nodes keep their events meanwhile). ``freeze_startup_heap``: the
    coordinator has its process to itself (``gridtao site``), so what it built before serving
    is frozen out of the garbage collector; never in a process that runs many."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig, handler in ((signal.SIGINT, stop.set), (signal.SIGTERM, stop.set),
                         (signal.SIGHUP, _hangup)):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
    clock = clock or MonotonicClock()
    verifier = Verifier.from_config(config.auth, source=config.source)
    unreadable = meter_unsignable(config)
    if unreadable is not None:
        log.warning("%s: %s", config.source, unreadable)
    sign = signer(config)
    m = config.mqtt
    publisher: list[MqttLink] = []  # made once the coordinator can name its last will

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        publisher[0].publish_nowait(topic, payload, qos, retain)

    me = Instance()
    await _ensure_unique(config, me, clock.wall())
    coordinator = SiteCoordinator(config, clock=clock, publish=publish, sign=sign,
                                  verifier=verifier, instance=me.fields())
    tls, password = ssl_context(m, source=config.source), read_password(m, source=config.source)

    def link(role: str, kind: type[_Conn], **extra: Any) -> _Conn:
        return kind.for_broker(
            m, client_id=f"gridtao-site-{config.site.id}-{role}-{os.getpid()}", tls=tls,
            password=password, clock=clock, name=role, **extra)

    # What is published goes out on a connection of its own, with the last will.
    out = link("out", MqttLink, max_outbound=100_000,
               will=Will(coordinator.topics.status, coordinator.offline_payload(), qos=1,
                         retain=True))
    publisher.append(out)
    # Two receive-only connections: the broker queues per connection, so the nodes' acks and
    # the aggregator's commands never wait behind a backlog of statuses. Each tells the broker
    # the largest packet it takes (MQTT v5 Maximum Packet Size): a huge publish on a node's
    # status (anyone with that node's credentials) costs the site nothing.
    commands = link("cmd", MqttReceiver, subscriptions=coordinator.command_subscriptions(),
                    retained_topics=[coordinator.events_topic],
                    max_packet_bytes=COMMAND_MAX_PACKET_BYTES)
    states = link("state", MqttReceiver, subscriptions=coordinator.state_subscriptions(),
                  retained_topics=[topic for topic, _ in coordinator.state_subscriptions()],
                  max_packet_bytes=STATE_MAX_PACKET_BYTES)
    registry = registry if registry is not None else CollectorRegistry()
    register(coordinator, registry)
    # A site whose commands' connection alone is down still says it is online (its will is
    # on the publishing one): its status's ``links`` and this metric say which one is down.
    def receiving() -> dict[str, bool]:
        return {"cmd": commands.is_connected, "state": states.is_connected}

    coordinator.links = receiving
    LinkCollector(lambda: {"out": out.is_connected, **receiving()}, registry=registry)
    server: Any = None
    if config.metrics.enabled:
        mc = config.metrics
        try:
            server, _ = start_http_server(mc.port, addr=mc.host, registry=registry)
        except OSError as e:  # a host not on this machine, a port in use, a bad name
            raise ConfigError(f"{config.source}: metrics.host/metrics.port {mc.host}:{mc.port}: "
                              f"cannot listen there: {e.strerror or e}") from None
        log.info("metrics at http://%s:%d/metrics", mc.host, server.server_port)
    if freeze_startup_heap:
        # What is built so far lives as long as the coordinator: frozen, it is never scanned
        # again (a full collection of it takes about 20 ms, each time one comes due).
        gc.collect()
        gc.freeze()
    runners = [asyncio.ensure_future(conn.run()) for conn in (commands, states)]
    log.info("site %s: coordinating under %s/ (broker %s:%d)", config.site.id, m.prefix,
             m.host, m.port)
    arrived = asyncio.Event()
    commands.on_inbound = states.on_inbound = arrived.set
    publishing = False
    try:
        # Nothing is said (the site's online status first) before the commands can be heard.
        waits = [asyncio.ensure_future(e.wait()) for e in (commands.connected, stop)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if not stop.is_set():
            runners.append(asyncio.ensure_future(out.run()))
            publishing = True
        while not stop.is_set():
            arrived.clear()  # before draining: a message landing after the drain wakes us
            while True:
                while (msg := commands.poll()) is not None:
                    coordinator.on_message(msg.topic, msg.payload, retained=msg.retain)
                for _ in range(STATE_BATCH):  # then some state, and commands again
                    if (msg := states.poll()) is None:
                        break
                    coordinator.on_message(msg.topic, msg.payload, retained=msg.retain)
                else:
                    coordinator.tick()
                    continue
                break
            coordinator.tick()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(arrived.wait(), timeout=TICK_S)
    finally:
        if publishing:  # say offline where the site said it was online
            out.publish_nowait(coordinator.topics.status, coordinator.offline_payload(), 1,
                               True)
            with contextlib.suppress(Exception):
                await out.flush(2.0)
        for runner in runners:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        if server is not None:
            server.shutdown()
            server.server_close()
        log.info("site %s stopped", config.site.id)
    return 0
