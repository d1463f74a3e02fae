"""The energy report written out: Markdown (:func:`to_markdown`), JSON (:func:`to_json`,
:func:`dumps`) and CSV, one table a run (:func:`to_csv`), each with what the report says of
its method and uncertainty (:func:`method_lines`). docs/energy.md describes the JSON and CSV
shapes.

Units: times ISO 8601 UTC (and Unix s in JSON and CSV), energies kWh, powers W.
Threads: pure functions that return text; no shared state, any thread.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from gridtao.records.report.build import EnergyReport, EventEntry
from gridtao.records.report.common import ReportError, iso
from gridtao.records.report.ledgerfmt import (
    LEDGER_TABLES,
    event_work_json,
    ledger_markdown,
    ledger_method,
    ledger_table,
    per_gpu_json,
    work_json,
    work_summary,
)
from gridtao.records.report.minutes import Span

__all__ = [
    "JSON_FORMAT_VERSION",
    "TABLES",
    "dumps",
    "iso",
    "method_lines",
    "to_csv",
    "to_json",
    "to_markdown",
]

#: The shape of :func:`to_json`'s document; raised when a field changes meaning or goes
#: (2: ``per_gpu``, ``work`` and each event's ``work_lost`` hold figures).
JSON_FORMAT_VERSION = 2
#: The tables ``--format csv`` writes, one per run (``--table``).
TABLES = ("hours", "days", "nodes", "events", "gaps", *LEDGER_TABLES)

# ---- what the report says about method and uncertainty ------------------------------------


def method_lines(report: EnergyReport) -> list[tuple[str, str]]:
    """The measurement method, sampling and uncertainty, as (topic, text)."""
    f = report.facility
    period = report.read_back_period_s
    return [
        ("IT energy (history)",
         "the node's minute history. The running agent measures the node's IT power once per "
         f"read-back round (every {period:g} s: safety.rearm_period_s) from the GPUs' NVML "
         "energy counters (nvmlDeviceGetTotalEnergyConsumption, mJ): the joules between two "
         "rounds over the seconds between them, only in rounds where every GPU's counter was "
         "read. The history recorder holds each value until the next (at most 2 s), averages "
         "1-s bins and stores one row per minute, so a minute's energy is the counters' "
         "energy. Minutes written by 'gridtao history import' are power samples from a CSV "
         "integrated the same way (rectangle rule), and 'gridtao history generate' writes "
         "synthetic minutes: the file does not record which rows came from where."),
        ("sampling",
         f"IT power every {period:g} s (the current configuration's read-back period; the "
         "history does not record the period it was written at); stored per minute; this "
         "report sums minutes (times UTC)."),
        ("event energy (audit trail)",
         "the agent's event_energy records: per read-back round, each GPU's energy counter "
         "delta, or its instant power integrated (trapezoid) where a GPU has no counter or "
         "the counter went back (method counter, power or mixed); the event's span is "
         "interpolated inside the rounds around its start and end. The reference is the "
         "draw the event's cut was measured from, held for its duration: for the island's "
         "events the node's draw when the caps were cut (from the caps to the end of the "
         "release), for demand-response events tier 2's frozen reference (over the ramp, the "
         "hold and the recovery, as scheduled; at most one tier-2 period longer at either end "
         "for an event received mid-ramp or cancelled)."),
        ("meter energy (modelled)",
         "not metered: the facility model (facility: configuration) over the measured IT "
         f"draw: losses {f['losses_fraction']:g} x IT at once, cooling IT / COP "
         f"(COP {f['cop']:g}) through a first-order lag of {f['cooling_tau_s']:g} s, plus "
         f"{f['fixed_w']:g} W fixed; settlement point: {f['settle_at']}. In the hourly "
         "tables the minute's mean draw is held over the minute; cooling starts settled 5 "
         "lags before the window and after each missing minute."),
        ("uncertainty",
         "NVIDIA states no accuracy for the energy counter; NVML's documentation gives "
         "+/-5 % of the draw for the power reading of Fermi and Kepler GPUs only, nothing for "
         "later ones. Timing moves at most one read-back round of draw across each minute's "
         "edges. A minute cut by the window or by an event's span counts pro rata, as if its "
         "draw were even. The meter figures are as good as the facility model's parameters, "
         "which are settings, not measurements: compare them with the site meter before "
         "settling on them."),
        ("energy per GPU (history)",
         "each GPU's minutes (table gpu_minutes): its NVML energy counter between read-back "
         "rounds; its power readings integrated (trapezoid) where it has no counter or the "
         "counter went back (a driver reload resets it); across a restart of the agent, the "
         "counter's increase while it was down, spread evenly over that time (bridged). A "
         "minute written in parts (a restart) holds their sum."),
        ledger_method(),
    ]


# ---- output --------------------------------------------------------------------------------


def _span_json(s: Span) -> dict[str, Any]:
    return {"start": iso(s.start_s), "end": iso(s.end_s), "start_s": s.start_s,
            "end_s": s.end_s, "it_kwh": s.it_kwh, "meter_kwh": s.meter_kwh,
            "mean_it_w": s.mean_it_w, "expected_s": s.expected_s, "covered_s": s.covered_s,
            "coverage": s.coverage, "minutes": s.minutes, "missing_minutes": s.missing_minutes,
            "partial_minutes": s.partial_minutes, "event_minutes": s.event_minutes}


def _event_json(x: EventEntry) -> dict[str, Any]:
    ev = x.event
    return {
        "node": ev.node, "id": ev.event_id, "kind": ev.kind, "source": ev.source,
        "level": ev.level, "start": iso(ev.start_s), "end": iso(ev.end_s),
        "start_s": ev.start_s, "end_s": ev.end_s,
        "duration_s": None if ev.start_s is None or ev.end_s is None
        else ev.end_s - ev.start_s,
        "why_ended": ev.why_ended, "partly_outside_window": x.partly_outside,
        "baseline_w": ev.baseline_w, "target_w": ev.target_w,
        "method": x.method, "it_drawn_kwh": x.it_drawn_kwh,
        "it_reference_kwh": x.it_reference_kwh, "it_not_drawn_kwh": x.it_not_drawn_kwh,
        "meter_drawn_kwh": x.meter_drawn_kwh, "meter_not_drawn_kwh": x.meter_not_drawn_kwh,
        "history": None if x.history is None else _span_json(x.history),
        "work_lost": event_work_json(x.work), "verified": ev.verified,
        "cancelled_by": ev.cancelled_by,
        "restarted_at": iso(ev.restarted_at_s),
        "overlapped": _overlapped(x),
    }


def to_json(report: EnergyReport) -> dict[str, Any]:
    """The report as a JSON-ready document (shape: docs/energy.md, ``format_version``)."""
    return {
        "report": "energy", "format_version": JSON_FORMAT_VERSION,
        "generated_at": iso(report.generated_at_s),
        "window": {"from": iso(report.from_s), "to": iso(report.to_s),
                   "from_s": report.from_s, "to_s": report.to_s, "timezone": "UTC"},
        "facility": dict(report.facility),
        "nodes": [{"node": n.node, "history": n.source, "total": _span_json(n.total),
                   "hours": [_span_json(s) for s in n.hours],
                   "days": [_span_json(s) for s in n.days],
                   "gaps": [{"start": iso(g.start_s), "end": iso(g.end_s),
                             "start_s": g.start_s, "end_s": g.end_s, "minutes": g.minutes}
                            for g in n.gaps]} for n in report.nodes],
        "per_gpu": per_gpu_json(report),
        "events": [_event_json(x) for x in report.events],
        "work": work_json(report),
        "audit": [{"files": list(c.files), "node": c.node, "intact": c.intact,
                   "records": c.records, "verified": c.verified, "problem": c.problem,
                   "starts_after": c.starts_after, "lost_records": c.lost_records,
                   "unreadable_lines": c.unreadable_lines} for c in report.trails],
        "method": {"read_back_period_s": report.read_back_period_s,
                   **{topic: text for topic, text in method_lines(report)}},
        "warnings": list(report.warnings), "notes": list(report.notes),
    }


_SPAN_COLUMNS = ("node", "start", "end", "start_s", "end_s", "minutes", "missing_minutes",
                 "partial_minutes", "coverage", "it_kwh", "meter_kwh_modelled", "mean_it_w",
                 "event_minutes")
_EVENT_COLUMNS = ("node", "id", "kind", "source", "level", "start", "end", "duration_s",
                  "why_ended", "partly_outside_window", "method", "it_drawn_kwh",
                  "it_reference_kwh", "it_not_drawn_kwh", "meter_drawn_kwh",
                  "meter_not_drawn_kwh", "history_it_kwh", "history_meter_kwh_modelled",
                  "history_coverage", "work_lost", "verified")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _span_row(node: str, s: Span) -> list[object]:
    return [node, iso(s.start_s), iso(s.end_s), s.start_s, s.end_s, s.minutes,
            s.missing_minutes, s.partial_minutes, s.coverage, s.it_kwh, s.meter_kwh,
            s.mean_it_w, s.event_minutes]


def to_csv(report: EnergyReport, table: str = "hours") -> str:
    """One table of the report as CSV with a header row (columns: docs/energy.md): ``hours``,
    ``days``, ``nodes`` (the window's totals), ``events``, ``gaps``, or one of the ledger's
    (``gpus``, ``gpu_hours``, ``gpu_days``, ``work``, ``work_lost``). Full precision; an
    empty cell is a value the inputs do not have."""
    if table not in TABLES:
        raise ReportError(f"--table must be one of {', '.join(TABLES)}, got {table!r}")
    rows: list[Sequence[object]] = []
    if table in ("hours", "days", "nodes"):
        header: Sequence[str] = _SPAN_COLUMNS
        for n in report.nodes:
            spans = {"hours": n.hours, "days": n.days, "nodes": [n.total]}[table]
            rows.extend(_span_row(n.node, s) for s in spans)
    elif table in LEDGER_TABLES:
        header, rows = ledger_table(report, table)
    elif table == "gaps":
        header = ("node", "start", "end", "start_s", "end_s", "minutes")
        rows = [[n.node, iso(g.start_s), iso(g.end_s), g.start_s, g.end_s, g.minutes]
                for n in report.nodes for g in n.gaps]
    else:
        header = _EVENT_COLUMNS
        for x in report.events:
            h = x.history
            d = _event_json(x) | {
                "history_it_kwh": None if h is None else h.it_kwh,
                "history_meter_kwh_modelled": None if h is None else h.meter_kwh,
                "history_coverage": None if h is None else h.coverage,
                "work_lost": work_summary(x.work)}
            rows.append([d[k] for k in _EVENT_COLUMNS])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return out.getvalue()


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    text = iso(t) or "-"
    return text.replace("T", " ").removesuffix("Z")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _span_cells(node: str, s: Span, label: str) -> list[str]:
    return [node, label, f"{s.minutes}", f"{s.missing_minutes}", f"{s.coverage:.1%}",
            _f(s.it_kwh), _f(s.meter_kwh), _f(s.mean_it_w, 1), f"{s.event_minutes:.1f}"]


_SPAN_HEADER = ("node", "UTC", "minutes", "missing", "covered", "IT kWh", "meter kWh (modelled)",
                "mean IT W", "event min")


def to_markdown(report: EnergyReport) -> str:
    """The report as a readable Markdown document with tables."""
    out = [f"# Energy report: {_when(report.from_s)} to {_when(report.to_s)} UTC", "",
           f"Generated {_when(report.generated_at_s)} UTC by gridtao. Times are UTC; the "
           "window is [from, to). Energy at IT is measured; energy at the meter is modelled "
           "(facility model), not metered.", ""]
    if report.warnings:
        out += ["## Warnings", ""] + [f"- {w}" for w in report.warnings] + [""]
    out += ["## Energy by node", ""]
    out += _table(_SPAN_HEADER, (_span_cells(n.node, n.total, "window") for n in report.nodes))
    out += ["", "Covered: share of the window's seconds the history holds; missing: minutes "
            "with no row (nothing is filled in).", "", "## Energy by hour", ""]
    out += _table(_SPAN_HEADER, (_span_cells(n.node, s, _when(s.start_s)[:16])
                                 for n in report.nodes for s in n.hours))
    out += ["", "## Energy by day", ""]
    out += _table(_SPAN_HEADER, (_span_cells(n.node, s, _when(s.start_s)[:10])
                                 for n in report.nodes for s in n.days))
    out += ["", "## Gaps in the history", ""]
    gaps = [[n.node, _when(g.start_s), _when(g.end_s), f"{g.minutes}"]
            for n in report.nodes for g in n.gaps]
    out += (_table(("node", "from", "to", "minutes"), gaps) if gaps
            else ["None: every minute of the window has a row."])
    by_gpu, lost, per_unit = ledger_markdown(report, _when)
    out += ["", "## Energy by GPU", "", *by_gpu, "", "## Events", ""]
    if report.events:
        out += _table(
            ("node", "id", "kind", "start", "end", "IT drawn kWh", "IT not drawn kWh",
             "meter drawn kWh", "meter not drawn kWh", "method", "history IT kWh", "work lost",
             "note"),
            ([x.event.node or "-", x.event.event_id, x.event.kind, _when(x.event.start_s),
              _when(x.event.end_s), _f(x.it_drawn_kwh, 4), _f(x.it_not_drawn_kwh, 4),
              _f(x.meter_drawn_kwh, 4), _f(x.meter_not_drawn_kwh, 4), x.method or "-",
              "-" if x.history is None else _f(x.history.it_kwh, 4),
              work_summary(x.work), _event_note(x)] for x in report.events))
        out += ["", "IT and meter figures are the agent's event_energy records; not drawn = "
                "reference - drawn (negative: drew more than the reference); events that "
                "overlapped each measure the node over their own span (note), so their not "
                "drawn figures overlap and do not add up. History IT kWh: "
                "the minute history over the event's span (minute resolution). Work lost: "
                "measured from the work sources' counters in the history (below)."]
        out += ["", "### Work lost by event", "", *lost]
    else:
        out += ["No event in the window" + ("." if report.trails else
                                            ": no audit trail was read.")]
    out += ["", "## Energy per token and per sample", "", *per_unit, "", "## Audit trail", ""]
    if report.trails:
        out += _table(("files", "node", "chain", "records", "lost (gap records)"),
                      ([", ".join(c.files), c.node or "-",
                        "intact" if c.intact else f"BROKEN at {c.problem}", f"{c.records}",
                        f"{c.lost_records}"] for c in report.trails))
    else:
        out += ["None read."]
    out += [f"- {n}" for n in report.notes]
    out += ["", "## Method and uncertainty", ""]
    out += [f"- **{topic}**: {text}" for topic, text in method_lines(report)]
    return "\n".join(out) + "\n"


def _event_note(x: EventEntry) -> str:
    notes = []
    if x.event.energy is None:
        notes.append("no event_energy record" if x.event.source == "island"
                     else "tier 2 event: no event_energy record (no reference)")
    if x.partly_outside:
        notes.append("runs past the window")
    if x.event.end_s is None:
        notes.append("no end in the trail" if x.event.restarted_at_s is None else
                     f"no end in the trail; over by the agent's restart at "
                     f"{_when(x.event.restarted_at_s)}")
    if not x.event.verified:
        notes.append("UNVERIFIED (chain broken)")
    overlapped = _overlapped(x)
    if overlapped:
        notes.append(f"overlapped {', '.join(overlapped)}: do not add their not drawn")
    return "; ".join(notes) or "-"


def _overlapped(x: EventEntry) -> list[str]:
    """The events ``x``'s energy record says were in force with it (none: none, or no record)."""
    value = x.event.energy.get("overlapped") if x.event.energy is not None else None
    return [str(v) for v in value] if isinstance(value, list) else []


def dumps(report: EnergyReport) -> str:
    """:func:`to_json` as text (indented, newline-terminated)."""
    return json.dumps(to_json(report), indent=1) + "\n"
