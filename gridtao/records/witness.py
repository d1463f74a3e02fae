"""After a crash with no usable journal: which limits found below the operator's are the agent's.

NVML does not say who set a power limit. When the journal is off, missing or unreadable, a
restarted agent that finds GPUs below their defaults cannot tell an operator's ``nvidia-smi -pl``
from its own caps left by a crash. It never guesses: it asks its audit trail (the hash-chained
record of every run, ``records/audit.py``), the second witness the agent keeps.

The caps are the agent's own, and the limits that run would have restored are put back (the
``initial_limits_mw`` of its ``agent_start``, updated by any ``limit_changed_outside`` after it),
when the trail's last run of this node never stopped, or stopped without restoring every limit
(``agent_stop`` with ``restore_failed``), wrote limits (not a dry run) in this boot (a reboot
resets every limit set by software), the GPU (by UUID) is one that run served, and the limit
now is below the one that run would have restored. A GPU at or above that is left as it is.
With no trail, a trail whose last run stopped cleanly, another boot's or a dry run's, or a GPU
that run did not serve, the limits found are the operator's: left, and said at start.

The trail is read backward from its end (and the newest rotated file, if the live one holds no
run record), so the cost does not grow with the trail's length.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LastRun", "Witness", "last_run", "witness_limits"]

_RUN_KINDS = ("agent_start", "agent_stop")
_OUTSIDE = "limit_changed_outside"
_BLOCK = 64 * 1024


@dataclass(frozen=True)
class Witness:
    """What the trail vouches for. ``limits_mw``: per GPU the limit to restore (None: leave
    the found limit, not provably the agent's). ``reason``: one line for the log."""

    limits_mw: tuple[int | None, ...]
    reason: str

    @property
    def vouched(self) -> tuple[int, ...]:
        """Indices of the GPUs the trail vouches for."""
        return tuple(i for i, mw in enumerate(self.limits_mw) if mw is not None)


def _lines_backward(path: Path) -> Iterator[bytes]:
    """The file's lines, last first (a torn last line included: the caller skips it)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        tail = b""
        while end > 0:
            start = max(0, end - _BLOCK)
            f.seek(start)
            chunk = f.read(end - start) + tail
            end = start
            lines = chunk.split(b"\n")
            tail = lines[0]  # may continue in the block before
            yield from reversed(lines[1:])
        if tail:
            yield tail


def _trail_files(path: Path) -> list[Path]:
    """The live file, then the rotated ones, newest first."""
    rotated = sorted(path.parent.glob(f"{path.name}.[0-9]*"), reverse=True)
    return [path, *rotated]


@dataclass(frozen=True)
class LastRun:
    """The trail's last run of the agent: its ``agent_start`` record (None when the trail has
    none), its ``agent_stop`` (None when it never stopped), and the ``limit_changed_outside``
    records between them, newest first."""

    start: dict[str, Any] | None
    stop: dict[str, Any] | None
    outside: list[dict[str, Any]]


def _records_backward(path: Path) -> Iterator[dict[str, Any]]:
    """The trail's records, newest first, over the live file and the rotated ones; unparsable
    lines (a torn last write) are skipped."""
    for file in _trail_files(path):
        try:
            for line in _lines_backward(file):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    yield rec
        except FileNotFoundError:
            continue


def last_run(path: str | os.PathLike[str]) -> LastRun:
    """The trail's last run (see :class:`LastRun`): read backward to its ``agent_start``."""
    stop: dict[str, Any] | None = None
    outside: list[dict[str, Any]] = []
    for rec in _records_backward(Path(path)):
        kind = rec.get("kind")
        if kind == "agent_start":
            return LastRun(rec, stop, outside)
        if kind == "agent_stop":
            if stop is not None:  # a stop without a start after it: the trail is cut
                break
            stop = rec
        elif kind == _OUTSIDE:
            outside.append(rec)
    return LastRun(None, stop, outside)


def witness_limits(audit_path: str | os.PathLike[str] | None, *, node_id: str,
                   uuids: Sequence[str], found_mw: Sequence[int],
                   current_boot: str = "") -> Witness:
    """Per GPU (``uuids``, ``found_mw`` now), the limit to restore that the trail at
    ``audit_path`` proves the agent's to undo (see the module docstring); ``current_boot``:
    this boot's id (:func:`gridtao.clock.boot_id`)."""
    leave = tuple(None for _ in uuids)
    if audit_path is None:
        return Witness(leave, "no audit trail to say whose they are")
    try:
        run = last_run(audit_path)
    except OSError as e:
        return Witness(leave, f"the audit trail cannot be read ({e.strerror or e})")
    rec = run.start
    if rec is None:
        return Witness(leave, "the audit trail holds no earlier run")
    stopped = (run.stop.get("fields") or {}) if run.stop is not None else None
    if stopped is not None and not stopped.get("restore_failed"):
        return Witness(leave, "the last run stopped cleanly (its limits were restored)")
    fields = rec.get("fields") or {}
    if fields.get("node") != node_id:
        return Witness(leave, "the audit trail's last run was another node's")
    if fields.get("dry_run"):
        return Witness(leave, "the last run was a dry run (it wrote no limit)")
    if fields.get("boot_id") and fields["boot_id"] != current_boot:
        return Witness(leave, "the machine restarted since the last run (the driver reset its "
                              "limits)")
    outside = run.outside
    # What that run would have restored: the limits it started with (its journal's, after a
    # crash of its own), then any an operator set from outside while it ran.
    started: dict[str, int] = {}
    initial = fields.get("initial_limits_mw") or []
    for gpu, mw in zip(fields.get("gpus") or (), initial, strict=False):
        if isinstance(gpu, dict) and isinstance(gpu.get("uuid"), str) and isinstance(mw, int):
            started[gpu["uuid"]] = mw
    for change in reversed(outside):  # oldest first: the newest wins
        f = change.get("fields") or {}
        if f.get("uuid") in started and isinstance(f.get("to_mw"), int):
            started[f["uuid"]] = f["to_mw"]
    limits = tuple(
        started[u] if u in started and found < started[u] else None
        for u, found in zip(uuids, found_mw, strict=True)
    )
    how = ("stopped without restoring every limit" if stopped is not None
           else "started and never stopped")
    return Witness(limits, f"the audit trail shows run pid {fields.get('pid', '?')} {how}")
