"""Connect and subscribe once as the agent (or the site coordinator) would, and say in one line
what happened.

Used by ``gridtao check-broker``; the agent's own connection is :mod:`gridtao.transport.mqtt`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import uuid

import aiomqtt

from gridtao.config.agent import Config
from gridtao.transport.diagnose import AttemptLog, PahoTap, connected
from gridtao.transport.tls import read_password, ssl_context
from gridtao.wire import messages as wire
from gridtao.wire.site import SiteTopics

__all__ = ["probe_broker", "probe_site_broker", "read_retained", "read_retained_now"]

log = logging.getLogger("gridtao.check_broker")


def _one_off_client(config: Config, role: str, *, tls: ssl.SSLContext | None,
                    timeout_s: float) -> tuple[aiomqtt.Client, PahoTap]:
    """A short-lived client with the node's broker settings and credentials, under a client id
    that is never the agent's (the broker would drop the agent's own connection). Call on the
    running event loop."""
    m = config.mqtt
    tap = PahoTap(asyncio.get_running_loop())
    client = aiomqtt.Client(
        m.host, m.port,
        identifier=f"gridtao-{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        keepalive=m.keepalive_s, timeout=timeout_s,
        tls_context=tls, username=m.username,
        password=read_password(m, source=config.source), logger=tap,
    )
    return client, tap


async def _subscribe_once(config: Config, subscriptions: list[tuple[str, int]], *,
                          tls: ssl.SSLContext | None, timeout_s: float) -> str | None:
    """Connect once and subscribe to ``subscriptions``; None when the broker accepted both,
    else one line saying why not."""
    m = config.mqtt
    client, tap = _one_off_client(config, "check", tls=tls, timeout_s=timeout_s)
    try:
        async with connected(client, tap):
            codes = await client.subscribe(subscriptions)
            refused = [topic for (topic, _), code in zip(subscriptions, codes, strict=False)
                       if getattr(code, "is_failure", False)]
            if refused:
                raise aiomqtt.MqttError(f"broker refused subscription to {refused}")
    except (aiomqtt.MqttError, OSError) as e:
        attempts = AttemptLog(log, host=m.host, port=m.port, tls=tls, username=m.username,
                              interval_s=m.error_log_interval_s, clock=lambda: 0.0)
        return attempts.diagnose(e).line
    return None


#: What a granted subscription does not prove, said with every "ok".
GRANT_CAVEAT = ("a grant is no proof of read rights: a broker such as Mosquitto grants every "
                "subscription and applies its ACL when it delivers")


def _accepted(config: Config, tls: ssl.SSLContext | None) -> str:
    m = config.mqtt
    how = " over TLS" if tls is not None else " (no TLS)"
    who = f" as {m.username!r}" if m.username else ""
    return f"broker {m.host}:{m.port} accepted the connection{how}{who}"


async def probe_broker(config: Config, *, node_id: str, timeout_s: float = 10.0
                       ) -> tuple[bool, str]:
    """Connect and subscribe once as the agent would; (accepted, one line saying why).

    Raises :class:`ConfigError` for a bad TLS or password configuration.
    """
    tls = ssl_context(config.mqtt, source=config.source)
    topics = wire.Topics(config.mqtt.prefix, node_id)
    subscriptions = [(topics.dispatch, 1), (topics.node_dispatch, 1), (topics.frequency, 0)]
    failed = await _subscribe_once(config, subscriptions, tls=tls, timeout_s=timeout_s)
    if failed is not None:
        return False, failed
    return True, (f"{_accepted(config, tls)} and granted the subscriptions to "
                  f"{topics.dispatch}, {topics.node_dispatch} and {topics.frequency} "
                  f"({GRANT_CAVEAT})")


async def probe_site_broker(config: Config, *, timeout_s: float = 10.0) -> tuple[bool, str]:
    """Connect and subscribe once as ``gridtao site`` would (every topic of both its
    connections); (accepted, one line saying why). Nothing is published: the line names the
    topics the coordinator publishes to, for the ACL, untried.

    Raises :class:`ConfigError` for a bad TLS or password configuration.
    """
    tls = ssl_context(config.mqtt, source=config.source)
    topics = SiteTopics(config.mqtt.prefix)
    subscriptions = topics.command_subscriptions() + topics.state_subscriptions()
    failed = await _subscribe_once(config, subscriptions, tls=tls, timeout_s=timeout_s)
    if failed is not None:
        return False, failed
    return True, (f"{_accepted(config, tls)} and granted the site coordinator's "
                  f"subscriptions to {', '.join(topic for topic, _ in subscriptions)} "
                  f"({GRANT_CAVEAT}); it publishes to {', '.join(topics.published())} (not "
                  "tried: a check publishes nothing)")


#: How long to wait after the subscription is granted for a retained message to arrive (the
#: broker sends it right after the SUBACK; none may exist).
RETAINED_WAIT_S = 0.25


async def read_retained(config: Config, topic: str, *, timeout_s: float = 2.0) -> bytes | None:
    """The retained message on ``topic``, or None when there is none or the broker cannot be
    asked (unreachable, refused, ACL): the caller proceeds without the answer."""
    client, tap = _one_off_client(config, "peek", tls=ssl_context(config.mqtt,
                                                                 source=config.source),
                                  timeout_s=timeout_s)
    try:
        async with connected(client, tap):
            await client.subscribe(topic, qos=1)

            async def first_retained() -> bytes | None:
                async for message in client.messages:
                    if message.retain and isinstance(message.payload, bytes):
                        return message.payload
                return None

            try:
                return await asyncio.wait_for(first_retained(), RETAINED_WAIT_S)
            except TimeoutError:
                return None
    except (aiomqtt.MqttError, OSError) as e:
        # The agent's own connection reports a broker problem, once and clearly.
        log.debug("could not read %s (%s): going on without it", topic, e)
    return None


def read_retained_now(config: Config, topic: str, *, timeout_s: float = 2.0) -> bytes | None:
    """:func:`read_retained` from synchronous code, on a private thread and event loop."""
    from gridtao.transport.mqtt import new_event_loop

    result: list[bytes | None] = [None]

    def run() -> None:
        loop = new_event_loop()
        try:
            result[0] = loop.run_until_complete(read_retained(config, topic,
                                                              timeout_s=timeout_s))
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="gridtao-peek", daemon=True)
    thread.start()
    thread.join(timeout_s + RETAINED_WAIT_S + 2.0)
    return result[0]
