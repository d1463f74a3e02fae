"""``gridtao bench compliance``: one product's test(s) over a real broker, scored.

Prints every rule with its measured value and limit; writes ``--json`` (``product``,
``passed``, ``rules``: ``{name, value, limit, passed, unit, op, detail}``, ``tests``),
``--csv`` and ``--plot`` (with several tests, one file per test: ``NAME-<test>.csv``).
Exit status 0 when every rule passed, 1 when one failed (2: usage or configuration error).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from gridtao.config.agent import Config, ConfigError, ProductConfig, ProductKind
from gridtao.config.kinds import FORMER_TEST_NAMES, KINDS
from gridtao.config.outputs import output_path, writing

if TYPE_CHECKING:  # the runner pulls in the whole agent: imported when a bench runs
    from gridtao.prequal import compliance as c
    from gridtao.prequal import report as rep
    from gridtao.prequal.plans import SineOptions

# Test name -> product kind, and each test's default time compression (the kinds catalog).
PRODUCTS: dict[str, ProductKind] = {
    k.test_name: cast(ProductKind, k.name) for k in KINDS.values()}
DEFAULT_TIME_SCALE = {k.test_name: k.test_time_scale for k in KINDS.values()}
DEFAULT_CAPACITY_W = 1000.0
STEADY_FRACTION = 0.88  # --workload steady: every simulated GPU at 88 % of its default limit


def _product_name(value: str) -> str:
    former = FORMER_TEST_NAMES.get(value)
    if former is not None:
        raise argparse.ArgumentTypeError(f"{value!r} is now {former!r}, its name in the "
                                         "configuration's products")
    return value


def _periods(value: str) -> tuple[float, ...]:
    try:
        periods = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: periods in s, comma-separated") from None
    if not periods or any(not 2.0 <= v <= 3600.0 for v in periods):
        raise argparse.ArgumentTypeError(f"{value!r}: every period must be in [2, 3600] s")
    return periods


def _cycles(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 100:
        raise argparse.ArgumentTypeError(f"{value!r}: a whole number of periods in [1, 100]")
    return n


def add_common(p: argparse.ArgumentParser, *, product_required: bool = True,
               workload: bool = True) -> None:
    """Options shared with ``gridtao prequalify`` (and ``prequalify score``, which runs no
    GPUs: ``workload=False``)."""
    p.add_argument("--product", required=product_required, choices=tuple(PRODUCTS),
                   type=_product_name, default=None,
                   help="the product to test (its entry in the configuration's products, else "
                        "its defaults with --capacity-w)" + (
                            "" if product_required else
                            "; required (shown in brackets only because `prequalify score` "
                            "takes it after its own name)"))
    p.add_argument("--time-scale", type=float, default=None, metavar="X",
                   help="shorten long holds by X (the frequency tests' ramp rates and sine "
                        "periods never change; DR's ramps are shortened with its holds, and "
                        "said; normal frequency runs at least 300 s; default: 0.1, ercot-ffr "
                        "0.02, dr 0.05; 1 = the full TSO lengths)")
    p.add_argument("--sine-periods", type=_periods, default=None, metavar="S,S,...",
                   help="fcr-n and fcr-d-up sine tests: only these periods, s (default: "
                        "the full sequence, fcr-n 10, 15, 25, 40, 50, 60, 70, 90, 150, 300 s, "
                        "about 58 min; fcr-d-up 10-70 s, about 27 min)")
    p.add_argument("--sine-cycles", type=_cycles, default=None, metavar="N",
                   help="fcr-n and fcr-d-up sine tests: measure N periods of each (default: "
                        "5 up to 90 s, 3 at 150 s, 2 at 300 s)")
    p.add_argument("--capacity-w", type=float, default=None, metavar="W",
                   help=f"reserve capacity at the settlement point (default: the configured "
                        f"product's, else {DEFAULT_CAPACITY_W:g})")
    p.add_argument("--threshold-hz", type=float, default=None, metavar="HZ",
                   help="ffr, ercot-ffr, fcr-d-up-static: the activation threshold (ffr: 49.7, "
                        "49.6 or 49.5 Hz, limits 1.3 / 1.0 / 0.7 s)")
    if not workload:
        return
    p.add_argument("--workload", choices=("steady", "config"), default="steady",
                   help="simulated GPUs: a steady test load at "
                        f"{STEADY_FRACTION:.0%}% of each GPU's default limit (default: tests are "
                        "run at a steady operating point), or gpus.sim.workload ('config')")


def configure(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--test", default=None, metavar="NAME",
                   help="which of the product's tests to run, or 'all' (default: the first; "
                        "see --list)")
    p.add_argument("--list", action="store_true", help="list the product's tests and exit")
    p.add_argument("--json", metavar="FILE", help="write the scored rules as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the 20 Hz log as CSV (README)")
    p.add_argument("--plot", metavar="FILE", help="write a TSO-style test plot (PNG)")


def check_common(args: argparse.Namespace) -> float:
    """Validate shared options; returns the time scale."""
    scale = args.time_scale if args.time_scale is not None else DEFAULT_TIME_SCALE[args.product]
    if not 0.001 <= scale <= 1.0:
        raise ConfigError("--time-scale: must be in [0.001, 1]")
    if args.capacity_w is not None and not 1.0 <= args.capacity_w <= 10_000_000:
        raise ConfigError("--capacity-w: must be in [1, 10000000] W")
    if args.threshold_hz is not None:
        kind = KINDS[PRODUCTS[args.product]]
        if not kind.has_threshold or not 45.0 <= args.threshold_hz <= 65.0:
            with_threshold = ", ".join(k.test_name for k in KINDS.values() if k.has_threshold)
            raise ConfigError(f"--threshold-hz: only for {with_threshold}, in [45, 65] Hz")
        problem = kind.threshold_problem(args.threshold_hz)
        if problem is not None:
            raise ConfigError(f"--threshold-hz: {problem}")
    return float(scale)


def sine_options(args: argparse.Namespace) -> SineOptions:
    """How ``--sine-periods`` / ``--sine-cycles`` shorten the FCR-N and FCR-D sine tests."""
    from gridtao.prequal.plans import SineOptions

    return SineOptions(getattr(args, "sine_periods", None), getattr(args, "sine_cycles", None))


def select(plans: Sequence[c.TestPlan], name: str | None, *, one: bool = False
           ) -> list[c.TestPlan]:
    """The named test, all of them, or (None) the first; ``one``: a single test is asked for
    (``all`` is not offered)."""
    if name is None:
        return [plans[0]]
    if name == "all":
        return list(plans)
    chosen = [p for p in plans if p.name == name]
    if not chosen:
        # A step test is named after its threshold: another threshold is another option.
        hint = ("; a step test at another threshold needs --threshold-hz"
                if name.startswith("step-") else "")
        raise ConfigError(f"--test: no test {name!r} (choose from "
                          f"{', '.join(p.name for p in plans)}{'' if one else ', all'}{hint})")
    return chosen


def on_named_backend(config: Config) -> Config:
    """The compliance engine runs on simulated GPUs unless the real ones are asked for by name
    (``--backend nvml``, or ``gpus.backend: nvml``, both with ``--allow-actuation``): the
    default ``auto`` never turns a test run into real power caps."""
    if config.gpus.backend != "auto":
        return config
    return dataclasses.replace(config, gpus=dataclasses.replace(config.gpus, backend="sim"))


def steady(args: argparse.Namespace, config: Config) -> float | None:
    """The steady load's fraction, or None: the configured workload (real GPUs: their own)."""
    if args.workload != "steady" or config.gpus.backend != "sim":
        return None
    return STEADY_FRACTION


def run_and_score(
    config: Config, args: argparse.Namespace, pcfg: ProductConfig, plans: Sequence[c.TestPlan],
    *, progress: Callable[[str], None],
) -> list[rep.TestResult]:
    from gridtao.prequal import compliance as c
    from gridtao.prequal import report as rep

    _, runs = c.run_product(config, args.product, tests=plans, capacity_w=pcfg.capacity_w,
                            time_scale=check_common(args), threshold_hz=pcfg.threshold_hz,
                            progress=progress, steady_fraction=steady(args, config))
    spec = c.spec_of(pcfg)
    return [dataclasses.replace(rep.score_test(spec, plan, c.measure(rec, plan, config, pcfg),
                                               config), gpu_errors=rec.gpu_errors)
            for plan, rec in runs]


def _per_test(path: Path, test: str, many: bool) -> Path:
    return path.with_name(f"{path.stem}-{test}{path.suffix}") if many else path


def main(args: argparse.Namespace, config: Config, command: str) -> int:
    from gridtao import __version__
    from gridtao.prequal import compliance as c
    from gridtao.prequal import report as rep
    from gridtao.telemetry.runinfo import machine_description, provenance

    config = on_named_backend(config)
    scale = check_common(args)
    pcfg = c.product_config(config, args.product, capacity_w=args.capacity_w, time_scale=scale,
                            threshold_hz=args.threshold_hz)
    plans = c.test_plans(args.product, c.spec_of(pcfg), scale, sine_options(args),
                         rearm_s=c.rearm_times(config, pcfg))
    if args.list:
        for p in plans:
            print(f"{p.name}: {p.shape.title} ({p.duration_s:.0f} s)"
                  + "".join(f"\n  shortened: {s}" for s in p.shape.shortened))
        return 0
    chosen = select(plans, args.test)
    # A long run is not lost to an output that cannot be written: checked before it starts.
    many = len(chosen) > 1
    csv_paths = {p.name: output_path(str(_per_test(Path(args.csv), p.name, many)), "--csv")
                 for p in chosen} if args.csv else {}
    plot_paths = {p.name: output_path(str(_per_test(Path(args.plot), p.name, many)), "--plot")
                  for p in chosen} if args.plot else {}
    json_path = None if not args.json else output_path(args.json, "--json")
    results = run_and_score(config, args, pcfg, chosen,
                            progress=lambda line: print(line, file=sys.stderr))
    print(rep.text_report(args.product, results))
    for res in results:
        if res.name in csv_paths:
            with writing(csv_paths[res.name], "--csv"):
                rep.write_csv(res, csv_paths[res.name])
        if res.name in plot_paths:
            plot_path = plot_paths[res.name]
            with writing(plot_path, "--plot"):
                rep.plot(res, plot_path, product=args.product, capacity_w=pcfg.capacity_w,
                         simulated=config.gpus.backend == "sim", time_scale=scale)
    if json_path is not None:
        import datetime

        date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        body = rep.summary_json(args.product, results, command=command, version=__version__,
                                machine=machine_description(), date=date, time_scale=scale,
                                workload=args.workload,
                                product_config=c.product_fields(config, pcfg),
                                simulated=config.gpus.backend == "sim")
        body = provenance(command) | body  # the run's own date, machine and command win
        with writing(json_path, "--json"):
            json_path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r.passed for r in results) else 1

