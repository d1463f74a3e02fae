"""The ``gridtao`` command.

Subcommands live in :data:`COMMANDS`: each is a :class:`Command` with a ``configure`` function
(adds its arguments) and a ``run`` function ``(args, config) -> exit status``. Add one by adding an
entry. Configuration and GPU errors become one line on stderr, ``gridtao: error: <message>``, and
exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gridtao import __version__
from gridtao.config.agent import ENV_VAR, Config, load_config
from gridtao.errors import GridtaoError, one_line

EXIT_OK = 0
EXIT_ERROR = 2

LOG_LEVELS = ("debug", "info", "warning", "error")
#: Commands whose own output is the point: the agent's log says only problems unless asked.
QUIET_BY_DEFAULT = {"bench": "warning", "demo": "warning"}
#: Commands whose --config names a file of their own (not the agent's configuration).
OWN_CONFIG = {"openadr"}


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Config], int]


def _gpus() -> Any:
    from gridtao.cli import gpus

    return gpus


def _audit_cli() -> Any:
    from gridtao.cli import audit as cli_audit

    return cli_audit


def _history_cli() -> Any:
    from gridtao.cli import history as cli_history

    return cli_history


def _plan_cli() -> Any:
    from gridtao.cli import plan as cli_plan

    return cli_plan


def _sim_cli() -> Any:
    from gridtao.cli import sim as cli_sim

    return cli_sim


def _site_cli() -> Any:
    from gridtao.cli import site as cli_site

    return cli_site


def _openadr_cli() -> Any:
    from gridtao.cli import openadr as cli_openadr

    return cli_openadr


def _report_cli() -> Any:
    from gridtao.cli import report as cli_report

    return cli_report


def _check_config_cli() -> Any:
    from gridtao.cli import checkconfig as cli_check_config

    return cli_check_config


def _broker_cli() -> Any:
    from gridtao.cli import broker as cli_broker

    return cli_broker


def _security_commands() -> dict[str, Command]:
    from gridtao.cli import security as c

    return {
        "sign": Command("sign a dispatch, frequency sample or meter reading (sender side)",
                        c.configure_sign, c.run_sign),
        "keygen": Command("generate an Ed25519 key pair or an HMAC secret",
                          c.configure_keygen, c.run_keygen),
    }


def _agent_commands() -> dict[str, Command]:
    from gridtao.cli import agent as c
    from gridtao.cli import bench as b

    return {
        "run": Command("run the agent until SIGINT/SIGTERM (restores limits on exit); "
                       "SIGHUP reloads keys and broker credentials",
                       c.configure_run, c.run_agent_command),
        "demo": Command("self-contained demo: broker, agent on simulated GPUs, a dip and a shed",
                        c.configure_demo, c.run_demo_command),
        "bench": Command("benchmarks: latency, pue, compliance, fanout, overhead, planner, "
                         "flood, fleet, work",
                         b.configure, b.run),
        "prequalify": Command("run a grid product's TSO test sequence; write a report folder",
                              _prequalify().configure, lambda a, cfg: _prequalify().run(a, cfg)),
    }


def _prequalify() -> Any:
    from gridtao.prequal import command as prequalify

    return prequalify


COMMANDS: dict[str, Command] = {
    "gpus": Command("list GPUs with power, limits and energy",
                    lambda p: _gpus().configure(p), lambda a, c: _gpus().run(a, c)),
    **_agent_commands(),
    **_security_commands(),
    "audit": Command("check the audit trail's hash chain (audit verify FILE...)",
                     lambda p: _audit_cli().configure_audit(p),
                     lambda a, c: _audit_cli().run_audit(a, c)),
    "history": Command("the node's minute history for the hourly planner (import, generate, "
                       "show)",
                       lambda p: _history_cli().configure_history(p),
                       lambda a, c: _history_cli().run_history(a, c)),
    "plan": Command("what tier 3 would offer per product and hour now, from the history "
                    "and the signals (nothing is published)",
                    lambda p: _plan_cli().configure_plan(p),
                    lambda a, c: _plan_cli().run_plan(a, c)),
    "sim": Command("the machine-wide simulated GPUs: create, status (limits and who set "
                   "them), destroy (like a driver reload)",
                   lambda p: _sim_cli().configure_sim(p),
                   lambda a, c: _sim_cli().run_sim(a, c)),
    "site": Command("run the site coordinator: the nodes' view, site acks, site caps split "
                    "into signed node dispatches, the meter's feedback (docs/site.md)",
                    lambda p: _site_cli().configure_site(p),
                    lambda a, c: _site_cli().run_site_command(a, c)),
    "openadr": Command("the facility's OpenADR VEN (2.0b, or a 3.0.1 poller): VTN events to "
                       "signed dr dispatches, usage reports back (docs/openadr.md)",
                       lambda p: _openadr_cli().configure_openadr(p),
                       lambda a, c: _openadr_cli().run_openadr_command(a, c)),
    "report": Command("reports from the node's own records: energy by node, hour, day and "
                      "event over a window (report energy; docs/energy.md)",
                      lambda p: _report_cli().configure_report(p),
                      lambda a, c: _report_cli().run_report(a, c)),
    "check-config": Command("check the configuration and every file it names (keys, TLS, "
                            "records, trace, signals) without opening a GPU or the broker; "
                            "exit 0 with a summary, 2 with the problem",
                            lambda p: _check_config_cli().configure_check_config(p),
                            lambda a, c: _check_config_cli().run_check_config(a, c)),
    "check-broker": Command("connect to the broker once with the configured TLS and "
                            "credentials; exit 0 if accepted, 2 with the reason if not",
                            lambda p: _broker_cli().configure_check_broker(p),
                            lambda a, c: _broker_cli().run_check_broker(a, c)),
}


# -- entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridtao", description="Grid-responsive GPU power-capping agent."
    )
    parser.add_argument("--version", action="version", version=f"gridtao {__version__}")
    _add_common(parser, default_config=None, default_level=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
    # Also after the command, at every level (`gridtao bench latency --config F`); given
    # there, it wins over the same option before the command.
    for child in _subparsers(parser):
        _add_common(child, default_config=argparse.SUPPRESS, default_level=argparse.SUPPRESS)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:  # argparse offers no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += [child, *_subparsers(child)]
    return found


def _add_common(p: argparse.ArgumentParser, *, default_config: str | None,
                default_level: str | None) -> None:
    p.add_argument("--config", metavar="FILE", default=default_config,
                   help=f"YAML configuration (default: ${ENV_VAR}, else built-in defaults)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=default_level,
                   help="info (the default; warning for bench and demo, whose own output is the "
                        "point): start-up, every event, every rejection and the stop; warning: "
                        "problems only; debug: everything")


def main(argv: list[str] | None = None) -> int:
    """Run the ``gridtao`` command line; returns the exit status."""
    parser = build_parser()
    try:
        # Unknown options are an error, except after a harness that parses its own.
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "passthrough", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.passthrough_args = extra
    except SystemExit as e:  # argparse: --help, --version or a usage error (already printed)
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    level = args.log_level or QUIET_BY_DEFAULT.get(args.command, "info")
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = Config() if args.command in OWN_CONFIG else load_config(args.config)
        return COMMANDS[args.command].run(args, config)
    except GridtaoError as e:  # bad config, GPU, journal, audit, broker: one line, never a trace
        print(f"gridtao: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gridtao gpus --json | head`: the reader left, nothing is wrong
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
