"""``gridtao prequalify``'s ``summary.md``: what a TSO application needs, in Markdown.

Sections: the verdict (and a SIMULATED banner when the GPUs were simulated), the identity of
the site, node, resource and meter, the product parameters, the measurement setup (sample
rates, accuracy, time source, the meter lag, the modelled meter), the time scale and what it
shortened, then every test with its figure (and Bode plot for sine tests), its rules with
measured values and limits, and what was not tested. ``results.json`` beside it carries the
same rules machine-readably. Powers in W, times in s.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gridtao.config.agent import Config, ProductConfig
from gridtao.config.kinds import KINDS
from gridtao.telemetry.runinfo import machine_description, software_version

if TYPE_CHECKING:
    from gridtao.prequal.report import TestResult
    from gridtao.prequal.rules import ProductSpec

SIMULATED_BANNER = (
    "> **SIMULATED.** The GPUs in this report were simulated (gridtao's GPU simulator), not "
    "measured on hardware. It shows how the controller behaves; it is not evidence of what a "
    "site delivers. Run it with `--backend nvml --allow-actuation` on the resource itself.")

NOT_TESTED = {
    "fcr-d-up": "the FCR-N/FCR-D combination ramps (only for a unit enrolled in both at once) "
                "and the linearity test (only for a non-continuous response) are not played",
    "fcr-d-up-static": "a second activation during the 60 s wait is not played (the re-arm "
                       "test's second activation comes after the wait and the ramp-down)",
    "ercot-ffr": "re-arm after a deployment is not played",
}


def product_rows(config: Config, pcfg: ProductConfig, spec: ProductSpec) -> list[tuple[str, str]]:
    rows = [("kind", pcfg.kind), ("name", pcfg.name or pcfg.kind),
            ("capacity", f"{pcfg.capacity_w:g} W at the {config.facility.settle_at}")]
    kind = KINDS[spec.kind]
    if kind.has_threshold:
        rows.append(("threshold", f"{spec.threshold_hz:g} Hz"))
    if kind.frequency:
        rows.append(("full activation limit", f"{spec.full_activation_s:g} s"))
    if kind.activation == "step":
        rows += [("support duration", _support(config, pcfg, spec.support_s)),
                 ("ramp-out", f"{config.safety.release_rate_per_s * 100:g} %/s of capacity"),
                 ("re-arm", _rearm(config, pcfg))]
    if spec.kind == "dr":  # its rules (prequal/rules.py, score_dr), for each dispatch
        from gridtao.prequal import scoring as sc

        rows += [("full at start", f"the reduction asked within {sc.DR_START_ALLOWANCE_S:g} s "
                                   "of the event's start (the ramp before it)"),
                 ("steady state and hold", f"-{sc.BAND:.0%} to +{sc.OVER:.0%} of the "
                                           "reduction asked, on 1 s means and on settlement-"
                                           "interval means"),
                 ("settlement interval", f"{sc.DR_INTERVAL_S:g} s (scaled with the holds)"),
                 ("recovery", "no faster than the dispatch's recovery time")]
    if config.facility.settle_at == "meter":
        f = config.facility
        rows.append(("facility model", f"losses {f.losses_fraction:.1%}, COP {f.cop:g}, "
                                       f"cooling lag {f.cooling_tau_s:g} s, fixed {f.fixed_w:g} W"))
    return rows


def _support(config: Config, pcfg: ProductConfig, support_s: float) -> str:
    """The support duration scored: the product's, and what the tests held when the time scale
    shortened it (ERCOT FFR's 15 min, unless configured)."""
    from gridtao.prequal.plans import support_times

    times = support_times(config, pcfg)
    if times is None or times[0] == times[1]:
        return f"{support_s:g} s"
    return f"{times[1]:g} s (the tests hold {times[0]:g} s: shortened by the time scale)"


def _rearm(config: Config, pcfg: ProductConfig) -> str:
    """The re-arm time: the product's, and what the test waited when the time scale shortened
    it (FFR; at least 10 s)."""
    from gridtao.prequal.plans import rearm_times

    waited, own = rearm_times(config, pcfg)
    if waited == own:
        return f"{own:g} s"
    return f"{own:g} s (the re-arm test waits {waited:g} s: shortened by the time scale)"


def measurement_rows(config: Config, *, dr: bool = False) -> list[tuple[str, str]]:
    """How the tests were measured (the bench's setup; compliance.py). ``dr``: a
    demand-response test, driven by dispatches, not by a frequency signal."""
    sim = config.gpus.backend == "sim"
    meter = ("modelled from the measured IT power (losses at once, cooling through a "
             "first-order lag: the facility model above)" if config.facility.settle_at ==
             "meter" else "the GPUs' summed instant power (settlement at IT)")
    signal = [("dispatches", "two demand-response events published over MQTT (local "
                             "Mosquitto) to the agent at once, each with its start time, ramp, "
                             "hold and recovery; no frequency signal: it stays at nominal")
              ] if dr else [
        ("frequency signal", "published over MQTT at 10 Hz to the agent (local Mosquitto); "
                             "the Nordic FCR signals through the 1/(1+s) meter lag first"),
        ("frequency accuracy", "exact (injected in software; the TSO's meter limit is "
                               "+/-10 mHz)")]
    return [
        *signal,
        ("power", "per-GPU instant power through NVML, 20 Hz"
                  + (" (simulated GPUs)" if sim else "")),
        ("power accuracy", "the simulator's own (no meter error modelled)" if sim else
                           "NVML's instant power reading (the GPU board's sensor); no site "
                           "meter in the loop"),
        ("settlement point", meter),
        ("time source", "the host's monotonic clock for every sample (one clock for "
                        "frequency and power); wall-clock UTC for the report's date"),
        ("reference", "mean power over the 5 s before each test (FCR-N: the baseline the "
                      "node declared)"),
        ("rule mechanics", "activation times on the raw samples (a crossing must hold "
                           "0.2 s); steady state, hold and over-delivery on 1 s means; FFR "
                           "ramp-out as the steepest 1 s fall of the 1 s mean over the whole "
                           "ramp-out; FCR-D static ramp-down likewise over the whole "
                           "ramp-down; sine tests on a least-squares fit of whole periods"),
    ]


def _table(rows: Sequence[tuple[str, str]], head: tuple[str, str]) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def _rules(res: TestResult) -> list[str]:
    lines = ["| rule | measured | limit | result | note |", "|---|---|---|---|---|"]
    for r in res.rules:
        value = r.shown if r.value is None else f"{r.shown} {r.unit}".rstrip()
        limit = (f"{r.limit[0]:g} to {r.limit[1]:g} {r.unit}" if isinstance(r.limit, tuple)
                 else f"{r.op} {r.limit:g} {r.unit}").rstrip()
        note = r.detail.replace("|", "\\|")  # a table cell: pipes would end it
        lines.append(f"| {r.name} | {value} | {limit} | "
                     f"{'pass' if r.passed else '**FAIL**'} | {note} |")
    return lines


def summary_markdown(config: Config, args: argparse.Namespace, pcfg: ProductConfig,
                     results: Sequence[TestResult], stamp: datetime.datetime, command: str, *,
                     time_scale: float, steady_fraction: float | None,
                     figures: dict[str, list[str]]) -> str:
    """The report (module docstring). ``figures``: per test, the image files written."""
    from gridtao.app.options import default_node_id
    from gridtao.prequal.plans import spec_of

    spec = spec_of(pcfg)
    ok = bool(results) and all(r.passed for r in results)
    sim = config.gpus.backend == "sim"
    load = (f"simulated {config.gpus.sim.count} x {config.gpus.sim.profile}, "
            + (f"steady load at {steady_fraction:.0%} of the default limit"
               if steady_fraction is not None else f"workload {config.gpus.sim.workload}")
            ) if sim else "real GPUs (NVML)"
    verdict = "PASS" if ok else "FAIL"
    lines = [f"# Prequalification test report: {args.product}"
             + (" (SIMULATED)" if sim else ""), ""]
    if sim:
        lines += [SIMULATED_BANNER, ""]
    lines += [
        f"**Result: {verdict}** ({sum(r.passed for r in results)} of {len(results)} tests "
        "passed). Machine-readable: [results.json](results.json).", "",
        *_table([
            ("Site", getattr(args, "site", None) or "(not given)"),
            ("Resource", getattr(args, "resource", None) or "(not given)"),
            ("Meter", getattr(args, "meter", None) or (
                "none: modelled from NVML power" if config.facility.settle_at == "meter"
                else "none: NVML power")),
            ("Node", config.mqtt.node_id or default_node_id()),
            ("Date (UTC)", f"{stamp:%Y-%m-%d %H:%M:%S}"),
            ("Software", software_version()),
            ("Machine", machine_description()),
            ("GPUs", load),
            ("Command", f"`{command}`"),
        ], ("", "")), "",
        "## Product parameters", "", *_table(product_rows(config, pcfg, spec),
                                             ("parameter", "value")), "",
        "## Measurement setup", "", *_table(measurement_rows(config, dr=pcfg.kind == "dr"),
                                            ("what", "how")), "",
        "## Time scale", "",
        f"Long holds run at time scale {time_scale:g} (1 = the TSO's lengths); the frequency "
        "tests' ramp rates and sine periods never change with it (DR's ramps, times of a "
        "dispatch, are shortened with its holds), and normal frequency runs at least 300 s. "
        "What was shortened:", "",
    ]
    cut = [(res.name, s) for res in results if res.plan is not None
           for s in res.plan.shape.shortened]
    lines += [f"- {name}: {s}" for name, s in cut] or ["- nothing"]
    lines += ["", "## Tests", ""]
    for res in results:
        lines += [f"### {res.name}: {res.title} ({'PASS' if res.passed else 'FAIL'})", ""]
        if res.gpu_errors:
            failed = ", ".join(f"{k} ({n}x)" for k, n in sorted(res.gpu_errors.items()))
            lines += [f"**GPU errors during this test**: {failed}. The GPUs did not take every "
                      "limit the agent commanded; the measured response is what they did.", ""]
        for f in figures.get(res.name, []):
            lines += [f"![{res.name}{' Bode' if f.endswith('-bode.png') else ''}]({f})", ""]
        lines += [f"Data: [{res.name}.csv]({res.name}.csv)", "", *_rules(res), ""]
    missing = NOT_TESTED.get(pcfg.kind)
    lines += ["## Not tested", "",
              f"- {missing}" if missing else "- nothing beyond the tests above", ""]
    return "\n".join(lines)
