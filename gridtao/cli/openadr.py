"""``gridtao openadr --config FILE``: the facility's OpenADR 2.0b VEN (docs/openadr.md).

``--config`` names the bridge's own YAML file (``configs/openadr.example.yaml`` documents every
key), not the agent's. ``--check`` validates it (key files and certificates included) and exits
0 without contacting the VTN or the broker. The bridge runs until SIGINT/SIGTERM (exit 0); a
bad configuration is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import os

from gridtao.config.agent import Config
from gridtao.config.schema import ConfigError

__all__ = ["configure_openadr", "run_openadr_command"]

ENV_VAR = "GRIDTAO_OPENADR_CONFIG"


def configure_openadr(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true",
                   help="validate the configuration (and its key files) and exit")


def run_openadr_command(args: argparse.Namespace, config: Config) -> int:
    """Run the bridge (``config``, the agent's, is not used: the bridge has its own file)."""
    from gridtao.openadr import Bridge, load_bridge_config, run_bridge
    from gridtao.transport.mqtt import new_event_loop

    path = args.config or os.environ.get(ENV_VAR) or None
    if path is None:
        raise ConfigError(f"gridtao openadr: --config FILE is required (or ${ENV_VAR}); "
                          "see configs/openadr.example.yaml")
    bridge_config = load_bridge_config(path)
    if args.check:
        Bridge(bridge_config).check()  # every key, password and certificate file it names
        print(f"{path}: OK (VEN {bridge_config.vtn.ven_name!r} for {bridge_config.vtn.url}, "
              f"dispatching on {bridge_config.mqtt.prefix}/dispatch, signing "
              f"{bridge_config.signing.mode})")
        return 0
    loop = new_event_loop()
    try:
        return loop.run_until_complete(run_bridge(bridge_config))
    finally:
        loop.close()
