"""Connect and subscribe once as the agent would, and say in one line what happened.

Used by ``gridtao check-broker``; the agent's own connection is :mod:`gridtao.transport.mqtt`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import aiomqtt

from gridtao.config.agent import Config
from gridtao.transport.diagnose import AttemptLog, PahoTap, connected
from gridtao.transport.tls import read_password, ssl_context
from gridtao.wire import messages as wire

__all__ = ["probe_broker"]

log = logging.getLogger("gridtao.check_broker")


async def probe_broker(config: Config, *, node_id: str, timeout_s: float = 10.0
                       ) -> tuple[bool, str]:
    """Connect and subscribe once as the agent would; (accepted, one line saying why).

    Raises :class:`ConfigError` for a bad TLS or password configuration.
    """
    m = config.mqtt
    tls = ssl_context(m, source=config.source)
    password = read_password(m, source=config.source)
    topics = wire.Topics(m.prefix, node_id)
    tap = PahoTap(asyncio.get_running_loop())
    client = aiomqtt.Client(
        m.host, m.port,
        identifier=f"gridtao-check-{os.getpid()}-{uuid.uuid4().hex[:8]}",  # never the agent's
        protocol=aiomqtt.ProtocolVersion.V5,
        keepalive=m.keepalive_s, timeout=timeout_s,
        tls_context=tls, username=m.username, password=password, logger=tap,
    )
    subscriptions = [(topics.dispatch, 1), (topics.frequency, 0)]
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
        return False, attempts.diagnose(e).line
    how = " over TLS" if tls is not None else " (no TLS)"
    who = f" as {m.username!r}" if m.username else ""
    return True, (f"broker {m.host}:{m.port} accepted the connection{how}{who} and the "
                  f"subscriptions to {topics.dispatch} and {topics.frequency}")
