"""The energy report assembled (:func:`build_report`): per node the minute history's energy
over the window, by hour and by day, and its gaps; each GPU's energy and each work source's
energy per unit (from the history's ledger tables); each event of the audit trails that ran in
the window with the agent's figures, the history's and the work it lost; the warnings and notes
a reader needs.

Units: times Unix seconds (UTC); energies kWh in the report (J in the records read).
Threads: pure computation over values the caller has read; no shared state, any thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gridtao.records.report.common import DAY_S, HOUR_S, J_PER_KWH, ReportError, iso
from gridtao.records.report.gpus import GpuEnergy, GpuMinute, gpu_energy
from gridtao.records.report.minutes import (
    Facility,
    Minute,
    NodeEnergy,
    Span,
    _buckets,
    _minute_energies,
    _Minutes,
)
from gridtao.records.report.trail import TrailCheck, TrailEvent, _number, _text
from gridtao.records.report.work import (
    Efficiency,
    EventWork,
    WorkMinute,
    efficiencies,
    work_lost,
)

__all__ = ["EnergyReport", "EventEntry", "Ledger", "Written", "build_report",
           "unmeasured_warning"]


@dataclass(frozen=True)
class Ledger:
    """One node's ledger rows read from its history (GPU minutes and work minutes), over the
    range :func:`~gridtao.records.report.minutes.history_range` gives."""

    gpus: Sequence[GpuMinute] = ()
    work: Sequence[WorkMinute] = ()


# ---- the report --------------------------------------------------------------------------


@dataclass(frozen=True)
class EventEntry:
    """One event in the report (kWh). ``it_*`` and ``meter_*`` are the agent's own
    ``event_energy`` figures (None without one); ``history_*`` the minute history's over the
    event's span (minute resolution; None without the node's history or an end).
    ``partly_outside``: the event began before the window or ended after it; its figures are
    the whole event's. ``work``: the work it lost (None: the node's history was not read)."""

    event: TrailEvent
    partly_outside: bool
    it_drawn_kwh: float | None
    it_reference_kwh: float | None
    it_not_drawn_kwh: float | None
    meter_drawn_kwh: float | None
    meter_not_drawn_kwh: float | None
    method: str | None
    history: Span | None
    work: EventWork | None = None


@dataclass(frozen=True)
class EnergyReport:
    """Everything one report says (see docs/energy.md): the window ``[from_s, to_s)``, the
    facility model's parameters, the read-back period the agent samples at (s), per node the
    history's energy, the events, the audit trails read, and the warnings."""

    from_s: float
    to_s: float
    generated_at_s: float
    facility: Mapping[str, float | str]
    read_back_period_s: float
    nodes: list[NodeEnergy]
    events: list[EventEntry]
    trails: list[TrailCheck]
    gpus: list[GpuEnergy] = field(default_factory=list)
    efficiency: list[Efficiency] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def chain_broken(self) -> bool:
        """Some audit trail's hash chain does not hold."""
        return any(not t.intact for t in self.trails)


def _kwh(fields: Mapping[str, Any] | None, key: str) -> float | None:
    value = None if fields is None else _number(fields.get(key))
    return None if value is None else value / J_PER_KWH


class Written(Protocol):
    """Minutes ``[from_s, to_s)`` a history holds that ``origin`` wrote, not an agent
    measuring them (:class:`gridtao.history.WrittenSpan`)."""

    @property
    def from_s(self) -> int: ...

    @property
    def to_s(self) -> int: ...

    @property
    def origin(self) -> str: ...


def unmeasured_warning(node: str, span: Written, from_s: float, to_s: float) -> str:
    """The report's warning for ``span`` of ``node``'s history, clipped to the window."""
    a, b = max(from_s, span.from_s), min(to_s, span.to_s)
    return (f"node {node}: the history's minutes {iso(a)} .. {iso(b)} were {span.origin}, not "
            "measured by an agent: the energy shown for them is not measured")


#: How much more of the window the GPUs' energy may cover than the node's IT history before
#: the report says why the two differ.
COVERAGE_GAP = 0.01


def _bridged_notes(nodes: Sequence[NodeEnergy], gpus: Sequence[GpuEnergy]) -> list[str]:
    """Why a node's GPUs cover more of the window than its IT history: the energy counters
    carried on while the agent was down, and the per-GPU figures count it."""
    out = []
    for node in nodes:
        own = [g.total for g in gpus if g.node == node.node and g.device == "gpu"]
        expected = math.fsum(t.expected_s for t in own)
        if not own or expected <= 0:
            continue
        covered = math.fsum(t.covered_s for t in own) / expected
        if covered > node.total.coverage + COVERAGE_GAP and any(t.bridged_s > 0 or t.mixed_s > 0
                                                                for t in own):
            out.append(f"node {node.node}: its GPUs' energy covers {covered:.0%} of the window "
                       f"and its IT history {node.total.coverage:.0%}: while the agent was "
                       "down the GPUs' energy counters went on counting, and the per-GPU "
                       "figures count it (bridged), where the node's minutes hold only what "
                       "the agent sampled; so the GPUs' kWh can sum above the node's IT kWh")
    return out


def build_report(from_s: float, to_s: float, *,
                 histories: Sequence[tuple[str, str, Iterable[Minute]]],
                 trails: Sequence[tuple[TrailCheck, Sequence[TrailEvent]]],
                 facility: Facility, settle_at: str, read_back_period_s: float,
                 generated_at_s: float, notes: Sequence[str] = (),
                 ledgers: Mapping[str, Ledger] | None = None,
                 warnings: Sequence[str] = ()) -> EnergyReport:
    """The report over ``[from_s, to_s)`` (Unix s). ``histories``: per node (name, file, its
    rows, which may reach beyond the window: :func:`history_range`); ``trails``: what
    :func:`read_trail` gave; ``ledgers``: per node its GPU and work minutes (same range). With
    one history and one trail they belong together; else events go to the history of their
    trail's node. ``warnings``: the caller's, first (e.g. :func:`unmeasured_warning`).
    Raises :class:`ReportError` for an empty window."""
    if not (math.isfinite(from_s) and math.isfinite(to_s) and to_s > from_s):
        raise ReportError(f"the window is empty: --to ({to_s:g}) must be after --from "
                          f"({from_s:g})")
    warnings = list(warnings)
    notes = list(notes)
    minutes: dict[str, _Minutes] = {}
    nodes: list[NodeEnergy] = []
    for name, source, rows in histories:
        m = _Minutes(_minute_energies(rows, facility))
        minutes[name] = m
        total = m.span(from_s, to_s)
        nodes.append(NodeEnergy(
            name, source, total, [m.span(a, b) for a, b in _buckets(from_s, to_s, HOUR_S)],
            [m.span(a, b) for a, b in _buckets(from_s, to_s, DAY_S)], m.gaps(from_s, to_s)))
        if total.missing_minutes or total.partial_minutes:
            warnings.append(
                f"node {name}: the history misses {total.missing_minutes} of the window's "
                f"minutes and covers {total.partial_minutes} only in part "
                f"({total.coverage:.2%} of the window covered); energy is what was measured, "
                "nothing is filled in")
    ledgers = dict(ledgers or {})
    gpus: list[GpuEnergy] = []
    per_unit: list[Efficiency] = []
    for name, node_ledger in ledgers.items():
        gpus += gpu_energy(name, node_ledger.gpus, from_s, to_s)
        per_unit += efficiencies(name, node_ledger.work, node_ledger.gpus, from_s, to_s,
                                 meter_factor=facility.settled_meter_per_it_w)
    notes += _bridged_notes(nodes, gpus)
    single = len(histories) == 1 and len(trails) == 1
    only = next(iter(minutes.values())) if single else None
    only_ledger = ledgers.get(histories[0][0]) if single else None
    entries: list[EventEntry] = []
    for check, events in trails:
        if not check.intact:
            warnings.append(
                f"audit trail {check.files[0]}: the hash chain is broken at {check.problem}; "
                f"{check.records - check.verified} of its {check.records} records are not "
                "vouched for, and events read from them are marked unverified")
        if check.lost_records:
            warnings.append(f"audit trail {check.files[0]}: the agent recorded losing "
                            f"{check.lost_records} records (gap records): events may be "
                            "missing or incomplete")
        if check.unreadable_lines:
            warnings.append(f"audit trail {check.files[0]}: {check.unreadable_lines} lines "
                            "are not records and were skipped")
        if check.starts_after is not None:
            notes.append(f"audit trail {check.files[0]} continues {check.starts_after} "
                         "(not given): events that began in it are not reported")
        for ev in events:
            if not ev.overlaps(from_s, to_s) or ev.start_s is None:
                continue
            mine = only if only is not None else minutes.get(ev.node or "")
            history = (mine.span(ev.start_s, ev.end_s)
                       if mine is not None and ev.end_s is not None else None)
            outside = ev.start_s < from_s or ev.end_s is None or ev.end_s > to_s
            e = ev.energy
            ledger = only_ledger if single else ledgers.get(ev.node or "")
            spans = [(o.start_s, o.latest_end_s) for o in events
                     if o is not ev and o.start_s is not None]
            lost = (None if ledger is None
                    else work_lost(ev.start_s, ev.end_s, ledger.work, spans))
            entries.append(EventEntry(
                ev, outside, _kwh(e, "it_drawn_j"), _kwh(e, "it_reference_j"),
                _kwh(e, "it_not_drawn_j"), _kwh(e, "meter_drawn_j"),
                _kwh(e, "meter_not_drawn_j"),
                None if e is None else _text(e.get("method")), history, lost))
    entries.sort(key=lambda x: (x.event.start_s or 0.0, x.event.event_id))
    if any(x.partly_outside for x in entries):
        warnings.append("some events run past the window's edges: their figures are the "
                        "whole event's (marked)")
    params: dict[str, float | str] = {
        "losses_fraction": facility.losses_fraction, "cop": facility.cop,
        "cooling_tau_s": facility.cooling_tau_s, "fixed_w": facility.fixed_w,
        "settle_at": settle_at}
    return EnergyReport(from_s, to_s, generated_at_s, params, read_back_period_s, nodes,
                        entries, [c for c, _ in trails], gpus, per_unit, warnings, notes)
