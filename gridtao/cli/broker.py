"""``gridtao check-broker``: connect once with the configured TLS and credentials, then exit.

For operators wiring a node to a broker: it answers "would the agent get in?" in one line,
without opening any GPU. Exit status 0 when the broker accepted the connection and the
subscriptions to the dispatch and frequency topics, 2 (with the reason on stderr) otherwise.
For the site coordinator's file (gridtao/cli/checksite.py), the subscriptions are those of
``gridtao site``, and the line names the topics it publishes to.
"""

from __future__ import annotations

import argparse
import sys

from gridtao.cli.checksite import add_role_options, for_site
from gridtao.config.agent import Config, ConfigError
from gridtao.transport.check import probe_broker, probe_site_broker
from gridtao.transport.mqtt import new_event_loop

__all__ = ["check_broker", "configure_check_broker", "run_check_broker"]

def configure_check_broker(p: argparse.ArgumentParser) -> None:
    add_role_options(p)
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the broker's answers (default 10)")


async def check_broker(config: Config, *, timeout_s: float = 10.0,
                       site: bool = False) -> tuple[bool, str]:
    """Connect and subscribe once as this node's agent would, or with ``site`` as the site
    coordinator would; (accepted, one line saying why).

    Raises :class:`ConfigError` for a bad TLS or password configuration.
    """
    if site:
        return await probe_site_broker(config, timeout_s=timeout_s)
    from gridtao.app.options import default_node_id

    return await probe_broker(config, node_id=config.mqtt.node_id or default_node_id(),
                              timeout_s=timeout_s)


def run_check_broker(args: argparse.Namespace, config: Config) -> int:
    if not 0.1 <= args.timeout <= 600:
        raise ConfigError("--timeout: must be between 0.1 and 600 s")
    loop = new_event_loop()
    try:
        ok, line = loop.run_until_complete(check_broker(config, timeout_s=args.timeout,
                                                        site=for_site(args, config)))
    finally:
        loop.close()
    if ok:
        print(f"ok: {line}")
        return 0
    print(f"gridtao: error: {line}", file=sys.stderr)
    return 2
