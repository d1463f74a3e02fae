"""After a crash with no usable journal: which limits found below the operator's are the agent's.

NVML does not say who set a power limit. When the journal is off, missing or unreadable, a
restarted agent that finds GPUs below their defaults cannot tell an operator's ``nvidia-smi -pl``
from its own caps left by a crash. It never guesses: it asks its audit trail (the hash-chained
record of every run, ``records/audit.py``), the second witness the agent keeps.

The caps are the agent's own, and the limits that run would have restored are put back (the
``initial_limits_mw`` of its ``agent_start``, updated by any ``limit_changed_outside`` after it),
when the trail's last run record for this node is an ``agent_start`` with no ``agent_stop``
after it (that run never stopped: its caps may still be on the GPUs), the GPU (by UUID) is one
that run served, and the limit now is below the one that run would have restored (the run
lowered it, and would have raised it again on a clean stop). A GPU at or above what
that run found is left as it is. With no trail, a trail whose last run stopped cleanly, or a GPU
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

__all__ = ["Witness", "last_run", "witness_limits"]

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


def last_run(path: str | os.PathLike[str]
             ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The trail's last ``agent_start`` or ``agent_stop`` record (None when there is none, or
    no trail) and the ``limit_changed_outside`` records after it, newest first. Unparsable
    lines (a torn last write) are skipped."""
    outside: list[dict[str, Any]] = []
    for file in _trail_files(Path(path)):
        try:
            for line in _lines_backward(file):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(rec, dict):
                    continue
                if rec.get("kind") in _RUN_KINDS:
                    return rec, outside
                if rec.get("kind") == _OUTSIDE:
                    outside.append(rec)
        except FileNotFoundError:
            continue
    return None, outside


def witness_limits(audit_path: str | os.PathLike[str] | None, *, node_id: str,
                   uuids: Sequence[str], found_mw: Sequence[int]) -> Witness:
    """Per GPU (``uuids``, ``found_mw`` now), the limit to restore that the trail at
    ``audit_path`` proves the agent's to undo (see the module docstring)."""
    leave = tuple(None for _ in uuids)
    if audit_path is None:
        return Witness(leave, "no audit trail to say whose they are")
    try:
        rec, outside = last_run(audit_path)
    except OSError as e:
        return Witness(leave, f"the audit trail cannot be read ({e.strerror or e})")
    if rec is None:
        return Witness(leave, "the audit trail holds no earlier run")
    if rec["kind"] == "agent_stop":
        return Witness(leave, "the last run stopped cleanly (its limits were restored)")
    fields = rec.get("fields") or {}
    if fields.get("node") != node_id:
        return Witness(leave, "the audit trail's last run was another node's")
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
    return Witness(limits, f"the audit trail shows run pid {fields.get('pid', '?')} started "
                           "and never stopped")
