"""``gridtao site``: run the site coordinator until SIGINT/SIGTERM (docs/site.md).

The configuration file is the agent's format: ``mqtt`` (the site's prefix and broker), ``auth``
(who may sign a site dispatch), ``metrics``, ``facility`` (the site's model to the meter) and
``site`` (gridtao/config/site.py). Exit 0 on a clean stop, 2 with one line for a bad
configuration or key file.
"""

from __future__ import annotations

import argparse

from gridtao.config.agent import Config, ConfigError
from gridtao.transport.mqtt import new_event_loop


def configure_site(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve the site's metrics on this port (default: metrics.port; 0: any "
                        "free port)")


def run_site_command(args: argparse.Namespace, config: Config) -> int:
    import dataclasses

    from gridtao.site.serve import run_site

    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port: must be between 0 and 65535, got "
                              f"{args.metrics_port}")
        config = dataclasses.replace(config, metrics=dataclasses.replace(
            config.metrics, enabled=True, port=args.metrics_port))
    loop = new_event_loop()
    try:
        return loop.run_until_complete(run_site(config, freeze_startup_heap=True))
    finally:
        loop.close()
