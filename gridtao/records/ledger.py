"""The agent's ledger: what it decided (the audit trail) and what it must undo (the journal).

:class:`Ledger` is the one place the agent's callbacks report to. It routes each decision to the
audit trail (``config.audit``) and keeps the state journal (``config.journal``) in step with the
events being held, and at start it recovers from a previous run that did not stop cleanly:

* the limits to restore at stop are the ones the *first* run found (from the journal), not the
  capped ones this run found;
* each journaled event still inside its duration and the crash bound is held again with its
  original target and cut basis (:func:`gridtao.records.journal.plan_recovery`); the island releases
  it through its ramp when the hold is over;
* if nothing is to be held (every event over, or an unreadable or foreign journal) the island
  writes the default limits at once.

Every callback is O(1) on the calling thread (a queue append or a dict update): the hot path
never waits for a disk. Whether the disk takes what they write is :meth:`Ledger.records_status`
(the retained status's ``records``) and :attr:`Ledger.health` (the metrics).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from gridtao.clock import Clock, boot_id
from gridtao.config.agent import Config
from gridtao.records.audit import AuditError, AuditTrail
from gridtao.records.health import OFF, WriteHealth
from gridtao.records.journal import (
    Journal,
    JournalError,
    JournalEvent,
    JournalState,
    load_journal,
    match_gpus,
    plan_recovery,
)
from gridtao.records.witness import Witness, witness_limits
from gridtao.safety.island import Activation, SafetyIsland

log = logging.getLogger("gridtao.records.ledger")

ENDED_KINDS = ("event_released", "event_ended")
TICK_MARGIN_S = 0.2  # the intake releases on its ~20 Hz tick and the island ends on tier 1's


class Adopter(Protocol):
    """Takes a recovered event back as if it had just been accepted (the hot path's intake)."""

    def adopt(self, event_id: str, kind: str, *, ends_at: float, received_wall: float,
              commanded_wall: float | None, reached_wall: float | None = None,
              reached_power_w: float | None = None) -> None: ...


class Ledger:
    """Audit trail and state journal for one agent. ``found_mw`` are the limits the GPUs hold
    now; :attr:`initial_limits_mw` the ones to restore at stop. Raises :class:`JournalError`
    when another agent holds the journal."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock,
        node_id: str,
        uuids: Sequence[str],
        default_mw: Sequence[int],
        found_mw: Sequence[int],
    ) -> None:
        self._config = config
        self._clock = clock
        self._node_id = node_id
        self._uuids = tuple(uuids)
        self.audit = AuditTrail(config.audit, clock=clock) if config.audit.enabled else None
        self.journal: Journal | None = None
        self.previous: JournalState | None = None
        self.problem: str | None = None  # why a journal found at start was not used
        self.witness: Witness | None = None  # what the audit trail vouched for, if asked
        self.initial_limits_mw = list(found_mw)
        #: GPUs found above the resting limit the journal holds for them: raised by someone
        #: else while no agent ran (an agent never writes above it), ``(gpu, from, to)`` mW.
        self.raised_while_down: list[tuple[int, int, int]] = []
        if config.journal.enabled:
            self._open_journal(config)
        if self.previous is None:
            self._ask_witness(default_mw, found_mw)
        else:
            self._take_raises(found_mw)

    def _open_journal(self, config: Config) -> None:
        """Lock the journal and read what a previous run left in it."""
        jc = config.journal
        if jc.path is None:
            raise ValueError("journal.path is unresolved (gridtao.config.paths.with_state_paths)")
        try:
            Path(jc.path).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as e:
            raise JournalError(f"journal {jc.path}: cannot create its folder: "
                               f"{e.strerror or e}") from None
        self.journal = Journal(jc.path, clock=self._clock, heartbeat_s=jc.heartbeat_s)
        self.journal.lock()
        try:
            previous = load_journal(jc.path)
        except JournalError as e:
            self.problem = str(e)
        else:
            if previous is not None and previous.stopped:
                log.info("journal %s: the previous run stopped cleanly (it could not remove "
                         "its journal)", jc.path)
                previous = None
            if previous is not None:
                self.problem = match_gpus(previous, self._uuids)
                if self.problem is None:
                    self.previous = previous
                    self.initial_limits_mw = list(previous.initial_limits_mw)

    def _take_raises(self, found_mw: Sequence[int]) -> None:
        """A GPU found above the resting limit the journal holds for it was raised by someone
        else while no agent ran (every limit an agent writes is at or below it): that limit is
        the GPU's resting limit from now on, as an outside change seen while running is, so
        the stop does not take it back down (the operator's change wins)."""
        for i, (found, rest) in enumerate(zip(found_mw, self.initial_limits_mw, strict=True)):
            if found > rest:
                self.raised_while_down.append((i, rest, found))
                self.initial_limits_mw[i] = found
        if self.raised_while_down:
            log.warning("GPUs %s were raised while no agent ran (%s mW): taken as their "
                        "resting limits", [g for g, _, _ in self.raised_while_down],
                        [f"{a} -> {b}" for _, a, b in self.raised_while_down])

    def _ask_witness(self, default_mw: Sequence[int], found_mw: Sequence[int]) -> None:
        """No journal to say what the last run held: GPUs found below their defaults may carry
        a crashed run's caps, or an operator's limits. Only the audit trail can tell which
        (gridtao/records/witness.py); what it does not vouch for is left as found."""
        below = [i for i, (f, d) in enumerate(zip(found_mw, default_mw, strict=True)) if f < d]
        if self.problem is None and not below:
            return
        audit_path = self._config.audit.path if self._config.audit.enabled else None
        self.witness = witness_limits(audit_path, node_id=self._node_id, uuids=self._uuids,
                                      found_mw=found_mw, current_boot=boot_id())
        vouched = self.witness.vouched
        self.initial_limits_mw = [f if w is None else w
                                  for w, f in zip(self.witness.limits_mw, found_mw, strict=True)]
        if vouched:
            log.warning("%sGPUs %s were left below the limits their last run started with, "
                        "and %s: those limits (%s mW) are restored",
                        f"{self.problem}; " if self.problem else "", list(vouched),
                        self.witness.reason, [self.initial_limits_mw[i] for i in vouched])
        left = [i for i in below if i not in vouched]
        if left:
            log.error("%sGPUs %s are below their default limits (%s mW) and %s: left as found "
                      "(raise them with nvidia-smi -pl if they are not the operator's)",
                      f"{self.problem}; " if self.problem else "", left,
                      [found_mw[i] for i in left], self.witness.reason)

    @property
    def active(self) -> bool:
        """Whether there is anything to record (an audit trail or a journal)."""
        return self.audit is not None or self.journal is not None

    @property
    def health(self) -> dict[str, WriteHealth | None]:
        """Each writer's health by name (``journal``, ``audit``); None for one that is off.
        Any thread."""
        return {"journal": self.journal.health if self.journal is not None else None,
                "audit": self.audit.health if self.audit is not None else None}

    def records_status(self) -> dict[str, str]:
        """The retained status's ``records``: per writer ``"ok"``, ``"failing: <reason>"``
        while its latest write failed, or ``"off"``. Any thread; no I/O."""
        return {name: OFF if h is None else h.status() for name, h in self.health.items()}

    @property
    def crashed(self) -> bool:
        """The previous run did not stop cleanly: it left a journal behind, or the audit trail
        vouches for caps it left on the GPUs."""
        return (self.previous is not None or self.problem is not None
                or (self.witness is not None and bool(self.witness.vouched)))

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self, fields: Mapping[str, object]) -> None:
        """Open the audit trail (raises ``AuditError``) and record the agent's start."""
        if self.audit is not None:
            try:
                self.audit.start()
            except AuditError as e:  # named with the configuration it comes from
                raise AuditError(f"{self._config.source}: {e}") from None
            self.record("agent_start", {
                **fields, "node": self._node_id, "pid": os.getpid(), "boot_id": boot_id(),
                "initial_limits_mw": list(self.initial_limits_mw),
                "previous_run_crashed": self.crashed,
            })

    def recover(self, island: SafetyIsland, intake: Adopter, *, ramp_s: float
                ) -> list[tuple[JournalEvent, Activation]]:
        """Open this run's journal and, after a crash, re-hold or release what was held.
        Call once, after the island started and before any trigger can arrive. Returns each
        event held again, with what its caps did now."""
        now, wall = self._clock.now(), self._clock.wall()
        prev = self.previous
        if self.journal is not None:
            self.journal.open(JournalState(
                node=self._node_id, gpu_uuids=self._uuids,
                initial_limits_mw=tuple(self.initial_limits_mw),
                first_started_wall=prev.first_started_wall if prev is not None else wall,
                alive_wall=wall, pid=os.getpid(),
            ))
            self.journal.start()
        if not self.crashed:
            return []
        held: list[tuple[JournalEvent, Activation]] = []
        restored: list[dict[str, object]] = []
        expired: list[dict[str, object]] = []
        crash_age_s: float | None = None
        if prev is not None:
            plan = plan_recovery(
                prev, now_wall=wall,
                max_capped_after_crash_s=self._config.journal.max_capped_after_crash_s,
                max_event_s=self._config.safety.max_event_s, ramp_s=ramp_s + TICK_MARGIN_S,
            )
            crash_age_s = plan.crash_age_s
            expired = [{"event": e, "why": why} for e, why in plan.expired]
            if plan.restore:
                # Cut from the draw the first event was cut from, as the island did then.
                island.update_draw(plan.restore[0][0].basis_mw)
                log.warning("previous run (pid %s) did not stop cleanly: holding its events "
                            "again, as caps at their targets: %s",
                            prev.pid, [f"{ev.event_id} ({ev.kind})" for ev, _ in plan.restore])
            for ev, hold_s in plan.restore:
                act = island.trigger_cap(ev.event_id, ev.target_mw / 1000.0)
                # Its acks keep the times its sender was told before the crash (a journal of
                # an older version lacks the receipt: the caps' time stands in).
                intake.adopt(ev.event_id, ev.kind, ends_at=now + hold_s,
                             received_wall=ev.received_wall if ev.received_wall is not None
                             else ev.started_wall,
                             commanded_wall=ev.started_wall if ev.commanded else None,
                             reached_wall=ev.reached_wall, reached_power_w=ev.reached_power_w)
                if self.journal is not None:
                    self.journal.add_event(replace(ev, hold_until_wall=wall + hold_s))
                held.append((ev, act))
                restored.append({"event": ev.event_id, "kind": ev.kind, "hold_s": hold_s,
                                 "target_mw": ev.target_mw, "caps_mw": list(act.caps_mw),
                                 "errors": {str(i): str(e) for i, e in act.errors.items()}})
        if not restored:
            island.restore_defaults()
        action = ("held events again" if restored
                  else "restored the limits found before the crash")
        log.warning(
            "previous run (pid %s) did not stop cleanly%s: %s; held again (as caps at their "
            "targets) %s, expired %s",
            prev.pid if prev is not None else "?",
            f" {crash_age_s:.1f} s ago" if crash_age_s is not None else "", action,
            [f"{r['event']} ({r['kind']})" for r in restored] or "none",
            [e["event"] for e in expired] or "none",
        )
        self.record("recovery", {
            "action": action, "previous_pid": prev.pid if prev is not None else None,
            "crash_age_s": crash_age_s, "restored": restored, "expired": expired,
            "problem": self.problem, "initial_limits_mw": list(self.initial_limits_mw),
            "raised_while_down": [{"gpu": g, "from_mw": a, "to_mw": b}
                                  for g, a, b in self.raised_while_down],
            "witness": None if self.witness is None else {
                "vouched": list(self.witness.vouched), "reason": self.witness.reason},
        })
        return held

    def outside_change(self, index: int, from_mw: int, to_mw: int, *, uuid: str,
                       during_event: bool) -> None:
        """GPU ``index``'s limit was set from outside the agent: it is restored to ``to_mw``
        from now on, at stop and after a crash (the journal), and the change is audited."""
        self.initial_limits_mw[index] = to_mw
        if self.journal is not None:
            self.journal.set_initial_limits(tuple(self.initial_limits_mw))
        self.record("limit_changed_outside", {"gpu": index, "uuid": uuid, "from_mw": from_mw,
                                              "to_mw": to_mw, "during_event": during_event})

    def close(self, *, restore_failed: int, limits_mw: Sequence[int]) -> None:
        """The agent stopped. The journal is removed only if every limit was restored; else it
        stays for the next start to finish the job."""
        self.record("agent_stop", {"limits_restored_mw": list(limits_mw),
                                   "restore_failed": restore_failed})
        if self.journal is not None:
            if restore_failed:
                self.journal.clear_events()
            self.journal.close(clean=restore_failed == 0)
        if self.audit is not None:
            self.audit.close()

    def abandon(self) -> None:
        """Stop the writers as a crash would: nothing more is written (tests)."""
        if self.journal is not None:
            self.journal.abandon()
        if self.audit is not None:
            self.audit.close()

    # ---- callbacks (any thread, O(1)) ----------------------------------------------------

    def record(self, kind: str, fields: Mapping[str, object]) -> None:
        if self.audit is not None:
            self.audit.record(kind, fields)

    def decision(self, kind: str, fields: Mapping[str, object]) -> None:
        """A decision from the intake (message verdicts, event starts and ends)."""
        self.record(kind, fields)
        if self.journal is not None and kind in ENDED_KINDS:
            event_id = fields.get("event")
            if isinstance(event_id, str):
                self.journal.remove_event(event_id)

    def activated(self, act: Activation, *, hold_until_wall: float | None,
                  received_wall: float | None) -> None:
        """An event's caps were written: journal it, with the draw its caps were cut from
        (``act.basis_mw``), so a restart cuts the same caps again, and when its trigger came
        (``received_wall``), so the restart's acks say so."""
        if self.journal is None:
            return
        self.journal.add_event(JournalEvent(
            event_id=act.event_id, kind=act.kind, target_mw=act.target_mw,
            baseline_mw=act.baseline_mw, basis_mw=act.basis_mw,
            caps_mw=tuple(act.caps_mw), started_wall=act.commanded_wall,
            hold_until_wall=hold_until_wall, received_wall=received_wall,
            commanded=act.commanded,
        ))

    def reached(self, event_id: str, wall: float, power_w: float | None) -> None:
        """The event reached its target band (Unix s; measured power, W): journaled, so the
        acks of a restart keep ``reached_at`` and ``reached_power_w``."""
        if self.journal is not None:
            self.journal.note_reached(event_id, wall, power_w)

    def safe_state(self, mode: str) -> None:
        self.record("safe_state", {"mode": mode, "reason": "watchdog"})
        if self.journal is not None:
            if mode == "default":  # the island cleared every latch
                self.journal.clear_events()
            self.journal.set_safe_mode(None if mode == "default" else mode)
