"""Test-side audit trails written by the real writer on a virtual clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gridtao.clock import VirtualClock
from gridtao.config.agent import AuditConfig
from gridtao.records.audit import AuditTrail

#: ``at(t, kind, fields)``: the record ``kind`` written ``t`` seconds after the trail's start.
At = Callable[[float, str, dict[str, object]], None]


@contextmanager
def virtual_trail(path: Path, t0: float, *, rotate_bytes: int | None = None) -> Iterator[At]:
    """An audit trail at ``path`` whose clock starts at Unix time ``t0``; closed on exit."""
    clock = VirtualClock(wall_offset=t0)
    cfg = AuditConfig(enabled=True, path=str(path))
    if rotate_bytes is not None:
        cfg = dataclasses.replace(cfg, rotate_bytes=rotate_bytes)
    trail = AuditTrail(cfg, clock=clock)
    trail.start()

    def at(t: float, kind: str, fields: dict[str, object]) -> None:
        clock.advance(t - clock.now())
        trail.record(kind, fields)

    try:
        yield at
    finally:
        trail.close()
