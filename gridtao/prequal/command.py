"""``gridtao prequalify``: a product's full TSO test sequence, written up for an application.

Runs every test of the product (compliance.py: a real broker, a fresh agent per test)
and writes a report folder: ``<test>.csv`` (the 20 Hz log, columns in the README's
"Compliance bench" section) and ``<test>.png`` per test, ``results.json`` (product, passed,
rules) and ``summary.md``: site, node, product parameters, each test's rules with measured values
and limits, the verdict, machine, date and software version.

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
from gridtao.config.kinds import KINDS
from gridtao.telemetry import plotting
from gridtao.telemetry.runinfo import machine_description, provenance, software_version

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
    from gridtao.prequal.options import add_common

    add_common(p)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="report folder (default prequalify-<product>-<UTC time>)")
    p.add_argument("--backend", choices=("sim", "nvml"), default=None,
                   help="override gpus.backend")
    p.add_argument("--allow-actuation", action="store_true",
                   help="with --backend nvml: allow writing power limits to the real GPUs")
    p.add_argument("--dry-run", action="store_true",
                   help="print the sequence, durations and limits it would command; write none")
    p.add_argument("--site", default=None, help="site name for the summary")


def run(args: argparse.Namespace, config: Config) -> int:
    from gridtao.prequal import compliance as c
    from gridtao.prequal.options import check_common, on_named_backend

    if args.backend is not None:
        config = dataclasses.replace(config, gpus=dataclasses.replace(config.gpus,
                                                                      backend=args.backend))
    config = on_named_backend(config)
    scale = check_common(args)
    pcfg = c.product_config(config, args.product, capacity_w=args.capacity_w, time_scale=scale,
                            threshold_hz=args.threshold_hz)
    spec = c.spec_of(pcfg)
    plans = c.test_plans(args.product, spec, scale)
    if args.dry_run:
        print(dry_run_text(config, args, pcfg, spec, plans))
        return 0
    if config.gpus.backend == "nvml" and not args.allow_actuation:
        print(REFUSAL, file=sys.stderr)
        return EXIT_REFUSED
    stamp = datetime.datetime.now(datetime.timezone.utc)
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

    command = "gridtao " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    drawing = plotting.available()
    for res in results:
        rep.write_csv(res, out / f"{res.name}.csv")
        if drawing:
            rep.plot(res, out / f"{res.name}.png", product=args.product,
                     capacity_w=pcfg.capacity_w)
    if not drawing:
        print(f"no PNG plots in {out}: {plotting.INSTALL_HINT}", file=sys.stderr)
    body = rep.summary_json(args.product, results, command=command, version=__version__,
                            machine=machine_description(), date=stamp.isoformat(),
                            product_config=_plain(pcfg))
    body = provenance(command) | body  # the report's own date, machine and command win
    (out / "results.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(config, args, pcfg, results, stamp,
                                                     command), encoding="utf-8")
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
    lines += [f"  {k}: {v}" for k, v in product_rows(config, pcfg, spec)]
    lines += ["", "Test sequence (a fresh agent per test, a local Mosquitto broker):"]
    total = 0.0
    for p in plans:
        lines.append(f"  {p.name}: {p.shape.title}: {p.duration_s:.0f} s")
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


# ---- summary ------------------------------------------------------------------------------


def product_rows(config: Config, pcfg: ProductConfig, spec: ProductSpec) -> list[tuple[str, str]]:
    rows = [("kind", pcfg.kind), ("name", pcfg.name or pcfg.kind),
            ("capacity", f"{pcfg.capacity_w:g} W at the {config.facility.settle_at}")]
    kind = KINDS[spec.kind]
    if kind.has_threshold:
        rows.append(("threshold", f"{spec.threshold_hz:g} Hz"))
    if kind.frequency:
        rows.append(("full activation limit", f"{spec.full_activation_s:g} s"))
    if kind.activation == "step":
        rows += [("support duration", f"{spec.support_s:g} s"),
                 ("ramp-out", f"{config.safety.release_rate_per_s * 100:g} %/s of capacity"),
                 ("re-arm", f"{pcfg.rearm_s:g} s")]
    if config.facility.settle_at == "meter":
        f = config.facility
        rows.append(("facility model", f"losses {f.losses_fraction:.1%}, COP {f.cop:g}, "
                                       f"cooling lag {f.cooling_tau_s:g} s, fixed {f.fixed_w:g} W"))
    return rows


def summary_markdown(config: Config, args: argparse.Namespace, pcfg: ProductConfig,
                     results: Sequence[TestResult], stamp: datetime.datetime,
                     command: str) -> str:
    from gridtao.app.agent import default_node_id
    from gridtao.prequal import compliance as c
    from gridtao.prequal.options import check_common, steady

    spec = c.spec_of(pcfg)
    ok = bool(results) and all(r.passed for r in results)
    sim = config.gpus.backend == "sim"
    fraction = steady(args, config)
    load = (f"simulated {config.gpus.sim.count} x {config.gpus.sim.profile}, "
            + (f"steady load at {fraction:.0%} of the default limit" if fraction is not None
               else f"workload {config.gpus.sim.workload}")) if sim else "real GPUs (NVML)"
    lines = [
        f"# Prequalification test report: {args.product}", "",
        f"**Result: {'PASS' if ok else 'FAIL'}** "
        f"({sum(r.passed for r in results)} of {len(results)} tests passed)", "",
        "| | |", "|---|---|",
        f"| Site | {args.site or '(not given)'} |",
        f"| Node | {config.mqtt.node_id or default_node_id()} |",
        f"| Date (UTC) | {stamp:%Y-%m-%d %H:%M:%S} |",
        f"| Software | {software_version()} |",
        f"| Machine | {machine_description()} |",
        f"| GPUs | {load} |",
        f"| Command | `{command}` |", "",
        "## Product parameters", "", "| parameter | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in product_rows(config, pcfg, spec)], "",
        "## Tests", "",
    ]
    for res in results:
        lines += [f"### {res.name}: {res.title} ({'PASS' if res.passed else 'FAIL'})", ""]
        if res.gpu_errors:
            failed = ", ".join(f"{k} ({n}x)" for k, n in sorted(res.gpu_errors.items()))
            lines += [f"**GPU errors during this test**: {failed}. The GPUs did not take every "
                      "limit the agent commanded; the measured response is what they did.", ""]
        lines += [f"![{res.name}]({res.name}.png)", "",
                  f"Data: [{res.name}.csv]({res.name}.csv)", "",
                  "| rule | measured | limit | result | note |", "|---|---|---|---|---|"]
        for r in res.rules:
            value = r.shown if r.value is None else f"{r.shown} {r.unit}"
            limit = (f"{r.limit[0]:g} to {r.limit[1]:g} {r.unit}" if isinstance(r.limit, tuple)
                     else f"{r.op} {r.limit:g} {r.unit}")
            lines.append(f"| {r.name} | {value} | {limit} | "
                         f"{'pass' if r.passed else '**FAIL**'} | {r.detail} |")
        lines.append("")
    lines += [
        "## Method", "",
        "Frequency samples are published over MQTT at 10 Hz to the agent (a local Mosquitto "
        "broker); the FCR signals pass through the 1/(1+s) frequency-meter lag first. Per-GPU "
        "power is read through NVML instant power at 20 Hz. The settlement meter is modelled "
        "from the measured IT power (losses at once, cooling through a first-order lag); the "
        "reference is the mean power over the 5 s before each test (FCR-N: the declared "
        "baseline). Activation times use the raw samples (a crossing must hold 0.2 s); steady "
        "state, hold and over-delivery use 1 s means; ramp rates are least-squares slopes "
        f"between the 90 % and 10 % points. Long holds time-scaled by {check_common(args):g} "
        "(ramp rates never are).",
        "",
    ]
    return "\n".join(lines)


def _plain(pcfg: ProductConfig) -> dict[str, object]:
    return {k: v for k, v in dataclasses.asdict(pcfg).items() if v is not None}

