"""The test report's figures: a TSO-style test plot per test and a Bode plot of the sine tests.

The test plot (:func:`plot_test`) has the reduction on top (required, the steady-state
tolerance band around it: -5 % / +20 % of what is required, of capacity where nothing is, and
the delivered reduction at the settlement point and at the GPUs), the frequency on its right
axis for a frequency product (sent to the unit, and the injected signal before the 1/(1+s)
meter lag where one was applied), the test's marks (event, FCR-D dynamic start and +7.5 s,
glitches), and below it the absolute power (settlement point and IT) when the test was
recorded here. Every rule is listed on the figure with its value and limit, the time
compression is stated, the legend sits outside the traces, and a test on simulated GPUs
carries a SIMULATED mark.

The Bode plot (:func:`plot_bode`): the sine tests' gain and phase per period, measured and
required (the ideal proportional response through the meter lag), the gain's tolerance band.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridtao.config.kinds import KINDS
from gridtao.prequal import scoring as sc
from gridtao.prequal import sine
from gridtao.telemetry.plotting import pyplot

if TYPE_CHECKING:
    from gridtao.prequal.report import TestResult


def _band(required_w: Sequence[float], capacity_w: float) -> tuple[list[float], list[float]]:
    """The steady-state tolerance around the requirement (W): -5 % / +20 % of what is
    required, in its direction; -5 % / +20 % of capacity where (nearly) nothing is."""
    lo, hi = [], []
    for r in required_w:
        if abs(r) < sc.BAND * capacity_w:
            lo.append(r - sc.BAND * capacity_w)
            hi.append(r + sc.OVER * capacity_w)
        elif r > 0:
            lo.append(r * (1 - sc.BAND))
            hi.append(r * (1 + sc.OVER))
        else:
            lo.append(r * (1 + sc.OVER))
            hi.append(r * (1 - sc.BAND))
    return lo, hi


def _rule_lines(result: TestResult) -> list[str]:
    lines = []
    for r in result.rules:
        lim = (f"[{r.limit[0]:g}, {r.limit[1]:g}]" if isinstance(r.limit, tuple)
               else f"{r.op} {r.limit:g}")
        lines.append(f"{'PASS' if r.passed else 'FAIL'} {r.name}: {r.shown} {r.unit} "
                     f"(limit {lim} {r.unit})".replace("  ", " "))
    return lines


def _simulated(fig: Any) -> None:
    fig.text(0.5, 0.5, "SIMULATED", fontsize=64, color="tab:red", alpha=0.15, ha="center",
             va="center", rotation=20, weight="bold", zorder=10)
    fig.text(0.01, 0.99, "SIMULATED GPUs", fontsize=10, color="tab:red", ha="left",
             va="top", weight="bold", zorder=10)


def plot_test(result: TestResult, path: Path, *, product: str, capacity_w: float,
              simulated: bool = False, time_scale: float | None = None) -> None:
    """The test plot (module docstring) as a PNG at ``path``."""
    plt = pyplot()
    tr, m = result.trace, result.measured
    rows = 2 if m is not None else 1
    fig = plt.figure(figsize=(12, 8.5 if rows == 2 else 6.5))
    grid = fig.add_gridspec(rows, 2, width_ratios=(3.2, 1.3),
                            height_ratios=(2.2, 1) if rows == 2 else (1,))
    ax = fig.add_subplot(grid[0, 0])
    lo, hi = _band(tr.required_w, capacity_w)
    ax.fill_between(tr.t_s, lo, hi, color="grey", alpha=0.18, lw=0,
                    label="tolerance -5 % / +20 % of required")
    ax.plot(tr.t_s, tr.required_w, color="black", lw=1.4, ls="--", label="required")
    ax.plot(tr.t_s, tr.delivered_w, color="tab:blue", lw=0.9, label="delivered (settlement)")
    ax.plot(tr.t_s, tr.delivered_it_w, color="tab:green", lw=0.6, alpha=0.7,
            label="delivered (IT)")
    ax.axhline(0.0, color="black", lw=0.4)
    marks = result.plan.shape.marks if result.plan is not None else {}
    if result.event_s is not None:
        ax.axvline(result.event_s, color="tab:red", lw=0.8, ls=":", label="event")
    if "dynamic" in marks:
        ax.axvline(marks["dynamic"], color="tab:purple", lw=0.8, ls=":",
                   label="FCR-D ramp start")
        ax.axvline(marks["dynamic"] + sc.FCR_D_T_S, color="tab:purple", lw=0.8, ls="-.",
                   label="+7.5 s")
    if result.plan is not None:
        for k, (a, _b, _low) in enumerate(result.plan.shape.glitches):
            ax.axvline(a, color="tab:brown", lw=0.6, ls=":",
                       label="glitch (must not activate)" if k == 0 else None)
    ax.set_ylabel("power reduction (W)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if KINDS[product].frequency:  # demand response is dispatched: no frequency to show
        fx = ax.twinx()
        if result.plan is not None and result.plan.shape.lagged:
            shape = result.plan.shape
            fx.plot(shape.times_s(), shape.nominal_hz, color="tab:orange", lw=0.7, ls=":",
                    label="frequency injected (before 1/(1+s))")
        fx.plot(tr.t_s, tr.hz, color="tab:orange", lw=1.0, label="frequency sent")
        fx.set_ylabel("frequency (Hz)")
        more = fx.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    side = fig.add_subplot(grid[:, 1])
    side.axis("off")
    side.legend(handles, labels, loc="upper left", fontsize=7.5, frameon=False)
    notes = _rule_lines(result)
    if time_scale is not None:
        notes += ["", f"time scale {time_scale:g}"]
    if result.plan is not None:
        notes += [f"shortened: {s}" for s in result.plan.shape.shortened] or (
            ["nothing shortened"] if time_scale is not None else [])
    side.text(0.0, 0.52, "\n".join(_wrap(n, 52) for n in notes), fontsize=7, va="top",
              family="monospace", transform=side.transAxes)
    if m is not None:
        low = fig.add_subplot(grid[1, 0], sharex=ax)
        first = m.t_s.index(tr.t_s[0])
        n = len(tr.t_s)
        low.plot(tr.t_s, m.meter_w[first:first + n], color="tab:blue", lw=0.8,
                 label="settlement meter (modelled)")
        low.plot(tr.t_s, m.it_w[first:first + n], color="tab:green", lw=0.8, label="IT (GPUs)")
        low.plot(tr.t_s, [m.reference_at(t).w for t in tr.t_s], color="tab:blue", lw=0.6,
                 ls="--", label="reference")
        low.set_ylabel("power (W)")
        low.set_xlabel("time (s)")
        low.legend(fontsize=7, loc="upper right", ncol=3)
        low.grid(alpha=0.3)
    else:
        ax.set_xlabel("time (s)")
    failed = [r.name for r in result.rules if not r.passed]
    verdict = "PASS" if result.passed else "FAIL: " + ", ".join(failed)
    # Wrapped to the plot's width: a long title centred on it would run off the figure.
    ax.set_title(_wrap(f"{product} / {result.name}: {result.title}", 100)
                 + f"\n{_wrap(verdict, 100)}", fontsize=9.5)
    if simulated:
        _simulated(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bode(points: Sequence[sine.SinePoint], path: Path, *, title: str,
              simulated: bool = False) -> None:
    """Gain and phase per sine period, measured against required (module docstring)."""
    plt = pyplot()
    fig, (gain, phase) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    periods = [p.period_s for p in points]
    req = [p.required_gain for p in points]
    fcr_d = any(p.performance is None for p in points)
    ideal = "ideal (not scored)" if fcr_d else "required"
    gain.fill_between(periods, [g * (1 - sc.BAND) for g in req],
                      [g * (1 + sc.OVER) for g in req], color="grey", alpha=0.2, lw=0,
                      label=f"-5 % / +20 % of {ideal}")
    gain.plot(periods, req, color="black", ls="--", marker=".", label=ideal)
    gain.plot(periods, [p.gain for p in points], color="tab:blue", marker="o",
              label="measured")
    for p in points:
        note = (f"stab {p.stability:.2f}" if p.performance is None
                else f"perf {p.performance:.2f}\nstab {p.stability:.2f}")
        gain.annotate(note, (p.period_s, p.gain), fontsize=6, xytext=(3, -18),
                      textcoords="offset points")
    band = sine.FCR_D_BAND_HZ if fcr_d else sine.FCR_N_HALF_BAND_HZ
    gain.set_ylabel(f"gain (1 = capacity for {band:g} Hz)")
    gain.legend(fontsize=8)
    gain.grid(alpha=0.3, which="both")
    phase.plot(periods, [p.required_phase_deg for p in points], color="black", ls="--",
               marker=".", label=ideal)
    phase.plot(periods, [p.phase_deg for p in points], color="tab:blue", marker="o",
               label="measured")
    phase.set_ylabel("phase (deg, negative = lagging)")
    phase.set_xlabel("period (s)")
    phase.set_xscale("log")
    phase.set_xticks(periods, [f"{p:g}" for p in periods])
    phase.minorticks_off()
    phase.legend(fontsize=8)
    phase.grid(alpha=0.3, which="both")
    criteria = (f"stability |1+F G_D| >= {sine.STABILITY_MARGIN:g} (FCR-D model)" if fcr_d else
                "performance |D 0.95 G/(1+FG)| <= 1, "
                f"stability |1+FG| >= {sine.STABILITY_MARGIN:g}")
    gain.set_title(_wrap(title, 100) + "\nper period: " + criteria, fontsize=9)
    if simulated:
        _simulated(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(" "), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = "  " + w
        else:
            line = f"{line} {w}" if line else w
    lines.append(line)
    return "\n".join(lines)


def write_pdf(path: Path, text: str, images: Sequence[Path]) -> None:
    """``summary.md``'s text (monospace, wrapped, paginated on A4) followed by every figure,
    one per page: the report as one file with matplotlib alone."""
    plt = pyplot()  # raises PlottingUnavailable (how to install it) without matplotlib
    pdf_pages = importlib.import_module("matplotlib.backends.backend_pdf").PdfPages
    width, per_page = 118, 92
    lines = [part for line in text.splitlines() for part in (_wrap(line, width) or "").split("\n")]
    with pdf_pages(path) as pdf:
        for start in range(0, max(1, len(lines)), per_page):
            fig = plt.figure(figsize=(8.27, 11.69))
            fig.text(0.04, 0.97, "\n".join(lines[start:start + per_page]), fontsize=6.2,
                     family="monospace", va="top", ha="left")
            pdf.savefig(fig)
            plt.close(fig)
        for image in images:
            fig = plt.figure(figsize=(11.69, 8.27))
            ax = fig.add_axes((0.02, 0.02, 0.96, 0.96))
            ax.imshow(plt.imread(image))
            ax.axis("off")
            pdf.savefig(fig)
            plt.close(fig)
