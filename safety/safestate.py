"""The safety island's safe states: entering, leaving and clearing them.

:class:`SafeStates` holds the operations of :class:`~gridtao.safety.island.SafetyIsland` that
lock tier 1 out and let it back in: :meth:`~SafeStates.enter_safe_state` (the watchdog, the
agent at a fault), :meth:`~SafeStates.leave_safe_state` (the controller is healthy again, with a
ramp back up) and :meth:`~SafeStates.clear_safe_state`. It is a base of ``SafetyIsland`` over
:class:`~gridtao.safety.core.IslandCore`, so these are plain methods of the island: no extra call
layer, the same state and locks.

Invariants (the island's, ``safety/island.py``): a safe state bumps the generation before its
writes are queued, so no tier 1 plan made earlier lands; its limits lie in the envelope
(``default``: the resting limits, never above the events in force; ``hold``: the limits last
read back; ``minimum``: every GPU's minimum); leaving it never raises a GPU in one step: GPUs
held below their resting limits ramp back at ``release_rate_per_s`` through an exit event.

Threads: called from the watchdog's and the agent's threads. ``_cmd_lock`` serializes these
writes with triggers and event ends; ``_lock`` is held for the bookkeeping only, never across a
wait on the GPUs. Power is in mW, times in clock seconds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .core import IslandCore
from .latch import SAFE_MODES, SafeMode

if TYPE_CHECKING:
    from .latch import Activation

__all__ = ["SafeStates"]

log = logging.getLogger("gridtao.safety")


class SafeStates(IslandCore):
    """Safe-state operations of the island (see the module docstring)."""

    if TYPE_CHECKING:  # SafetyIsland's (safety/island.py): a safe state's exit is an event
        def trigger_cap(self, event_id: str, node_w: float) -> Activation: ...

        def release(self, event_id: str) -> bool: ...

    def enter_safe_state(self, mode: SafeMode) -> None:
        """Lock tier 1 out until :meth:`leave_safe_state` (or :meth:`clear_safe_state`).
        ``default``: the GPUs return to their resting limits, but never above the events in
        force: an activation the grid asked for is the island's to hold (it needs no
        controller), so it goes on and ends by its own duration and ramp. ``hold``: keep the
        current limits. ``minimum``: every GPU at its minimum. Triggers still cut in every
        mode, never above the safe state's limits."""
        if mode not in SAFE_MODES:
            raise ValueError(f"safe state must be one of {SAFE_MODES}, got {mode!r}")
        with self._cmd_lock:
            with self._lock:
                self._generation += 1
                self._mode = mode
                if mode == "hold":
                    self._resting_mw = limits = self._writes.limits_mw
                    batch = None
                elif mode == "default":
                    self._resting_mw = self._normal_mw
                    winner = self._winner_locked(self._clock.now())
                    limits = self._normal_mw if winner is None else tuple(
                        self.envelope.fit_under_mw(list(self._normal_mw), winner[1]))
                    batch = self._writer.submit(limits)
                else:
                    self._resting_mw = limits = self.envelope.min_mw
                    batch = self._writer.submit(self._resting_mw)
            # What is written (the events in force keep their caps under ``default``).
            log.warning("safe state %s: limits %s mW, tier 1 locked out", mode, tuple(limits))
            if batch is not None:
                self._writes.record(batch.wait(self._write_timeout_s))

    def leave_safe_state(self) -> bool:
        """The controller is healthy again: tier 1 may write, and GPUs held below their
        resting limits by the safe state go back through the normal ramp: the node is latched
        at its current total as event ``safe-state-exit-N`` and that event is released at once
        (``release_rate_per_s``). With events in force the latch is one more of them, the most
        restrictive while it ramps, so the GPUs rise from where the safe state held them to
        the events' caps at that rate too (``minimum`` held them under the caps; an event that
        ran out during the safe state left them there), never in one step. False if no safe
        state was set."""
        with self._cmd_lock, self._lock:
            was = self._mode
            held_mw = float(sum(self._writes.limits_mw))
            ramp = held_mw < float(sum(self._normal_mw)) - len(self._normal_mw)
        if was is None:
            return False
        exit_id = None
        if ramp:
            self._exits += 1
            exit_id = f"safe-state-exit-{self._exits}"
            self.trigger_cap(exit_id, held_mw / 1000.0)  # before tier 1 may write again
        self.clear_safe_state()
        if exit_id is not None:
            self.release(exit_id)
        log.info("safe state %s left%s", was,
                 f": ramping back as {exit_id}" if exit_id is not None else "")
        return True

    def clear_safe_state(self) -> bool:
        """Let tier 1 write again (writes nothing itself); False if no safe state was set."""
        with self._lock:
            was, self._mode = self._mode, None
            self._resting_mw = self._normal_mw
        if was is not None:
            log.info("safe state %s cleared", was)
        return was is not None
