"""The ``gridtao`` command.

Subcommands live in :data:`COMMANDS`: each is a :class:`Command` with a ``configure`` function
(adds its arguments) and a ``run`` function ``(args, config) -> exit status``. Add one by adding an
entry. Configuration and GPU errors become one line on stderr, ``gridtao: error: <message>``, and
exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gridtao import __version__
from gridtao.config.agent import ENV_VAR, Config, ConfigError, load_config
from gridtao.gpu.backend import GpuBackend, GpuError
from gridtao.records.audit import AuditError
from gridtao.records.journal import JournalError

EXIT_OK = 0
EXIT_ERROR = 2

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Config], int]


# -- gpus ------------------------------------------------------------------------------------

GPU_KEYS = (
    "index", "uuid", "name", "power_w", "avg_power_w", "limit_w", "default_w", "min_w", "max_w",
    "energy_j",
)


def _configure_gpus(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("nvml", "sim"), help="override gpus.backend")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument(
        "--dry-run", action="store_true", help="open the backend in dry-run mode (reads only)"
    )


def gpu_rows(backend: GpuBackend) -> list[dict[str, Any]]:
    """One dict per GPU with the keys of :data:`GPU_KEYS`; power in W, energy in J."""
    rows = []
    for info in backend.devices():
        i = info.index
        lim = backend.power_limits(i)
        rows.append({
            "index": i,
            "uuid": info.uuid,
            "name": info.name,
            "power_w": backend.instant_power_mw(i) / 1000,
            "avg_power_w": backend.average_power_mw(i) / 1000,
            "limit_w": backend.enforced_limit_mw(i) / 1000,
            "default_w": lim.default_mw / 1000,
            "min_w": lim.min_mw / 1000,
            "max_w": lim.max_mw / 1000,
            "energy_j": backend.energy_mj(i) / 1000,
        })
    return rows


def format_gpu_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ("GPU", "name", "uuid", "power W", "1s avg W", "limit W", "default W", "min W",
              "max W", "energy J")
    lines = [
        (
            str(r["index"]), r["name"], r["uuid"][:12], f"{r['power_w']:.1f}",
            f"{r['avg_power_w']:.1f}", f"{r['limit_w']:.1f}", f"{r['default_w']:.1f}",
            f"{r['min_w']:.1f}", f"{r['max_w']:.1f}", f"{r['energy_j']:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *lines, strict=True)]
    left = {1, 2}
    out = []
    for cells in (header, *lines):
        padded = (
            c.ljust(w) if k in left else c.rjust(w)
            for k, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        out.append("  ".join(padded).rstrip())
    return "\n".join(out)


def _run_gpus(args: argparse.Namespace, config: Config) -> int:
    from gridtao.gpu import open_backend

    gpus_cfg = config.gpus
    if args.backend is not None:
        gpus_cfg = dataclasses.replace(gpus_cfg, backend=args.backend)
    if args.dry_run:
        gpus_cfg = dataclasses.replace(gpus_cfg, dry_run=True)
    with open_backend(gpus_cfg) as backend:
        rows = gpu_rows(backend)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_gpu_table(rows))
    return EXIT_OK


def _audit_cli() -> Any:
    from gridtao.cli import audit as cli_audit

    return cli_audit


def _broker_cli() -> Any:
    from gridtao.cli import broker as cli_broker

    return cli_broker


def _security_commands() -> dict[str, Command]:
    from gridtao.cli import security as c

    return {
        "sign": Command("sign a dispatch or frequency payload (aggregator side)",
                        c.configure_sign, c.run_sign),
        "keygen": Command("generate an Ed25519 key pair or an HMAC secret",
                          c.configure_keygen, c.run_keygen),
    }


def _agent_commands() -> dict[str, Command]:
    from gridtao.app import commands as c

    return {
        "run": Command("run the agent until SIGINT/SIGTERM (restores limits on exit); "
                       "SIGHUP reloads keys and broker credentials",
                       c.configure_run, c.run_agent_command),
        "demo": Command("self-contained demo: broker, agent on simulated GPUs, a dip and a shed",
                        c.configure_demo, c.run_demo_command),
        "bench": Command("benchmarks (latency)", c.configure_bench, c.run_bench_command),
        "prequalify": Command("run a grid product's TSO test sequence; write a report folder",
                              _prequalify().configure, lambda a, cfg: _prequalify().run(a, cfg)),
    }


def _prequalify() -> Any:
    from gridtao.prequal import command as prequalify

    return prequalify


COMMANDS: dict[str, Command] = {
    "gpus": Command("list GPUs with power, limits and energy", _configure_gpus, _run_gpus),
    **_agent_commands(),
    **_security_commands(),
    "audit": Command("check the audit trail's hash chain (audit verify FILE...)",
                     lambda p: _audit_cli().configure_audit(p),
                     lambda a, c: _audit_cli().run_audit(a, c)),
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
    parser.add_argument(
        "--config", metavar="FILE",
        help=f"YAML configuration (default: ${ENV_VAR}, else built-in defaults)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="warning")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``gridtao`` command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help, --version or a usage error (already printed)
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config)
        return COMMANDS[args.command].run(args, config)
    except (ConfigError, GpuError, JournalError, AuditError) as e:
        print(f"gridtao: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
