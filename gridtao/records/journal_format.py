"""The state journal's file: what it holds, its JSON format, and reading it back.

The journal (one small JSON file, written by :class:`gridtao.records.journal.Journal`) holds the
limits found by the *first* run, the events being held (enough to re-create each one exactly:
target, baseline, the per-GPU draw its caps were cut from, and when it ends) and a heartbeat
(``alive_wall``) that dates a crash.

Format: one JSON object, ``version`` :data:`VERSION` (any other is refused), indented, ending in
a newline; no NaN or infinity. Units: power in mW (limits and caps integers), times Unix
seconds. Invariants checked on reading: ``initial_limits_mw`` and each event's ``basis_mw`` and
``caps_mw`` hold one value per GPU of ``gpu_uuids``; every number is finite.

Pure data and parsing, no state: every function here may be called from any thread.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridtao.errors import GridtaoError

__all__ = [
    "VERSION",
    "JournalError",
    "JournalEvent",
    "JournalState",
    "from_json",
    "load_journal",
    "to_json",
]

VERSION = 1


class JournalError(GridtaoError):
    """The journal cannot be used (locked by another agent, unreadable, unwritable)."""


@dataclass(frozen=True)
class JournalEvent:
    """One event being held. Power in mW; times Unix seconds.

    ``basis_mw`` is the per-GPU draw the event's caps were cut from; ``hold_until_wall`` is when
    its duration ends (dispatch) or its minimum hold ends (frequency); None: no end of its own.
    ``started_wall`` is when the island acted on it; ``commanded`` whether that wrote a new
    limit (False: a deeper event already held the GPUs, a dry run, or no write landed, and its
    acks said ``commanded_at`` null); ``received_wall`` when its trigger came (None in a journal
    written before it was kept); ``reached_wall`` and ``reached_power_w`` (W) when and at what
    measured power the node reached its target band (None: not yet). The event's acks after a
    restart say what its sender was told before it.
    """

    event_id: str
    kind: str
    target_mw: float
    baseline_mw: float
    basis_mw: tuple[float, ...]
    caps_mw: tuple[int, ...]
    started_wall: float
    hold_until_wall: float | None
    received_wall: float | None = None
    reached_wall: float | None = None
    reached_power_w: float | None = None
    commanded: bool = True


@dataclass(frozen=True)
class JournalState:
    """What the journal file holds. ``alive_wall`` is the last heartbeat of the writing run."""

    node: str
    gpu_uuids: tuple[str, ...]
    initial_limits_mw: tuple[int, ...]
    first_started_wall: float
    alive_wall: float
    pid: int = 0
    events: tuple[JournalEvent, ...] = ()
    safe_mode: str | None = None
    version: int = VERSION
    #: The run stopped cleanly (limits restored) but could not remove its journal (a state
    #: folder it may no longer change): the next start takes it for no crash.
    stopped: bool = False


def _event_to_json(ev: JournalEvent) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ev.event_id, "kind": ev.kind, "target_mw": ev.target_mw,
        "baseline_mw": ev.baseline_mw, "basis_mw": list(ev.basis_mw), "caps_mw": list(ev.caps_mw),
        "started_wall": ev.started_wall, "hold_until_wall": ev.hold_until_wall,
    }
    # Written only when known or not the default, as a journal without them is read
    for key in ("received_wall", "reached_wall", "reached_power_w"):
        if getattr(ev, key) is not None:
            body[key] = getattr(ev, key)
    if not ev.commanded:
        body["commanded"] = False
    return body


def to_json(state: JournalState) -> bytes:
    body = {
        "version": state.version, "node": state.node, "pid": state.pid,
        "gpu_uuids": list(state.gpu_uuids), "initial_limits_mw": list(state.initial_limits_mw),
        "first_started_wall": state.first_started_wall, "alive_wall": state.alive_wall,
        "safe_mode": state.safe_mode, "events": [_event_to_json(e) for e in state.events],
    }
    if state.stopped:
        body["stopped"] = True
    return json.dumps(body, indent=1, allow_nan=False).encode("utf-8") + b"\n"


def _num(d: dict[str, Any], key: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{key} must be a finite number")
    return float(v)


def _optional_num(d: dict[str, Any], key: str) -> float | None:
    """``d[key]`` as :func:`_num` reads it, None when absent or null."""
    return None if d.get(key) is None else _num(d, key)


def _flag(d: dict[str, Any], key: str) -> bool:
    """``d[key]``, true or false; true when absent (what a journal without the key meant)."""
    v = d.get(key, True)
    if not isinstance(v, bool):
        raise ValueError(f"{key} must be true or false")
    return v


def _str(d: dict[str, Any], key: str) -> str:
    v = d[key]
    if not isinstance(v, str):
        raise ValueError(f"{key} must be a string")
    return v


def _list(d: dict[str, Any], key: str) -> list[Any]:
    v = d[key]
    if not isinstance(v, list):
        raise ValueError(f"{key} must be a list")
    return v


def from_json(data: bytes) -> JournalState:
    """Parse a journal. Raises ``ValueError`` (or ``KeyError``) naming what is wrong."""
    d = json.loads(data)
    if not isinstance(d, dict):
        raise ValueError("top level must be an object")
    if d.get("version") != VERSION:
        raise ValueError(f"unsupported version {d.get('version')!r}")
    uuids = tuple(str(u) for u in _list(d, "gpu_uuids"))
    limits = tuple(int(_num({"v": v}, "v")) for v in _list(d, "initial_limits_mw"))
    if len(limits) != len(uuids):
        raise ValueError("initial_limits_mw and gpu_uuids differ in length")
    events = []
    for raw in _list(d, "events"):
        if not isinstance(raw, dict):
            raise ValueError("events must be objects")
        basis = tuple(_num({"v": v}, "v") for v in _list(raw, "basis_mw"))
        caps = tuple(int(_num({"v": v}, "v")) for v in _list(raw, "caps_mw"))
        if len(basis) != len(uuids) or len(caps) != len(uuids):
            raise ValueError(f"event {raw.get('id')!r}: one value per GPU expected")
        events.append(JournalEvent(
            event_id=_str(raw, "id"), kind=_str(raw, "kind"), target_mw=_num(raw, "target_mw"),
            baseline_mw=_num(raw, "baseline_mw"), basis_mw=basis, caps_mw=caps,
            started_wall=_num(raw, "started_wall"),
            hold_until_wall=_optional_num(raw, "hold_until_wall"),
            received_wall=_optional_num(raw, "received_wall"),
            reached_wall=_optional_num(raw, "reached_wall"),
            reached_power_w=_optional_num(raw, "reached_power_w"),
            commanded=_flag(raw, "commanded"),
        ))
    safe = d.get("safe_mode")
    return JournalState(
        node=_str(d, "node"), gpu_uuids=uuids, initial_limits_mw=limits,
        first_started_wall=_num(d, "first_started_wall"), alive_wall=_num(d, "alive_wall"),
        pid=int(_num(d, "pid")), events=tuple(events),
        safe_mode=safe if isinstance(safe, str) else None, stopped=d.get("stopped") is True,
    )


def load_journal(path: str | os.PathLike[str]) -> JournalState | None:
    """The journal at ``path``, or None if there is none (the last run stopped cleanly).
    Raises :class:`JournalError` if it exists but cannot be read or parsed."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise JournalError(f"journal {p}: cannot read: {e.strerror or e}") from None
    try:
        return from_json(data)
    except (ValueError, KeyError, TypeError) as e:
        raise JournalError(f"journal {p}: unreadable ({type(e).__name__}: {e})") from None

