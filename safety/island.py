"""The safety island: trigger -> caps written straight to every GPU, then a latch.

Invariants this module keeps (and its tests check):

* Every limit it writes lies in ``[min_mw, default_mw]`` of its GPU (:class:`Envelope`).
* A trigger bumps the generation and latches *before* its writes are queued, so a tier 1 plan
  made earlier is refused (:meth:`SafetyIsland.apply_limits`) or skipped under the GPU's lock.
* While any event is active, no limit set tier 1 gets written sums above the ceiling of the most
  restrictive event; the ceiling rises only through the release ramp, at
  ``release_rate_per_s`` of the event's reduction per second.
* All cuts during overlapping events are computed from one frozen draw (the node's draw before
  the first of them), so a deeper cut is per GPU never above a shallower one and writing the
  binding event's caps never raises a GPU above another active event's cap.
* When the last event ends the island writes the resting limits itself (``resting_mw``: the
  operator's limits found at start, or the defaults; or the held/minimum limits of a safe
  state), so restoring never depends on tier 1, and no event leaves a GPU above where the
  operator had it. A release ramps the ceiling on past the baseline up to their total
  (``LatchedEvent``), so that write is no step.
* A GPU that fails its write is recorded and logged; the other GPUs are capped regardless.
* Tier 2's commitment (:meth:`SafetyIsland.set_commitment`) is a soft target only: the island
  never writes it and never latches it, it can only lower the target tier 1 tracks (never lift
  an event's target or ceiling), it lies in ``[min_total, default_total]``, and it lapses
  ``ttl_s`` after its last refresh, so a stalled tier 2 cannot hold the GPUs down. Under a
  frequency event (a fired step product or trigger level) the two stack: the target is the
  commitment minus the event's reduction now, so a dip that activates FFR and FCR-D (or FFR
  during a demand-response hold) delivers both, each measured from where the node was held.
* Priority floors (:meth:`SafetyIsland.set_floors_mw`) only change how a cut is split between
  GPUs: each floor is clipped into ``[min_mw, default_mw]``, so every cap stays in the envelope.

Threads: tier 1, the island's MQTT thread and the watchdog all call in. ``_lock`` guards the
state for short bookkeeping only (never across a wait on the GPUs); ``_cmd_lock`` serializes
the island's own writes (triggers, event ends, safe states) so that a duplicate trigger sees
the first one's finished :class:`Activation`. The state and the steps the operations share live
in ``safety/core.py``, the safe states (enter, leave, clear) in ``safety/safestate.py``, the
read-back and adoption of limits changed outside the agent in ``safety/outside.py`` (both bases
of :class:`SafetyIsland`, so their operations are the island's own methods), event records and
ramp arithmetic in ``safety/latch.py``, the armed levels in ``safety/armed.py``, the per-GPU
writer threads in ``safety/writer.py``. Power is in mW, times in clock seconds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from .armed import check_fraction
from .latch import (
    Activation,
    IslandView,
    OutsideChange,
    SafeMode,
    activation_of,
)
from .outside import OutsideWatch
from .safestate import SafeStates

__all__ = ["Activation", "IslandView", "OutsideChange", "SafeMode", "SafetyIsland"]

log = logging.getLogger("gridtao.safety")


class SafetyIsland(SafeStates, OutsideWatch):
    """Armed cap table, parallel trigger writes, latch and release ramp for one node's GPUs.

    ``backend`` must enumerate GPUs with indices ``0..n-1``. ``release_rate_per_s`` is the
    fraction of an event's reduction given back per second once released (FFR: <= 0.2);
    ``max_event_s`` bounds how long any event holds before it is released automatically.
    ``dry_run``: the backend only logs the writes it is handed; activations then say nothing
    was commanded (:attr:`Activation.commanded` is False) and the log says so.
    """

    def update_draw(self, draw_mw: Sequence[float]) -> None:
        """Store tier 1's latest per-GPU instant readings (mW): the basis of every cap computed
        later, so the trigger path reads no power from the GPUs."""
        snapshot = tuple(float(d) for d in draw_mw)
        if len(snapshot) != self.envelope.count or any(math.isnan(d) for d in snapshot):
            raise ValueError(f"expected {self.envelope.count} numeric draws, got {draw_mw!r}")
        with self._lock:
            self._draw = snapshot

    def arm(self, key: str, node_target_fraction: float) -> None:
        """Precompute caps for trigger level ``key``: node target = draw x fraction."""
        with self._lock:
            self._armed.arm(key, self._basis_locked(), node_target_fraction)

    def arm_reduction(
        self, key: str, reduction_mw: float, *, reference_mw: float | None = None,
        release_mw_per_s: float | None = None,
    ) -> None:
        """Precompute caps for trigger level ``key``: node target = ``reference_mw`` (the
        node's natural draw as tier 2 estimates it; default: the draw now) - ``reduction_mw``.
        The caps are split by the draw now either way. ``release_mw_per_s``: its release ramp
        in mW/s (default: ``release_rate_per_s`` of the reduction)."""
        with self._lock:
            self._armed.arm_reduction(key, self._basis_locked(), reduction_mw,
                                      reference_mw=reference_mw,
                                      release_mw_per_s=release_mw_per_s)

    def set_commitment(self, node_target_mw: float | None, *, ttl_s: float) -> None:
        """Tier 2's soft node target, mW (None clears it); see the module invariants. Clamped
        into the envelope's totals; lapses ``ttl_s`` seconds from now unless set again."""
        if node_target_mw is not None and not math.isfinite(node_target_mw):
            raise ValueError(f"commitment must be a finite number, got {node_target_mw!r}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        now = self._clock.now()
        with self._lock:
            if node_target_mw is None:
                self._commitment = None
                return
            env = self.envelope
            target = min(float(env.default_total_mw), max(float(env.min_total_mw), node_target_mw))
            self._commitment = (target, now + ttl_s)

    def set_floors_mw(self, floors_mw: Sequence[float] | None) -> None:
        """Per-GPU priority floors, mW (None: none). Cut splits leave each GPU at least its
        floor (clipped into its envelope); armed levels are recomputed at once."""
        if floors_mw is not None and not all(math.isfinite(f) for f in floors_mw):
            raise ValueError(f"floors must be finite numbers, got {floors_mw!r}")
        cut = self.envelope if floors_mw is None else self.envelope.with_floors(floors_mw)
        floors = None if floors_mw is None else cut.min_mw
        with self._lock:
            self._cut_envelope, self._floors_mw = cut, floors
            self._armed.rearm(self._basis_locked(), cut)

    @property
    def dry_run(self) -> bool:
        """Whether the backend only logs the writes it is handed: nothing reaches the GPUs,
        so their draw never answers a cap (tier 1 then plans open loop)."""
        return self._dry_run

    @property
    def release_bound_s(self) -> float:
        """The longest a released event at the island's rate takes to give every GPU back its
        resting limit (s): its reduction below the draw at ``release_rate_per_s`` (at most
        ``1 / rate``), then the tail from the draw up to the resting limits (at most as long
        again; safety/latch.py)."""
        return 2.0 / self._rate

    @property
    def resting_mw(self) -> tuple[int, ...]:
        """Per-GPU limits outside events and safe states, mW (tier 1 raises no higher)."""
        return self._normal_mw

    def disarm(self, key: str) -> bool:
        with self._lock:
            return self._armed.disarm(key)

    def rearm(self) -> None:
        """Recompute every armed level from the latest draw (during events: the frozen draw)."""
        with self._lock:
            self._rearm_locked()

    # ------------------------------------------------------------------ triggers

    def trigger_armed(self, key: str, event_id: str) -> Activation | None:
        """Fire armed level ``key`` as event ``event_id`` with its precomputed caps. None if
        ``key`` is not armed; the existing Activation if ``event_id`` is already active."""
        with self._cmd_lock:
            with self._lock:
                existing = self._events.get(event_id)
                if existing is not None:
                    return activation_of(existing)
                armed = self._armed.get(key)
                if armed is None:
                    return None
                ev, batch = self._open_locked(
                    event_id, "frequency", key, armed.baseline_mw, armed.target_mw, armed.caps_mw,
                    armed.release_mw_per_s, basis_mw=armed.draw_mw,
                    requested_target_mw=armed.requested_target_mw,
                )
            return self._finish(ev, batch)

    def trigger_shed(self, event_id: str, fraction: float, *, floor_mw: float = 0.0) -> Activation:
        """Cut node power by ``fraction`` of its draw before the event (idempotent per id), but
        not below ``floor_mw`` (a node total, mW: the dispatch bounds' floor), applied here to
        the very draw the cut is made from. The activation's ``requested_target_mw`` is the
        target after that floor; its shortfall is what the GPUs' own minimums withhold."""
        check_fraction(fraction)
        if not (math.isfinite(floor_mw) and floor_mw >= 0.0):
            raise ValueError(f"floor_mw must be a finite number >= 0, got {floor_mw!r}")
        return self._trigger_computed(
            event_id, "shed", lambda baseline: max(baseline * (1 - fraction), floor_mw))

    def trigger_cap(self, event_id: str, node_w: float) -> Activation:
        """Hold node power at or below ``node_w`` watts (idempotent per id). The caps bound the
        node even when it draws less than that now (ceiling = the target)."""
        if not (math.isfinite(node_w) and node_w >= 0):
            raise ValueError(f"node_w must be a finite number >= 0, got {node_w!r}")
        return self._trigger_computed(event_id, "cap", lambda _baseline: node_w * 1000.0)

    def release(self, event_id: str) -> bool:
        """Start ``event_id``'s ramp-out; False if no such event is active."""
        with self._lock:
            ev = self._events.get(event_id)
            if ev is None:
                return False
            starting = ev.release_at is None
            if starting:
                ev.release_at = self._clock.now()
        if starting:
            log.info(
                "event %s: releasing at %.0f %%/s of its reduction", event_id, self._rate * 100
            )
        return True

    def tick(self) -> None:
        """Release events older than ``max_event_s``; end events whose ramp is complete."""
        now = self._clock.now()
        expired: list[str] = []
        with self._lock:
            if not self._events:
                return
            for ev in self._events.values():
                if ev.release_at is None and now - ev.started_at >= self._max_event_s:
                    ev.release_at = now
                    expired.append(ev.event_id)
            finished = any(ev.done(now, self._rate, self._rest_locked())
                           for ev in self._events.values())
        for event_id in expired:
            log.warning(
                "event %s: held %.0f s, releasing automatically", event_id, self._max_event_s
            )
        if finished:
            self._end_finished()

    # ------------------------------------------------------------------ tier 1

    def view(self) -> IslandView:
        now = self._clock.now()
        with self._lock:
            faulted = self._writes.faulted
            winner = self._winner_locked(now)
            commitment = self._commitment
            soft = commitment[0] if commitment is not None and now < commitment[1] else None
            if winner is None:
                return IslandView(
                    self._generation, None, None, soft, None, None, False, (), self._mode,
                    faulted, soft, self._floors_mw,
                )
            ev, ceiling = winner
            target = ev.target_at(now, self._rate, self._rest_locked())
            if soft is not None and ev.kind == "frequency":
                # Stack: the step product's reduction is measured from where the node was
                # held, so it comes on top of the commitment (reserves add up).
                soft = max(float(self.envelope.min_total_mw),
                           soft - ev.reduction_at(now, self._rate, self._rest_locked()))
            return IslandView(
                generation=self._generation,
                event_id=ev.event_id,
                kind=ev.kind,
                target_mw=target if soft is None else min(target, soft),
                ceiling_total_mw=ceiling,
                caps_mw=ev.caps_mw,
                releasing=ev.release_at is not None,
                active_event_ids=tuple(self._events),
                safe_mode=self._mode,
                faulted=faulted,
                commitment_mw=soft,
                floors_mw=self._floors_mw,
                basis_total_mw=(math.fsum(self._frozen_draw)
                                if self._frozen_draw is not None else None),
            )

    def basis_total_mw(self) -> float:
        """The node draw (mW) the next cut is made from: while an event that can cut is active,
        the frozen pre-event draw every overlapping event is cut from, else tier 1's latest
        smoothed draw (:meth:`update_draw`). What the dispatch bounds judge a shed on, so they
        and the island never disagree about it."""
        with self._lock:
            return math.fsum(self._basis_locked())

    def floor_mw(self) -> tuple[int, ...]:
        """The lowest limit a cut may give each GPU (mW): its minimum, or its priority floor
        when one is set (clipped into the envelope)."""
        with self._lock:
            return self._cut_envelope.min_mw

    def enforced_mw(self) -> tuple[int, ...]:
        """Each GPU's enforced limit as last read back from the device (mW): after each of the
        island's writes to it, and by :meth:`refresh_enforced`. Never a planned limit: a write
        the driver refused leaves the limit the GPU really kept."""
        return self._writes.limits_mw

    def seal(self) -> None:
        """The agent is about to restore the limits at stop: from now on tier 1 writes nothing
        (:meth:`apply_limits` refused), and a tier 1 write still queued behind a slow GPU is
        skipped when its turn comes, so none can land after the restore. A write already in
        the driver returns first (the backend serializes each GPU's calls)."""
        with self._lock:
            self._sealed = True
            self._generation += 1

    def write_faults(self) -> dict[int, str]:
        """GPUs whose last limit write failed: index -> error kind (e.g. ``"GpuLost"``)."""
        return self._writes.faults()

    def apply_limits(self, limits_mw: Sequence[int], generation: int) -> bool:
        """Tier 1's only way to write limits. Refused (False) in a hold/minimum safe state or if
        ``generation`` is not current; otherwise clamped into the envelope, scaled down under the
        ceiling, and written in parallel. False also if a trigger landed during the write (the
        GPUs it reached first were skipped)."""
        if len(limits_mw) != self.envelope.count:
            raise ValueError(f"expected {self.envelope.count} limits, got {len(limits_mw)}")
        now = self._clock.now()
        with self._lock:
            if self._sealed or self._mode is not None or generation != self._generation:
                return False
            # Never above the resting limits: one adopted from outside since tier 1 planned
            # (the read-back thread) must not be written over with the plan's older one.
            limits = [min(mw, rest) for mw, rest in zip(self.envelope.clamp_all(limits_mw),
                                                        self._resting_mw, strict=True)]
            winner = self._winner_locked(now)
            if winner is not None:
                limits = self.envelope.fit_under_mw(limits, winner[1])
            batch = self._writer.submit(limits, guard=lambda _gpu: self._generation == generation)
        outcomes = batch.wait(self._write_timeout_s)
        self._writes.record(outcomes)
        return not any(o.skipped for o in outcomes)

    # ------------------------------------------------------------------ start and stop

    def probe_writes(self) -> dict[int, str]:
        """Learn which GPUs accept limit writes, without moving any: write each GPU's enforced
        limit as :meth:`start` read it (clamped into the envelope) back to it. (Not the resting
        limits: after a crash the GPUs still hold the caps a recovery is about to re-hold.)
        Returns index -> error kind of each GPU that refused, as :meth:`write_faults` will
        report it until a later write to that GPU succeeds. Call after :meth:`start`, before
        any trigger."""
        if self._unread_at_start:  # what was never read is never written back
            log.warning("write check: GPU(s) %s not checked: unreadable at start",
                        ", ".join(str(i) for i in sorted(self._unread_at_start)))
        with self._cmd_lock:
            with self._lock:
                unread = self._unread_at_start
                batch = self._writer.submit(self.envelope.clamp_all(self._writes.limits_mw),
                                            guard=lambda i: i not in unread)
            self._writes.record(batch.wait(self._write_timeout_s))
        return self._writes.faults()

    def restore_defaults(self) -> None:
        """Clear every latch and write each GPU's resting limit (``resting_mw``: the limits
        found at start when the agent passed them, else the defaults)."""
        self._restore("restoring defaults")
