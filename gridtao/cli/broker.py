"""``gridtao check-broker``: connect once with the configured TLS and credentials, then exit.

For operators wiring a node to a broker: it answers "would the agent get in?" in one line,
without opening any GPU. Exit status 0 when the broker accepted the connection and the
subscriptions to the dispatch and frequency topics, 2 (with the reason on stderr) otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid

import aiomqtt

from gridtao.config.agent import Config, ConfigError
from gridtao.transport.diagnose import AttemptLog, PahoTap, connected
from gridtao.transport.mqtt import new_event_loop
from gridtao.transport.tls import read_password, ssl_context
from gridtao.wire import messages as wire

__all__ = ["check_broker", "configure_check_broker", "run_check_broker"]

log = logging.getLogger("gridtao.check_broker")


def configure_check_broker(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the broker's answers (default 10)")


async def check_broker(config: Config, *, timeout_s: float = 10.0) -> tuple[bool, str]:
    """Connect and subscribe once as the agent would; (accepted, one line saying why).

    Raises :class:`ConfigError` for a bad TLS or password configuration.
    """
    from gridtao.app.agent import default_node_id

    m = config.mqtt
    tls = ssl_context(m, source=config.source)
    password = read_password(m, source=config.source)
    topics = wire.Topics(m.prefix, m.node_id or default_node_id())
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


def run_check_broker(args: argparse.Namespace, config: Config) -> int:
    if not 0.1 <= args.timeout <= 600:
        raise ConfigError("--timeout: must be between 0.1 and 600 s")
    loop = new_event_loop()
    try:
        ok, line = loop.run_until_complete(check_broker(config, timeout_s=args.timeout))
    finally:
        loop.close()
    if ok:
        print(f"ok: {line}")
        return 0
    print(f"gridtao: error: {line}", file=sys.stderr)
    return 2
