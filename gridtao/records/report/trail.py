"""One audit trail read for the energy report: its hash chain verified, its records read and
the grid events they tell of assembled (:func:`read_trail`).

* **Events** come from the audit trail: the island's events (``event_started``,
  ``event_released``, ``event_ended`` and the ``event_energy`` figures the agent measured from
  the GPUs' energy counters) and tier 2's demand-response events (``dr_scheduled``,
  ``dr_state``, ``dr_cancelled``) with their ``event_energy`` (kind ``dr``: drawn against
  tier 2's frozen reference over the ramp, hold and recovery). Every event also gets the
  minute history's figures over its span (minute resolution) where the node's history is given.

Units: times Unix seconds (UTC) as the records give them; powers W (the records' mW / 1000);
an ``event_energy`` record's fields kept as they are (J).
Threads: :func:`read_trail` blocks on reading its files and shares no state; call it from any
one thread (the CLI's main thread does).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridtao.records.audit_verify import chain_order_key, verify_files
from gridtao.records.report.common import ReportError

__all__ = ["TrailCheck", "TrailEvent", "read_trail"]

#: States of a demand-response event in which the node is asked to draw less.
_DR_RUNNING = ("ramping", "active", "recovering")
_DR_OVER = ("done", "ended")
_AUDIT_NAME = re.compile(r"^audit-(.+)\.jsonl(\.\d{12})?$")


# ---- the audit trail ---------------------------------------------------------------------


@dataclass
class TrailEvent:
    """One event as the audit trail tells it (see the module docstring).

    ``source``: ``island`` (an event whose caps the safety island wrote) or ``tier 2`` (a
    demand-response event tier 2 tracked). ``start_s``/``end_s``: Unix s (caps written and the
    island's end; for ``tier 2``: the ramp's start and the recovery's end), from
    ``event_energy`` where there is one, else the trail's records (for ``tier 2``: of its
    leaving ``scheduled`` and of its end); None when the trail does not say.
    ``energy``: the ``event_energy`` record's fields (J), None without one. ``verified``: every
    record it was read from lies before any break in the hash chain."""

    node: str | None
    event_id: str
    kind: str
    source: str
    level: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    baseline_w: float | None = None
    target_w: float | None = None
    why_ended: str | None = None
    energy: Mapping[str, Any] | None = None
    verified: bool = True
    scheduled_start_s: float | None = None
    cancelled_by: str | None = None
    restarted_at_s: float | None = None

    @property
    def latest_end_s(self) -> float:
        """When it was over at the latest (Unix s): its end; without one, the agent's next
        start (``restarted_at_s``: an event not held again after a restart was over by then);
        without either, it may still run (infinity)."""
        if self.end_s is not None:
            return self.end_s
        return self.restarted_at_s if self.restarted_at_s is not None else math.inf

    def overlaps(self, from_s: float, to_s: float) -> bool:
        """Whether the event ran in ``[from_s, to_s)``."""
        if self.start_s is None:
            return False
        return self.start_s < to_s and self.latest_end_s > from_s


@dataclass(frozen=True)
class TrailCheck:
    """What reading one audit trail found. ``intact``: the hash chain holds across ``files``
    (:func:`gridtao.records.audit_verify.verify_files`); else ``problem`` is its first bad
    ``FILE:LINE: reason`` and records from there on are not vouched for (``verified`` of
    ``records`` are). ``starts_after``: the rotated file the first given one continues
    (older records not given). ``lost_records``: records the agent dropped, as its ``gap``
    records count them. ``unreadable_lines``: lines that are not JSON records (skipped)."""

    files: tuple[str, ...]
    node: str | None
    intact: bool
    records: int
    verified: int
    problem: str | None
    starts_after: str | None
    lost_records: int
    unreadable_lines: int


def read_trail(paths: Sequence[str | os.PathLike[str]]) -> tuple[TrailCheck, list[TrailEvent]]:
    """Verify and read one audit trail (its live file and rotated files, any order) and
    assemble its events in the order they started. A broken chain is not an error: the
    records are still read, and those from the first bad one on are marked unverified.
    Raises :class:`ReportError` for a file that cannot be read."""
    try:
        check = verify_files(paths)
    except OSError as e:
        raise ReportError(f"{e.filename or paths[0]}: cannot read: {e.strerror or e}") from None
    files = sorted((Path(p) for p in paths), key=chain_order_key)
    records: list[tuple[bool, dict[str, Any]]] = []
    index = unreadable = 0
    try:
        for path in files:
            with open(path, "rb") as f:
                for raw in f.read().split(b"\n"):
                    if not raw:
                        continue
                    verified = check.ok or index < check.records
                    index += 1
                    try:
                        rec = json.loads(raw)
                    except (ValueError, RecursionError):
                        unreadable += 1
                        continue
                    if (not isinstance(rec, dict) or not isinstance(rec.get("fields"), dict)
                            or not isinstance(rec.get("kind"), str)):
                        unreadable += 1
                        continue
                    records.append((verified, rec))
    except OSError as e:
        raise ReportError(f"{e.filename or ''}: cannot read: {e.strerror or e}") from None
    node, events, lost = _assemble(records)
    if node is None:  # no agent_start in the files given: the agent's file name says
        match = _AUDIT_NAME.match(files[0].name) if files else None
        node = match.group(1) if match else None
    for ev in events:
        ev.node = ev.node or node
    problem = None if check.ok else f"{check.file}:{check.line}: {check.reason}"
    verified_count = sum(1 for ok, _ in records if ok)
    return (TrailCheck(tuple(str(p) for p in files), node, check.ok, len(records),
                       verified_count, problem, check.starts_after, lost, unreadable), events)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _attach_energy(ev: TrailEvent, fields: Mapping[str, Any]) -> None:
    """An ``event_energy`` record's figures on its event: its span (caps written to the end of
    the release; a demand-response event's ramp start to its recovery's end) replaces the
    coarser one of the state records. A demand-response event's reference draw (W) is its
    ``it_reference_j`` over its duration."""
    ev.energy = dict(fields)
    ev.start_s = _number(fields.get("started_at")) or ev.start_s
    ev.end_s = _number(fields.get("ended_at")) or ev.end_s
    if ev.source == "tier 2":
        reference_j, duration = (_number(fields.get("it_reference_j")),
                                 _number(fields.get("duration_s")))
        if reference_j is not None and duration:
            ev.baseline_w = reference_j / duration
        ev.why_ended = ev.why_ended or ("cancelled" if ev.cancelled_by else "done")


def _assemble(records: Sequence[tuple[bool, dict[str, Any]]]
              ) -> tuple[str | None, list[TrailEvent], int]:
    """The trail's node (its first ``agent_start``), its events, and the records it says were
    lost (``gap``)."""
    node: str | None = None
    events: list[TrailEvent] = []
    island: dict[str, TrailEvent] = {}
    dr: dict[str, TrailEvent] = {}
    lost = 0

    def dr_event(event_id: str) -> TrailEvent:
        ev = dr.get(event_id)
        if ev is None:  # scheduled before the files given
            ev = dr[event_id] = TrailEvent(node, event_id, "dr", "tier 2")
            events.append(ev)
        return ev

    def island_event(event_id: str, kind: str | None) -> TrailEvent:
        ev = island.get(event_id)
        if ev is None:  # its start is not in the given files
            ev = island[event_id] = TrailEvent(node, event_id, kind or "unknown", "island")
            events.append(ev)
        return ev

    for verified, rec in records:
        kind, fields, t = rec["kind"], rec["fields"], _number(rec.get("t"))
        if kind == "agent_start":
            node = node or _text(fields.get("node"))
            for prior in events:  # a run ended; what it did not end, it held no longer
                if (prior.end_s is None and prior.start_s is not None
                        and prior.restarted_at_s is None):
                    prior.restarted_at_s = t
            continue
        if kind == "recovery":  # ...unless the island holds it again after the crash
            restored = fields.get("restored")
            again = {_text(r.get("event")) for r in restored if isinstance(r, dict)
                     } if isinstance(restored, list) else set()
            for prior in events:
                if prior.event_id in again and prior.end_s is None:
                    prior.restarted_at_s = None
            continue
        if kind == "gap":
            lost += int(_number(fields.get("dropped")) or 0)
            continue
        event_id = _text(fields.get("event"))
        if event_id is None:
            continue
        ev: TrailEvent
        if kind == "event_started":
            ev = TrailEvent(node, event_id, _text(fields.get("kind")) or "unknown", "island",
                            level=_text(fields.get("level")))
            ev.start_s = _number(fields.get("commanded_at")) or t
            baseline = _number(fields.get("baseline_mw"))
            target = _number(fields.get("target_mw"))
            ev.baseline_w = None if baseline is None else baseline / 1000.0
            ev.target_w = None if target is None else target / 1000.0
            island[event_id] = ev
            events.append(ev)
        elif kind in ("event_released", "event_ended"):
            ev = island_event(event_id, None)
            if kind == "event_ended":
                ev.end_s = ev.end_s if ev.energy is not None else t
            ev.why_ended = _text(fields.get("why")) or ev.why_ended
        elif kind == "event_energy" and fields.get("kind") == "dr":
            ev = dr_event(event_id)
            _attach_energy(ev, fields)
        elif kind == "event_energy":
            known = island.get(event_id)
            if known is None or known.energy is not None:  # its start is not in the files
                known = TrailEvent(node, event_id, _text(fields.get("kind")) or "unknown",
                                   "island")
                island[event_id] = known
                events.append(known)
            ev = known
            _attach_energy(ev, fields)
        elif kind == "dr_scheduled":
            ev = TrailEvent(node, event_id, "dr", "tier 2")
            ev.scheduled_start_s = _number(fields.get("start_at"))
            dr[event_id] = ev
            events.append(ev)
        elif kind in ("dr_state", "dr_cancelled"):
            ev = dr_event(event_id)
            if kind == "dr_cancelled":
                ev.cancelled_by = _text(fields.get("by"))
            elif fields.get("to") in _DR_RUNNING and ev.start_s is None:
                ev.start_s = t
            elif fields.get("to") in _DR_OVER and ev.end_s is None and ev.start_s is not None:
                ev.end_s = t
            if ev.end_s is not None:
                ev.why_ended = "cancelled" if ev.cancelled_by else "done"
        else:
            continue
        ev.verified = ev.verified and verified
        if ev.node is None:
            ev.node = node
    events.sort(key=lambda e: (math.inf if e.start_s is None else e.start_s))
    return node, events, lost
