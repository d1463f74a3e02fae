"""The agent-facing subcommands of ``gridtao``: ``run``, ``demo`` and ``bench``.

Each is a ``configure(parser)`` / ``run(args, config) -> exit status`` pair registered in
:data:`gridtao.cli.main.COMMANDS`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gridtao.config.agent import ENV_VAR, Config, ConfigError, load_config

if TYPE_CHECKING:
    from gridtao.app.agent import AgentOptions

log = logging.getLogger("gridtao")


def configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("nvml", "sim"), help="override gpus.backend")
    p.add_argument("--dry-run", action="store_true",
                   help="read GPUs and log every limit write without making it")
    p.add_argument("--busy-load", type=float, default=0.0, metavar="FRACTION",
                   help=argparse.SUPPRESS)  # bench only: keep the controller loop this busy


def run_agent_command(args: argparse.Namespace, config: Config) -> int:
    from gridtao.app.agent import AgentOptions
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

    path = args.config or os.environ.get(ENV_VAR) or None
    loop = new_event_loop()
    try:
        return loop.run_until_complete(run_agent(
            with_flags(config), options=AgentOptions(busy_load_fraction=args.busy_load),
            reload_config=None if path is None else lambda: with_flags(load_config(path)),
        ))
    finally:
        loop.close()


async def run_agent(config: Config, *, options: AgentOptions | None = None,
                    stop: asyncio.Event | None = None,
                    reload_config: Callable[[], Config] | None = None) -> int:
    """Start an agent, serve until SIGINT/SIGTERM (or ``stop``), then restore and exit 0.
    On SIGHUP, apply ``reload_config()`` (the file read again: gridtao/reload.py)."""
    from gridtao.app.agent import Agent

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    agent: Agent | None = None  # SIGHUP before it exists: logged, not fatal

    def reload() -> None:
        if agent is None or reload_config is None:
            log.warning("SIGHUP: nothing to reload (%s)", "still starting" if agent is None
                        else "no configuration file: running on built-in defaults")
            return
        try:
            agent.reload(reload_config)
        except ConfigError as e:
            log.error("reload refused, nothing changed: %s", e)

    for sig, handler in ((signal.SIGINT, stop.set), (signal.SIGTERM, stop.set),
                         (signal.SIGHUP, reload)):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
    agent = Agent(config, options=options)
    try:
        agent.start()
        await agent.serve(stop)
    finally:
        agent.close()
    return 0


def configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="folder for the plot (default demo-out)")


def run_demo_command(args: argparse.Namespace, config: Config) -> int:
    from gridtao.app.demo import run_demo

    return run_demo(config, out_dir=Path(args.out))


def configure_bench(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    lat = sub.add_parser("latency", help="trigger-to-target latency against two baselines")
    lat.add_argument("--triggers", type=int, default=50)
    lat.add_argument("--gpus", type=int, default=8)
    lat.add_argument("--baseline-triggers", type=int, default=None,
                     help="triggers per baseline (default min(triggers, 10))")
    lat.add_argument("--json", metavar="FILE", help="write the results as JSON")
    lat.add_argument("--plot", metavar="FILE", help="write CDF plots as PNG")
    lat.add_argument("--markdown", metavar="FILE",
                     help="write a BENCHMARKS.md section (Markdown) to FILE")
    lat.add_argument("--auth", choices=("ed25519", "hmac"), default=None,
                     help="sign every dispatch (keys made in the bench's temporary folder) and "
                          "measure the verify cost")
    from gridtao.bench import pue

    pue.configure(sub.add_parser("pue", help="PUE-aware tier 2 vs a naive annual-PUE tracker"))
    from gridtao.prequal import options as compliance_cli

    compliance_cli.configure(sub.add_parser(
        "compliance", help="a product's TSO test over a real broker, scored rule by rule"))


def run_bench_command(args: argparse.Namespace, config: Config) -> int:
    from gridtao.bench.latency import run_latency_bench
    from gridtao.bench.render import markdown, plot, write_outputs

    if args.bench == "compliance":
        from gridtao.prequal import options as compliance_cli

        command = "gridtao " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        return compliance_cli.main(args, config, command)
    if args.bench == "pue":
        from gridtao.bench import pue

        command = "gridtao " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        try:
            return pue.main(args, config.facility, command)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if not 1 <= args.triggers <= 10_000 or not 1 <= args.gpus <= 64:
        raise ConfigError("--triggers must be in 1..10000 and --gpus in 1..64")
    result = run_latency_bench(config, triggers=args.triggers, gpus=args.gpus,
                               baseline_triggers=args.baseline_triggers,
                               progress=lambda line: print(line, file=sys.stderr),
                               auth=args.auth)
    command = "gridtao " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_outputs(args, result, markdown(result, command), plot)
    return 0
