"""The agent's stop, in order: stop taking triggers, stop controlling, put back the limits found
at start, close the records (:class:`NodeStop`). ``Agent.quiesce`` runs it once, under its lock,
on whichever thread stops the agent (a worker of the controller loop, or the caller of
``close``); nothing here is on the hot path. A step that fails is logged and the stop goes on to
the restore (:func:`stop_step`). Acks the broker could not take at stop are kept
(gridtao/records/unsent.py) and handed to the lane by the next start
(:meth:`NodeStop.resend_unsent`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gridtao.app.compose import NodeParts
from gridtao.hotpath.intake import Outgoing
from gridtao.records.ledger import Ledger
from gridtao.records.unsent import UnsentAck, keep, take

__all__ = ["DRY_RUN_STOP_REASON", "STOP_REASON", "NodeStop"]

log = logging.getLogger("gridtao.app.agent")

#: A stop step taking longer than this is logged (s): each is bounded, the whole must fit the
#: 30 s a supervisor gives a stop.
SLOW_STOP_STEP_S = 2.0

#: The reason acked for every event still held when the agent stops. It is sent before the
#: restore (the lane closes first), so it says what the stop does, not that it is done: a GPU
#: whose restore fails is in the log, the audit trail and the exit status. (After a crash the
#: agent finds its own caps at start: it restores what was found before it first changed them.)
STOP_REASON = ("the agent stopped: the event ends and the GPUs are put back to their resting "
               "limits, as found before the agent first changed them")
#: The same, for an agent that never writes a limit (``gpus.dry_run``).
DRY_RUN_STOP_REASON = "the agent stopped: the event ends (a dry run: no limit was ever written)"


class NodeStop:
    """How one agent stops ``parts``. ``tier1_stop``: the event tier 1's thread runs until;
    ``restore``: writes the limits found at start back (``Agent.restore_initial_limits``),
    returns how many GPUs could not be restored; ``unsent``: where undelivered acks are kept."""

    def __init__(self, parts: NodeParts, *, ledger: Ledger, node_id: str, unsent: Path,
                 tier1_stop: threading.Event, restore: Callable[[], int]) -> None:
        self._parts = parts
        self._ledger = ledger
        self._node_id = node_id
        self._unsent = unsent
        self._tier1_stop = tier1_stop
        self._restore = restore

    def run(self, *, tier1: threading.Thread | None, touched: bool) -> int:
        """Stop taking triggers and controlling (``tier1``: tier 1's thread, joined), then, when
        limits may have been written (``touched``), restore the limits found at start. Returns
        how many GPUs' limits could not be restored (0 when nothing was touched)."""
        parts = self._parts
        # Each step is on its own: one that fails (a disk error flushing the replay store)
        # is logged, and the restore below runs whatever came before it.
        # The meter first: its last reached ack goes out with the lane's final flush, and
        # no ack is handed to the lane after its loop has closed.
        stop_step("closing the response meter", parts.meter.close)
        reason = DRY_RUN_STOP_REASON if parts.island.dry_run else STOP_REASON
        stop_step("stopping the island's lane",
                  lambda: parts.lane.stop(final=lambda: parts.intake.end_all(reason)))
        if parts.lane.undelivered:  # the broker was away: the next start sends them
            keep(self._unsent, [UnsentAck(m.topic, m.payload, m.qos)
                                for m in parts.lane.undelivered])
        stop_step("closing the message guard", parts.guard.close)
        self._tier1_stop.set()
        if tier1 is not None:
            tier1.join(timeout=2.0)
        stop_step("closing the watchdog", parts.watchdog.close)
        if not touched:  # start failed before any write: nothing to undo
            self._ledger.close(restore_failed=0, limits_mw=())
            return 0
        # No tier 1 write queued behind a slow GPU may land after the restore.
        parts.island.seal()
        # The read-back may still run: the restore's writes are the agent's own.
        parts.island.stop_watching()
        failed = self._restore()
        try:  # one more round: the energy of the events the stop ended is recorded
            parts.read_back.read()
        except Exception:
            log.exception("the last energy read-back failed")
        if failed:
            log.error("agent %s: %d GPU limit(s) could not be restored", self._node_id, failed)
        elif parts.island.dry_run:
            log.info("agent %s: dry run: no limit was ever written, so none to restore",
                     self._node_id)
        else:
            log.info("agent %s: limits restored to their resting values (as found before "
                     "the agent first changed them)", self._node_id)
        self._ledger.close(restore_failed=failed, limits_mw=parts.initial_limits_mw)
        return failed

    def resend_unsent(self) -> None:
        """Hand the acks the last stop could not deliver to the ack connection (they go out
        once it is connected), and record it."""
        acks = take(self._unsent)
        if not acks:
            return
        log.warning("agent %s: sending %d ack(s) the last stop could not deliver",
                    self._node_id, len(acks))
        self._ledger.record("acks_resent", {"count": len(acks),
                                            "topics": sorted({a.topic for a in acks})})
        self._parts.lane.call(lambda: [Outgoing(a.topic, a.payload, a.qos) for a in acks])


def stop_step(what: str, step: Callable[[], object], *,
              slow_s: float = SLOW_STOP_STEP_S) -> None:
    """Run one step of a stop; an exception is logged and the stop goes on (to the restore). A
    step that took longer than ``slow_s`` says so: a supervisor gives a stop 30 s, and the
    restore comes after these steps."""
    t0 = time.monotonic()
    try:
        step()
    except Exception:
        log.exception("stopping: %s failed; going on to restore the limits", what)
    took = time.monotonic() - t0
    if took > slow_s:
        log.warning("stopping: %s took %.1f s", what, took)
