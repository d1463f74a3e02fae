"""The safety island's watch for limits changed outside the agent, and their adoption.

:class:`OutsideWatch` holds the operations of :class:`~gridtao.safety.island.SafetyIsland` that
read every GPU's enforced limit back (:meth:`~OutsideWatch.refresh_enforced`) and, where a limit
moved with no write of the island's in between, make it that GPU's resting limit
(:meth:`~OutsideWatch.adopt_outside_limit`): an operator's ``nvidia-smi -pl`` is followed, never
written over in a loop. It is a base of ``SafetyIsland`` over
:class:`~gridtao.safety.core.IslandCore`, so these are plain methods of the island: the same
state and locks, no extra call layer.

Invariants (the island's, ``safety/island.py``): an adopted limit is clamped into the envelope;
an event in force keeps its cap where that is lower; a read never lands between a write and its
read-back (it is taken under the GPU's write lock and numbered there, so a later write wins);
once :meth:`~OutsideWatch.stop_watching` returned, nothing is adopted.

Threads: :meth:`~OutsideWatch.refresh_enforced` runs on the read-back worker thread
(gridtao/app/readback.py), never on tier 1's or the trigger path; it holds one GPU's write lock
at a time and ``_lock`` for the bookkeeping only. Power is in mW.
"""

from __future__ import annotations

import logging

from .core import IslandCore
from .latch import OutsideChange

__all__ = ["OutsideWatch"]

log = logging.getLogger("gridtao.safety")


class OutsideWatch(IslandCore):
    """Read-back and outside-change adoption of the island (see the module docstring)."""

    def refresh_enforced(self) -> list[OutsideChange]:
        """Read every GPU's enforced limit now, under its write lock (so a read never lands
        between a write and its read-back), so that a change made by another process shows in
        :meth:`enforced_mw`. A GPU that cannot be read keeps its last reading. Called from a
        worker thread about once a rearm period (gridtao/app/readback.py), never from tier 1: a
        slow driver call must not slow the control loop.

        A limit that differs from the one last read back, with no write of ours in between, was
        set by someone else: it becomes the GPU's resting limit (:meth:`adopt_outside_limit`)
        and is returned, so the caller can report it. It is never written over in a loop."""
        changes: list[OutsideChange] = []
        for index in range(len(self.envelope.default_mw)):
            with self._writer.gpu_lock(index):
                try:
                    mw = self._backend.enforced_limit_mw(index)
                except Exception:  # the read faults are tier 1's to report
                    continue
                last = self._writer.last_read_mw(index)
                seq = self._writer.note_read(index, mw)
                # Numbered under the GPU's lock: a write landing after this read must win.
                self._writes.note_enforced(index, mw, seq)
            # Checked after the read: once stop_watching() returned, no write of the agent's
            # own restore can be taken for someone else's.
            if last is not None and mw != last and self._watching:
                changes.append(self.adopt_outside_limit(index, last, mw))
        return changes

    def adopt_outside_limit(self, index: int, from_mw: int, to_mw: int) -> OutsideChange:
        """GPU ``index``'s limit was moved from ``from_mw`` to ``to_mw`` by someone else: that
        (clamped into the envelope) is its resting limit from now on, where events release it
        to and tier 1 raises it no higher. An event in force keeps its cap where that is lower
        (the grid commitment), written once by tier 1's next plan. In a ``default`` or ``hold``
        safe state the GPU rests at the new limit too; ``minimum`` keeps every GPU at its
        minimum until the safe state is left."""
        resting = self.envelope.clamp_all(
            [to_mw if i == index else r for i, r in enumerate(self._normal_mw)])[index]
        with self._lock:
            normal = list(self._normal_mw)
            normal[index] = resting
            self._normal_mw = tuple(normal)
            if self._mode is None or self._mode == "default":
                self._resting_mw = self._normal_mw
            elif self._mode == "hold":
                held = list(self._resting_mw)
                held[index] = resting
                self._resting_mw = tuple(held)
            in_event = bool(self._events)
        log.warning("GPU %d: limit changed outside the agent, %d -> %d mW: it rests there from "
                    "now on%s", index, from_mw, to_mw,
                    " (the event in force keeps its cap where lower)" if in_event else "")
        return OutsideChange(index, from_mw, to_mw, resting, in_event)

    def stop_watching(self) -> None:
        """From now on :meth:`refresh_enforced` only reads: the agent is about to write limits
        itself outside the island (restoring at stop), and must not take them for someone
        else's."""
        self._watching = False
