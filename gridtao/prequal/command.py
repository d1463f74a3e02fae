"""``gridtao prequalify``: a product's full TSO test sequence, written up for an application.

Runs every test of the product (compliance.py: a real broker, a fresh agent per test)
and writes a report folder: ``<test>.csv`` (the 20 Hz log, columns in the README's
"Compliance bench" section) and ``<test>.png`` per test (figures.py; a sine test also
``<test>-bode.png``), ``results.json`` (product, passed, rules, what was shortened) and
``summary.md`` (writeup.py): the verdict (SIMULATED when the GPUs were), site, resource, meter
and node, product parameters, the measurement setup, the time scale and what it shortened,
each test's figure and rules with measured values and limits, what was not tested, machine,
date and software version. ``gridtao prequalify score`` (csvscore.py) scores a recorded CSV
with the same rules.

Real GPUs are only capped with ``--allow-actuation``: with ``--backend nvml`` and without it,
the command refuses (exit 2) before opening a GPU. ``--dry-run`` prints the sequence, its
durations and the limits the first full activation would command, from the GPUs' present draw
(read-only), and actuates nothing. Exit status: 0 all rules passed, 1 a rule failed, 2 refused
or a configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gridtao import __version__
from gridtao.config.agent import Config, ConfigError, ProductConfig
from gridtao.telemetry import plotting
from gridtao.telemetry.runinfo import machine_description, provenance

if TYPE_CHECKING:
    from gridtao.prequal.compliance import TestPlan
    from gridtao.prequal.report import TestResult
    from gridtao.prequal.rules import ProductSpec

EXIT_REFUSED = 2
REFUSAL = (
    "gridtao: error: prequalify --backend nvml would write power limits to this machine's GPUs "
    "(the tests cut them to commanded caps and restore them after each test). Pass "
    "--allow-actuation to run it, or --dry-run to see what it would do."
)


def configure(p: argparse.ArgumentParser) -> None:
    from gridtao.prequal import csvscore
    from gridtao.prequal.options import add_common

    add_common(p, product_required=False)  # required unless a subcommand is given
    sub = p.add_subparsers(dest="prequal_command", metavar="score")
    csvscore.configure(sub.add_parser(
        "score", help="score a recorded CSV (the bench's columns) with the same rules",
        description="Score a recorded CSV (the bench's columns) with the bench's rules: "
                    "prints the rule table; exit 0 pass, 1 fail, 2 bad input."))
    p.add_argument("--out", metavar="DIR", default=None,
                   help="report folder (default prequalify-<product>-<UTC time>)")
    p.add_argument("--backend", choices=("sim", "nvml"), default=None,
                   help="override gpus.backend")
    p.add_argument("--allow-actuation", action="store_true",
                   help="with --backend nvml: allow writing power limits to the real GPUs")
    p.add_argument("--dry-run", action="store_true",
                   help="print the sequence, durations and limits it would command; write none")
    p.add_argument("--site", default=None, help="site name for the summary")
    p.add_argument("--resource", default=None,
                   help="the resource's identity for the summary (unit, TSO resource id)")
    p.add_argument("--meter", default=None,
                   help="the settlement meter's identity for the summary (default: none, "
                        "modelled from NVML power)")


def run(args: argparse.Namespace, config: Config) -> int:
    if getattr(args, "prequal_command", None) == "score":
        from gridtao.prequal import csvscore

        return csvscore.run(args, config, "gridtao " + " ".join(shlex.quote(a)
                                                               for a in sys.argv[1:]))
    if args.product is None:
        raise ConfigError("prequalify: --product is required (or: prequalify score --product "
                          "P --test T FILE.csv)")
    from gridtao.prequal import compliance as c
    from gridtao.prequal.options import check_common, on_named_backend, sine_options

    if args.backend is not None:
        config = dataclasses.replace(config, gpus=dataclasses.replace(config.gpus,
                                                                      backend=args.backend))
    config = on_named_backend(config)
    scale = check_common(args)
    pcfg = c.product_config(config, args.product, capacity_w=args.capacity_w, time_scale=scale,
                            threshold_hz=args.threshold_hz)
    spec = c.spec_of(pcfg)
    plans = c.test_plans(args.product, spec, scale, sine_options(args),
                         rearm_s=c.rearm_times(config, pcfg))
    if args.dry_run:
        print(dry_run_text(config, args, pcfg, spec, plans))
        return 0
    if config.gpus.backend == "nvml" and not args.allow_actuation:
        print(REFUSAL, file=sys.stderr)
        return EXIT_REFUSED
    stamp = datetime.datetime.now(datetime.UTC)
    out = Path(args.out or f"prequalify-{args.product}-{stamp:%Y%m%dT%H%M%SZ}")
    try:  # before any test runs: a report that cannot be written is worth nothing
        out.mkdir(parents=True, exist_ok=True)
        (out / ".writable").touch()
        (out / ".writable").unlink()
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write the report there: {e.strerror or e}"
                          ) from None
    from gridtao.prequal.options import run_and_score

    results = run_and_score(config, args, pcfg, plans,
                            progress=lambda line: print(line, file=sys.stderr))
    return write_report(out, config, args, pcfg, results, stamp)


def write_report(out: Path, config: Config, args: argparse.Namespace, pcfg: ProductConfig,
                 results: Sequence[TestResult], stamp: datetime.datetime) -> int:
    from gridtao.prequal import report as rep
    from gridtao.prequal.options import check_common, steady
    from gridtao.prequal.plans import product_fields
    from gridtao.prequal.writeup import summary_markdown

    command = "gridtao " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    drawing = plotting.available()
    scale = check_common(args)
    figures: dict[str, list[str]] = {}
    for res in results:
        rep.write_csv(res, out / f"{res.name}.csv")
        if drawing:
            written = rep.plot(res, out / f"{res.name}.png", product=args.product,
                               capacity_w=pcfg.capacity_w,
                               simulated=config.gpus.backend == "sim", time_scale=scale)
            figures[res.name] = [f.name for f in written]
    if not drawing:
        print(f"no PNG plots in {out}: {plotting.INSTALL_HINT}", file=sys.stderr)
    body = rep.summary_json(args.product, results, command=command, version=__version__,
                            machine=machine_description(), date=stamp.isoformat(),
                            product_config=product_fields(config, pcfg), time_scale=scale,
                            simulated=config.gpus.backend == "sim",
                            site=args.site, resource=args.resource, meter=args.meter)
    body = provenance(command) | body  # the report's own date, machine and command win
    (out / "results.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    summary = summary_markdown(config, args, pcfg, results, stamp, command, time_scale=scale,
                               steady_fraction=steady(args, config), figures=figures)
    (out / "summary.md").write_text(summary, encoding="utf-8")
    if drawing:
        from gridtao.prequal.figures import write_pdf

        write_pdf(out / "summary.pdf", summary,
                  [out / f for name in figures for f in figures[name]])
    print(rep.text_report(args.product, results))
    print(f"report: {out}/summary.md")
    return 0 if results and all(r.passed for r in results) else 1


# ---- dry run -------------------------------------------------------------------------------


def _it_cut_w(config: Config, capacity_w: float) -> float:
    """The IT cut that delivers ``capacity_w`` at the settlement point in the first seconds."""
    if config.facility.settle_at == "it":
        return capacity_w
    return capacity_w / (1.0 + config.facility.losses_fraction)


def dry_run_text(config: Config, args: argparse.Namespace, pcfg: ProductConfig,
                 spec: ProductSpec, plans: Sequence[TestPlan]) -> str:
    lines = [f"gridtao prequalify --dry-run: product {args.product} ({pcfg.kind}), "
             f"backend {config.gpus.backend}; nothing will be actuated.",
             "", "Product parameters (the TSO limits each test is scored against):"]
    from gridtao.prequal.writeup import product_rows

    lines += [f"  {k}: {v}" for k, v in product_rows(config, pcfg, spec)]
    lines += ["", "Test sequence (a fresh agent per test, a local Mosquitto broker):"]
    total = 0.0
    for p in plans:
        lines.append(f"  {p.name}: {p.shape.title}: {p.duration_s:.0f} s")
        lines += [f"    shortened: {s}" for s in p.shape.shortened]
        total += p.duration_s + 2.0
    lines.append(f"  about {total / 60:.1f} min in all")
    lines += ["", *limits_text(config, args, pcfg)]
    if config.gpus.backend == "nvml" and not args.allow_actuation:
        lines += ["", "To run it on these GPUs, pass --allow-actuation."]
    return "\n".join(lines)


def limits_text(config: Config, args: argparse.Namespace, pcfg: ProductConfig) -> list[str]:
    """The caps the deepest activation would command, split from the present draw."""
    from gridtao.gpu import open_backend
    from gridtao.gpu.backend import GpuError
    from gridtao.prequal.options import steady
    from gridtao.safety.envelope import Envelope

    gpus = dataclasses.replace(config.gpus, dry_run=True)
    try:
        with open_backend(gpus) as backend:
            devices = backend.devices()
            limits = [backend.power_limits(d.index) for d in devices]
            draw_mw = [float(backend.instant_power_mw(d.index)) for d in devices]
    except GpuError as e:
        return [f"Limits: cannot read the GPUs ({e}); nothing to show."]
    fraction = steady(args, config)
    if fraction is not None:
        draw_mw = [fraction * lim.default_mw for lim in limits]
    cut_w = _it_cut_w(config, pcfg.capacity_w)
    # FCR-N runs at a baseline one capacity below its natural draw and cuts one more at 49.9 Hz.
    deepest_w = 2 * cut_w if pcfg.kind == "fcr-n" else cut_w
    node_w = sum(draw_mw) / 1000.0
    target_w = node_w - deepest_w
    env = Envelope(limits)
    caps = env.cut_caps_mw(draw_mw, target_w * 1000.0)
    lines = [f"Limits at the deepest activation: node IT {node_w:.0f} W now -> target "
             f"{target_w:.0f} W (IT cut {deepest_w:.0f} W for {pcfg.capacity_w:g} W at the "
             f"{config.facility.settle_at}); per-GPU caps:"]
    for d, lim, cap in zip(devices, limits, caps, strict=True):
        lines.append(f"  GPU {d.index} ({d.name}): {cap / 1000:.0f} W "
                     f"(allowed {lim.min_mw / 1000:.0f}-{lim.default_mw / 1000:.0f} W)")
    if target_w * 1000.0 < env.min_total_mw:
        lines.append(f"  WARNING: the target is below the GPUs' summed minimum "
                     f"{env.min_total_mw / 1000:.0f} W: the capacity cannot be delivered")
    return lines


