"""``gridtao bench``: the harnesses under the repository's ``bench/`` folder and the compliance
bench. The harnesses are imported only when a bench runs, so nothing else of gridtao (the agent
above all) ever loads them.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from gridtao.config.agent import Config, ConfigError
from gridtao.telemetry import plotting
from gridtao.telemetry.runinfo import provenance

#: Harnesses with their own command line, reached as ``gridtao bench NAME [their options]``.
PASSTHROUGH = {
    "fanout": "the island's parallel write fan-out against sequential writes, in-process",
    "overhead": "CPU and memory of an idle agent against a bare power-reading loop",
    "flood": "genuine triggers and acks under a flood of junk dispatches and frequency "
             "samples, against an idle baseline",
    "planner": "tier 3's day-ahead plan against static, reference and oracle strategies, "
               "over a simulated week",
    "fleet": "N simulated nodes over one broker and the site coordinator: publish -> every "
             "node commanded, 10 Hz frequency fan-out, site acks, against the broker's own "
             "fan-out",
    "work": "work lost to sheds on a mixed node: proportional against work-aware splits, in "
            "virtual time",
    "stages": "where receive -> command goes inside one agent, stage by stage",
}

PUE_SCENARIOS = ("short", "dr")  # gridtao.bench.pue.SCENARIOS, checked there


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    lat = sub.add_parser("latency", help="trigger-to-target latency against two baselines")
    lat.add_argument("--triggers", type=int, default=50,
                     help="dispatches to time (default 50)")
    lat.add_argument("--gpus", type=int, default=8,
                     help="simulated GPUs (default 8; with --backend nvml: every GPU present)")
    lat.add_argument("--backend", choices=("sim", "nvml"), default="sim",
                     help="sim (default): simulated GPUs; nvml: this machine's GPUs (needs "
                          "--allow-actuation)")
    lat.add_argument("--allow-actuation", action="store_true",
                     help="with --backend nvml: allow writing power limits to the real GPUs "
                          "(each is put back to its limit from before the bench)")
    lat.add_argument("--baseline-triggers", type=int, default=None,
                     help="triggers per baseline (default min(triggers, 10))")
    lat.add_argument("--json", metavar="FILE", help="write the results as JSON")
    lat.add_argument("--plot", metavar="FILE", help="write CDF plots as PNG")
    lat.add_argument("--markdown", metavar="FILE",
                     help="write a BENCHMARKS.md section (Markdown) to FILE")
    lat.add_argument("--with-planner", action="store_true",
                     help="run tier 3 in the agent meanwhile (a planning round every 10 s on "
                          "two weeks of synthetic history)")
    lat.add_argument("--island-alone", action="store_true",
                     help="emulate the island in a process of its own: tier 1 at 1 Hz, and the "
                          "load phase's busy loop in a separate process (to weigh a split)")
    lat.add_argument("--auth", choices=("ed25519", "hmac"), default=None,
                     help="sign every dispatch (keys made in the bench's temporary folder) and "
                          "measure the verify cost")
    _configure_pue(sub.add_parser("pue", help="PUE-aware tier 2 vs a naive annual-PUE tracker"))
    from gridtao.prequal import options as compliance_cli

    compliance_cli.configure(sub.add_parser(
        "compliance", help="a product's TSO test over a real broker, scored rule by rule"))
    for name, what in PASSTHROUGH.items():
        # Its own options follow the name; gridtao.cli.main hands them over unparsed.
        sub.add_parser(name, help=what, add_help=False).set_defaults(passthrough=True)


LATENCY_REFUSAL = (
    "gridtao: error: bench latency --backend nvml would write power limits to this machine's "
    "GPUs (every trigger cuts them by 30 %; each is put back afterwards). Pass "
    "--allow-actuation to run it.")


def run(args: argparse.Namespace, config: Config) -> int:
    if getattr(args, "plot", None) and not plotting.available():
        raise plotting.PlottingUnavailable(f"--plot: {plotting.INSTALL_HINT}")  # before a run
    from gridtao.bench.render import check_outputs

    check_outputs(args)  # before a run, not after it
    if args.bench in PASSTHROUGH:
        harness = importlib.import_module(f"gridtao.bench.{args.bench}")
        try:
            status: int = harness.main(args.passthrough_args)
        except SystemExit as e:  # its own usage error (argparse): the status, as the others
            return e.code if isinstance(e.code, int) else 2
        return status
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
    if args.baseline_triggers is not None and not 1 <= args.baseline_triggers <= 1000:
        # Every figure is a ratio against the baselines: none measured, no ratio to report.
        raise ConfigError("--baseline-triggers must be in 1..1000")
    if args.backend == "nvml" and not args.allow_actuation:
        print(LATENCY_REFUSAL, file=sys.stderr)
        return 2
    result = run_latency_bench(config, triggers=args.triggers, gpus=args.gpus,
                               baseline_triggers=args.baseline_triggers,
                               progress=lambda line: print(line, file=sys.stderr),
                               auth=args.auth, backend=args.backend,
                               planner=args.with_planner, island_alone=args.island_alone)
    command = "gridtao " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result |= provenance(command)
    write_outputs(args, result, markdown(result, command), plot)
    return 0


def _configure_pue(p: argparse.ArgumentParser) -> None:
    """Arguments of ``gridtao bench pue`` (``p``: an argparse parser)."""
    p.add_argument("--scenario", choices=(*PUE_SCENARIOS, "both"), default="both",
                   help="short: a 30 s cut (FFR/FCR-D-like); dr: a 30 min event (default both)")
    p.add_argument("--it-w", type=float, default=4800.0, help="node IT power before the event")
    p.add_argument("--reduction-w", type=float, default=1000.0,
                   help="committed meter-level reduction, W")
    p.add_argument("--ramp-s", type=float, default=0.0, help="ramp into the event, s")
    p.add_argument("--annual-pue", type=float, default=None,
                   help="the naive tracker's divisor (default: the model's steady-state PUE)")
    p.add_argument("--plant-tau-s", type=float, default=None,
                   help="true cooling lag of the simulated site (default: the model's)")
    p.add_argument("--plant-cop", type=float, default=None,
                   help="true COP of the simulated site (default: the model's)")
    p.add_argument("--json", metavar="FILE", help="write the results (with series) as JSON")
    p.add_argument("--plot", metavar="FILE", help="write required/delivered/IT plots as PNG")
    p.add_argument("--markdown", metavar="FILE", help="write the Markdown section to FILE")
