"""The energy report as a plot (:func:`draw`): per node, hourly IT and modelled meter energy,
with the history's gaps, the events and the work they lost, and (where the history has them)
each GPU's hourly energy with the sources' energy per unit, as a PNG. matplotlib is loaded
when a plot is drawn, not when this module is imported (:mod:`gridtao.telemetry.plotting`).

Units: kWh per hour (one bar an hour); the time axis in UTC.
Threads: pyplot keeps global state: draw from one thread at a time (the CLI's main thread).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gridtao.records.report.build import EnergyReport
from gridtao.records.report.common import DAY_S
from gridtao.records.report.formats import _when

__all__ = ["draw"]


def draw(report: EnergyReport, path: Path) -> None:
    """Per node, hourly IT energy (measured) in front of the modelled meter energy (kWh, one bar
    per hour as wide as the part of the hour in the window), history gaps in grey and events in
    red; a PNG at ``path``. Needs matplotlib (:mod:`gridtao.telemetry.plotting`)."""
    from gridtao.telemetry.plotting import pyplot

    def when(t: float) -> datetime:
        return datetime.fromtimestamp(t, UTC)

    plt = pyplot()
    gpus = {n.node: [g for g in report.gpus if g.node == n.node] for n in report.nodes}
    rows = max(1, sum(2 if gpus[n.node] else 1 for n in report.nodes))
    fig, axes = plt.subplots(rows, 1, figsize=(11, 1.0 + 3.0 * rows), dpi=110, sharex=True,
                             squeeze=False)
    free = [a[0] for a in axes]
    for n in report.nodes:
        ax = free.pop(0)
        starts = [when(s.start_s) for s in n.hours]
        widths = [(s.end_s - s.start_s) / DAY_S for s in n.hours]  # matplotlib dates: days
        ax.bar(starts, [s.meter_kwh for s in n.hours], width=widths, align="edge",
               color="tab:orange", alpha=0.5, label="meter kWh (modelled)")
        ax.bar(starts, [s.it_kwh for s in n.hours], width=widths, align="edge",
               color="tab:blue", alpha=0.8, label="IT kWh (measured)")
        for g in n.gaps:
            ax.axvspan(when(g.start_s), when(g.end_s), color="0.6", alpha=0.5, lw=0)
        for x in report.events:
            ev = x.event
            if ev.start_s is not None and (len(report.nodes) == 1 or ev.node == n.node):
                end = ev.end_s if ev.end_s is not None else report.to_s
                ax.axvspan(when(ev.start_s), when(end), color="tab:red", alpha=0.25, lw=0)
                if x.work is not None and x.work.items:
                    ax.annotate("\n".join(f"{w.source}: -{w.lost:.3g} {w.unit}s"
                                          for w in x.work.items),
                                (when(ev.start_s), 0), fontsize=6, rotation=90,
                                va="bottom", color="tab:red")
        ax.set_ylabel(f"{n.node}: kWh per hour")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
        if gpus[n.node]:
            gx = free.pop(0)
            for gpu in gpus[n.node]:
                if not gpu.hours:
                    continue
                # Held to each hour's end (one hour alone would otherwise draw nothing).
                edges = [when(s.start_s) for s in gpu.hours] + [when(gpu.hours[-1].end_s)]
                kwh = [s.energy_kwh for s in gpu.hours]
                gx.step(edges, [*kwh, kwh[-1]], where="post",
                        label=f"GPU {gpu.index}" if gpu.device == "gpu"
                        else gpu.gpu.upper().replace("CPU:", "CPU "),
                        ls="-" if gpu.device == "gpu" else "--")
            per_unit = [f"{e.source}: {e.joules_per_unit:.4g} J/{e.unit}"
                        for e in report.efficiency
                        if e.node == n.node and e.joules_per_unit is not None]
            if per_unit:
                gx.text(0.99, 0.97, "\n".join(per_unit), transform=gx.transAxes, fontsize=7,
                        ha="right", va="top")
            gx.set_ylabel(f"{n.node}: GPU (CPU) kWh per hour")
            gx.legend(fontsize=7, loc="upper left", ncol=4)
            gx.grid(alpha=0.3)
    axes[0][0].set_title(f"gridtao energy {_when(report.from_s)} to {_when(report.to_s)} UTC "
                         "(grey: history gaps, red: events)")
    axes[0][0].set_xlim(when(report.from_s), when(report.to_s))
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
