"""The ledger's part of the energy report written out: each GPU's energy, energy per token and
per sample, and each event's work lost, as JSON fragments, CSV tables and Markdown sections
(gridtao/records/report/formats.py puts them in the report). docs/energy.md describes them.

Units: energies kWh, J per unit, work in the sources' units, times ISO 8601 UTC and Unix s.
Threads: pure functions; any thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gridtao.records.report.build import EnergyReport, EventEntry
from gridtao.records.report.common import iso
from gridtao.records.report.gpus import GpuSpan
from gridtao.records.report.work import (
    MIN_REFERENCE_MINUTES,
    REFERENCE_S,
    Efficiency,
    EventWork,
    WorkLost,
)

__all__ = ["LEDGER_TABLES", "event_work_json", "ledger_markdown", "ledger_method",
           "ledger_table", "per_gpu_json", "work_json", "work_summary"]

#: The ledger's ``--format csv`` tables.
LEDGER_TABLES = ("gpus", "gpu_hours", "gpu_days", "work", "work_lost")

NO_GPU_ROWS = (
    "no GPU minutes in the window: the history holds each GPU's energy per minute (table "
    "gpu_minutes) only where an agent that records it ran (imported and generated histories "
    "have none)")
NO_WORK_ROWS = (
    "no work minutes in the window: the history holds the work sources' counters per minute "
    "(table work_minutes) only where the agent ran with work.sources configured")
NOT_READ = "the node's history was not read (no history given for the event's node)"

WORK_METHOD = (
    "energy per unit: over the minutes of the window in which a source counted and every GPU "
    "it is mapped to (work.sources[].gpus) has an energy row, those GPUs' energy over the "
    "generated tokens (inference servers) or the custom counter's units; a GPU shared by "
    "sources counts for each; a source serving several models gets one figure for them. Work "
    "lost per event, measured, at minute resolution: the source's rate over the "
    f"{REFERENCE_S} s before the event's first minute (minutes of other events left out, at "
    f"least {MIN_REFERENCE_MINUTES}) times the seconds its counters covered in the whole "
    "minutes the event touches (caps to the end of the release), minus what it counted in "
    "them; +/- one standard deviation from the spread of the reference minutes' rates "
    "(s x sqrt(sum c_i^2 + (sum c_i)^2 / n)). A counter's increase between two scrapes is "
    "spread evenly over the time between them (every period_s, 5 s by default).")


def ledger_method() -> tuple[str, str]:
    """The ledger's line of the report's method section."""
    return ("work and energy per unit", WORK_METHOD)


def _span(s: GpuSpan) -> dict[str, Any]:
    return {"start": iso(s.start_s), "end": iso(s.end_s), "start_s": s.start_s,
            "end_s": s.end_s, "energy_kwh": s.energy_kwh, "mean_w": s.mean_w,
            "expected_s": s.expected_s, "covered_s": s.covered_s, "coverage": s.coverage,
            "minutes": s.minutes, "method": s.method, "power_s": s.power_s,
            "bridged_s": s.bridged_s}


def per_gpu_json(report: EnergyReport) -> dict[str, Any]:
    """``per_gpu``: each GPU's window total, hours and days."""
    return {"available": bool(report.gpus),
            "reason": None if report.gpus else NO_GPU_ROWS,
            "gpus": [{"node": g.node, "gpu": g.gpu, "index": g.index, "device": g.device,
                      "total": _span(g.total),
                      "hours": [_span(s) for s in g.hours], "days": [_span(s) for s in g.days]}
                     for g in report.gpus]}


def _efficiency(e: Efficiency) -> dict[str, Any]:
    return {"node": e.node, "source": e.source, "source_kind": e.source_kind,
            "models": list(e.models), "unit": e.unit, "gpus": list(e.gpus), "units": e.units,
            "prompt_tokens": e.prompt_tokens, "energy_kwh": e.energy_kwh,
            "joules_per_unit": e.joules_per_unit,
            "joules_per_unit_meter": e.joules_per_unit_meter, "minutes": e.minutes,
            "counted_minutes": e.counted_minutes, "note": e.note}


def work_json(report: EnergyReport) -> dict[str, Any]:
    """``work``: energy per unit per source."""
    return {"available": bool(report.efficiency),
            "reason": None if report.efficiency else NO_WORK_ROWS,
            "per_unit": [_efficiency(e) for e in report.efficiency], "method": WORK_METHOD}


def _lost(w: WorkLost) -> dict[str, Any]:
    return {"source": w.source, "model": w.model, "unit": w.unit, "expected": w.expected,
            "done": w.done, "lost": w.lost, "lost_std": w.lost_std,
            "lost_fraction": w.lost_fraction, "reference_minutes": w.reference_minutes,
            "reference_rate_per_s": w.reference_rate_per_s,
            "reference_std_per_s": w.reference_std_per_s, "event_minutes": w.event_minutes}


def event_work_json(work: EventWork | None) -> dict[str, Any]:
    """An event's ``work_lost``."""
    if work is None:
        return {"available": False, "reason": NOT_READ, "sources": [], "unavailable": []}
    return {"available": work.available, "reason": work.reason,
            "sources": [_lost(w) for w in work.items],
            "unavailable": [{"source": s, "reason": r} for s, r in work.unavailable]}


def _name(w: WorkLost) -> str:
    return f"{w.source}/{w.model}" if w.model else w.source


def work_summary(work: EventWork | None) -> str:
    """An event's work lost in one cell: per source ``lost +/- std unit (share)``."""
    if work is None:
        return f"unavailable: {NOT_READ}"
    parts = [f"{_name(w)}: {w.lost:.6g} +/- {w.lost_std:.2g} {w.unit}s"
             + ("" if w.lost_fraction is None else f" ({w.lost_fraction:.1%})")
             for w in work.items]
    parts += [f"{s}: unavailable ({r})" for s, r in work.unavailable]
    return "; ".join(parts) if parts else f"unavailable: {work.reason}"


_GPU_COLUMNS = ("node", "gpu", "index", "start", "end", "start_s", "end_s", "minutes",
                "coverage", "energy_kwh", "mean_w", "method", "power_s", "bridged_s", "device")
_WORK_COLUMNS = ("node", "source", "source_kind", "models", "unit", "gpus", "units",
                 "prompt_tokens", "energy_kwh", "joules_per_unit", "minutes", "counted_minutes",
                 "note", "joules_per_unit_meter")
_LOST_COLUMNS = ("node", "event", "kind", "start", "end", "source", "model", "unit",
                 "expected", "done", "lost", "lost_std", "lost_fraction", "reference_minutes",
                 "reference_rate_per_s", "event_minutes", "unavailable")


def ledger_table(report: EnergyReport, table: str
                 ) -> tuple[Sequence[str], list[Sequence[object]]]:
    """One of :data:`LEDGER_TABLES`: its header and rows."""
    rows: list[Sequence[object]] = []
    if table in ("gpus", "gpu_hours", "gpu_days"):
        for g in report.gpus:
            spans = {"gpus": [g.total], "gpu_hours": g.hours, "gpu_days": g.days}[table]
            rows += [[g.node, g.gpu, g.index, iso(s.start_s), iso(s.end_s), s.start_s, s.end_s,
                      s.minutes, s.coverage, s.energy_kwh, s.mean_w, s.method, s.power_s,
                      s.bridged_s, g.device] for s in spans]
        return _GPU_COLUMNS, rows
    if table == "work":
        rows = [[e.node, e.source, e.source_kind, " ".join(e.models), e.unit,
                 " ".join(str(g) for g in e.gpus), e.units, e.prompt_tokens, e.energy_kwh,
                 e.joules_per_unit, e.minutes, e.counted_minutes, e.note,
                 e.joules_per_unit_meter]
                for e in report.efficiency]
        return _WORK_COLUMNS, rows
    for x in report.events:
        ev = x.event
        head = [ev.node, ev.event_id, ev.kind, iso(ev.start_s), iso(ev.end_s)]
        w = x.work
        if w is None or (not w.items and not w.unavailable):
            rows.append(head + [None] * 11 + [NOT_READ if w is None else w.reason])
            continue
        rows += [[*head, i.source, i.model, i.unit, i.expected, i.done, i.lost, i.lost_std,
                  i.lost_fraction, i.reference_minutes, i.reference_rate_per_s,
                  i.event_minutes, None] for i in w.items]
        rows += [head + [s] + [None] * 10 + [r] for s, r in w.unavailable]
    return _LOST_COLUMNS, rows


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _gpu_rows(report: EnergyReport, pick: Callable[[Any], list[GpuSpan]], width: int,
              when: Callable[[float | None], str]) -> list[list[str]]:
    return [[g.node, f"{g.index}" if g.device == "gpu" else "CPU", g.gpu,
             when(s.start_s)[:width], _f(s.energy_kwh, 4),
             _f(s.mean_w, 1), f"{s.coverage:.1%}", s.method]
            for g in report.gpus for s in pick(g)]


def ledger_markdown(report: EnergyReport, when: Callable[[float | None], str]
                    ) -> tuple[list[str], list[str], list[str]]:
    """The Markdown of the ledger: (energy by GPU, work lost by event, energy per unit)."""
    header = ("node", "GPU", "UUID", "UTC", "kWh", "mean W", "covered", "method")
    if report.gpus:
        # The window's totals: labelled as such, not by their start (as an hour's row is).
        gpus = _table(header, _gpu_rows(report, lambda g: [g.total], 16, lambda _t: "window"))
        gpus += ["", "By hour:", "",
                 *_table(header, _gpu_rows(report, lambda g: g.hours, 16, when))]
        gpus += ["", "By day:", "",
                 *_table(header, _gpu_rows(report, lambda g: g.days, 10, when))]
        gpus += ["", "Method: counter (NVML energy counter between read-back rounds), power "
                 "(power readings integrated: no counter, or it was reset), bridged (the "
                 "counter's increase while the agent was down, spread evenly), mixed. Rows "
                 "marked CPU are CPU packages (RAPL, work.cpu_power), beside the GPUs and not "
                 "in the node's IT figures."]
    else:
        gpus = [NO_GPU_ROWS[0].upper() + NO_GPU_ROWS[1:] + "."]
    lost: list[str] = []
    rows: list[list[str]] = []
    for x in report.events:
        rows += _lost_rows(x)
    if rows:
        lost = _table(("node", "event", "source", "expected", "done", "lost", "+/- (1 sd)",
                       "lost %", "reference"), rows)
    per_unit: list[str]
    if report.efficiency:
        per_unit = _table(
            ("node", "source", "models", "unit", "GPUs", "units", "prompt tokens", "GPU kWh",
             "J per unit", "J per unit, meter", "minutes", "note"),
            [[e.node, e.source, " ".join(e.models) or "-", e.unit,
              " ".join(str(g) for g in e.gpus) or "-", f"{e.units:.6g}",
              "-" if e.prompt_tokens is None else f"{e.prompt_tokens:.6g}",
              _f(e.energy_kwh, 4), _f(e.joules_per_unit, 4), _f(e.joules_per_unit_meter, 4),
              f"{e.minutes} of {e.counted_minutes}", e.note or "-"]
             for e in report.efficiency])
    else:
        per_unit = [NO_WORK_ROWS[0].upper() + NO_WORK_ROWS[1:] + "."]
    return gpus, lost, per_unit


def _lost_rows(x: EventEntry) -> list[list[str]]:
    w = x.work
    node, event = x.event.node or "-", x.event.event_id
    if w is None or (not w.items and not w.unavailable):
        return [[node, event, "-", "-", "-", "unavailable", "-", "-",
                 NOT_READ if w is None else w.reason or "-"]]
    out = [[node, event, _name(i), f"{i.expected:.6g}", f"{i.done:.6g}",
            f"{i.lost:.6g} {i.unit}s", f"{i.lost_std:.2g}",
            "-" if i.lost_fraction is None else f"{i.lost_fraction:.1%}",
            f"{i.reference_rate_per_s:.4g}/s over {i.reference_minutes} min"]
           for i in w.items]
    return out + [[node, event, s, "-", "-", "unavailable", "-", "-", r]
                  for s, r in w.unavailable]
