"""``gridtao run`` and ``gridtao demo``: the agent itself, and the agent on simulated GPUs.

Each is a ``configure(parser)`` / ``run(args, config) -> exit status`` pair registered in
:data:`gridtao.cli.main.COMMANDS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gridtao.config.agent import ENV_VAR, Config, ConfigError, load_config

if TYPE_CHECKING:
    pass

log = logging.getLogger("gridtao")


def configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "nvml", "sim"), help="override gpus.backend")
    p.add_argument("--dry-run", action="store_true",
                   help="read GPUs and log every limit write without making it")
    p.add_argument("--busy-load", type=float, default=0.0, metavar="FRACTION",
                   help="for benchmarks only: keep the controller loop this busy (0-0.95) with "
                        "pure-Python work, the worst case for the GIL the trigger path needs")


def run_agent_command(args: argparse.Namespace, config: Config) -> int:
    from gridtao.app.agent import AgentOptions
    from gridtao.app.run import run_agent
    from gridtao.config.rules import frequency_unsignable
    from gridtao.transport.mqtt import new_event_loop

    if not 0.0 <= args.busy_load <= 0.95:
        raise ConfigError("--busy-load: must be between 0 and 0.95")

    def with_flags(config: Config) -> Config:
        gpus = config.gpus
        if args.backend is not None:
            gpus = dataclasses.replace(gpus, backend=args.backend)
        if args.dry_run:
            gpus = dataclasses.replace(gpus, dry_run=True)
        return dataclasses.replace(config, gpus=gpus)

    # What the agent writes (audit trail, journal, history, replay store) describes the
    # site's events and its GPUs: this user's alone, as the systemd unit's UMask=0077 makes
    # it, wherever the agent runs (a container has no unit).
    os.umask(0o077)
    unsignable = frequency_unsignable(config)
    if unsignable is not None:
        log.warning("%s: %s", config.source, unsignable)
    path = args.config or os.environ.get(ENV_VAR) or None
    loop = new_event_loop()
    try:
        return loop.run_until_complete(run_agent(
            with_flags(config), options=AgentOptions(busy_load_fraction=args.busy_load,
                                                    freeze_startup_heap=True),
            reload_config=None if path is None else lambda: with_flags(load_config(path)),
        ))
    finally:
        loop.close()


def configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="folder for the plot (default demo-out)")


def run_demo_command(args: argparse.Namespace, config: Config) -> int:
    from gridtao.app.demo import run_demo

    return run_demo(config, out_dir=Path(args.out))
