"""Latch bookkeeping of the safety island: what an event is, how its ceiling ramps out, and the
immutable records handed to other threads. Pure data and arithmetic; no locks, no I/O.

Power in mW, times in clock seconds (``Clock.now()``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .errors import WriteTimeout

EventKind = Literal["frequency", "shed", "cap"]
SafeMode = Literal["default", "hold", "minimum"]
SAFE_MODES: tuple[SafeMode, ...] = ("default", "hold", "minimum")


@dataclass(frozen=True)
class Activation:
    """What one trigger did. ``commanded_at`` is ``clock.now()`` when the last of its driver
    calls returned, i.e. every new limit in force, before the read-backs (``commanded_wall`` the
    same instant in Unix seconds). ``binding`` is False when a more
    restrictive event was already active: the event is latched but nothing was written.
    ``errors`` maps GPU index to the write error of each GPU that failed. ``basis_mw`` is the
    per-GPU draw the caps were cut from (the island's smoothed draw, frozen for overlapping
    events): what a restart needs to cut the same caps again. ``enforced_mw``: per GPU, the
    limit read back after its write (None where nothing was written or read back); a cap above
    a GPU's resting limit is written as the resting limit, so this, not ``caps_mw``, is what
    the GPUs hold."""

    event_id: str
    kind: EventKind
    baseline_mw: float
    target_mw: float
    caps_mw: tuple[int, ...]
    commanded_at: float
    commanded_wall: float
    binding: bool = True
    level: str | None = None
    errors: Mapping[int, Exception] = field(default_factory=dict)
    basis_mw: tuple[float, ...] = ()
    dry_run: bool = False
    requested_target_mw: float | None = None
    enforced_mw: tuple[int | None, ...] = ()

    @property
    def shortfall_mw(self) -> float:
        """How much of the requested reduction the node cannot deliver (mW, >= 0): the target
        asked for lay below the node's floor (every GPU at its minimum or priority floor)."""
        if self.requested_target_mw is None:
            return 0.0
        return max(0.0, self.target_mw - self.requested_target_mw)

    @property
    def commanded(self) -> bool:
        """True if a new limit was written to at least one GPU: the caps are in force there.
        False when a more restrictive event already held the GPUs (``binding`` False), in a dry
        run, or when every GPU's write failed: nothing changed, and no ack may say it did."""
        return self.binding and not self.dry_run and len(self.errors) < len(self.caps_mw)

    @property
    def refused(self) -> bool:
        """True if the event had caps to write and every GPU refused them. A write the island
        stopped waiting for (:class:`~.errors.WriteTimeout`) is not a refusal: it may still
        land, so such an event is never called refused."""
        return (self.binding and bool(self.caps_mw) and len(self.errors) == len(self.caps_mw)
                and not self.timed_out)

    @property
    def timed_out(self) -> bool:
        """Some write the island stopped waiting for (it may still land)."""
        return any(isinstance(e, WriteTimeout) for e in self.errors.values())

    @property
    def failed_gpus(self) -> tuple[int, ...]:
        """Indices of the GPUs whose write failed, ascending."""
        return tuple(sorted(self.errors))


@dataclass(frozen=True)
class IslandView:
    """Immutable snapshot for tier 1. ``target_mw`` is the node power target now (ramps during
    release); tier 1 may never command limits summing above ``ceiling_total_mw``. Event fields
    are None when no event is active. ``safe_mode`` is "hold" or "minimum" while tier 1 is
    locked out; ``faulted`` lists GPUs whose last write failed. ``commitment_mw`` is tier 2's
    live soft target (None if none; under a frequency event it stacks: minus the event's
    reduction now): ``target_mw`` is the lower of it and the event's target, and with no event
    it is the target alone (no ceiling, no caps). ``floors_mw``: per-GPU
    priority floors tier 1 should not split a budget below (None: the minimums).
    ``basis_total_mw``: while an event that can cut is active (caps below a resting limit), the
    frozen node draw every further cut is made from (None otherwise)."""

    generation: int
    event_id: str | None
    kind: EventKind | None
    target_mw: float | None
    ceiling_total_mw: float | None
    caps_mw: tuple[int, ...] | None
    releasing: bool
    active_event_ids: tuple[str, ...]
    safe_mode: SafeMode | None
    faulted: tuple[int, ...]
    commitment_mw: float | None = None
    floors_mw: tuple[int, ...] | None = None
    basis_total_mw: float | None = None


@dataclass(frozen=True)
class ArmedLevel:
    """A frequency level's caps, precomputed from ``draw_mw`` so a trigger only writes them.
    Node target = ``baseline_mw`` x ``node_target_fraction`` - ``reduction_mw``, where the
    baseline is ``reference_mw`` if given (tier 2's natural draw), else the draw total."""

    node_target_fraction: float
    draw_mw: tuple[float, ...]
    baseline_mw: float
    target_mw: float
    caps_mw: tuple[int, ...]
    reduction_mw: float = 0.0
    reference_mw: float | None = None
    release_mw_per_s: float | None = None
    requested_target_mw: float | None = None  # before the floor clamp (None: as target_mw)


@dataclass
class LatchedEvent:
    """One active event. ``ceiling_mw`` is the sum of its caps at activation (``target_mw``
    clamped into the envelope's totals, rounded down).

    Release (states: held -> ramping -> tail -> done; ``release_at`` set starts the ramp):

    * ramping: target and ceiling rise together, linearly, by ``rate_per_s`` of the reduction
      ``baseline_mw - target_mw`` per second, or by ``release_mw_per_s`` if set (a step
      product, which ramps out at its own rate, under the TSO's limit), until the target is
      back at the baseline;
    * tail: both go on rising at the same rate (mW/s; an event without its own rate at least
      ``rate_per_s`` of what is left, so the tail lasts at most ``1 / rate_per_s``) until the
      ceiling reaches ``rest_mw``, the resting limits' total: the island's write of the resting
      limits at the end is then no step, whatever the load does under the caps;
    * done: the ceiling is at ``rest_mw`` (at once for an event whose ceiling is already
      there; an event that cut nothing below its baseline but holds the ceiling under
      ``rest_mw``, a cap above the draw or a safe state's exit, has only the tail).

    ``rest_mw`` is passed in (the island's resting total now: an operator may move it)."""

    event_id: str
    kind: EventKind
    level: str | None
    baseline_mw: float
    target_mw: float
    ceiling_mw: float
    caps_mw: tuple[int, ...]
    started_at: float
    release_at: float | None = None
    activation: Activation | None = None
    release_mw_per_s: float | None = None
    basis_mw: tuple[float, ...] = ()
    requested_target_mw: float | None = None

    def _reduction_mw(self) -> float:
        return max(0.0, self.baseline_mw - self.target_mw)

    def _given_back_mw(self, now: float, rate_per_s: float, rest_mw: float) -> float:
        """How far target and ceiling have risen since the release began (mW)."""
        if self.release_at is None:
            return 0.0
        elapsed = max(0.0, now - self.release_at)
        reduction = self._reduction_mw()
        ramp = (self.release_mw_per_s if self.release_mw_per_s is not None
                else reduction * rate_per_s)
        ramp_s = reduction / ramp if ramp > 0.0 else 0.0
        if reduction > 0.0 and elapsed <= ramp_s:
            return elapsed * ramp
        # The tail, up to the resting total: also for an event that cut nothing below the draw
        # but holds the ceiling under the resting limits (a cap between the two, a safe
        # state's exit), which would otherwise end in one step of the limits.
        tail = max(0.0, rest_mw - (self.ceiling_mw + reduction))
        tail_rate = (self.release_mw_per_s if self.release_mw_per_s is not None
                     else max(ramp, tail * rate_per_s))
        if tail_rate <= 0.0:
            return reduction + tail
        return reduction + min(tail, (elapsed - ramp_s) * tail_rate)

    def reduction_at(self, now: float, rate_per_s: float, rest_mw: float) -> float:
        """What is left of the event's reduction below its baseline now (mW, >= 0; 0 in the
        tail)."""
        return max(0.0, self._reduction_mw() - self._given_back_mw(now, rate_per_s, rest_mw))

    def target_at(self, now: float, rate_per_s: float, rest_mw: float) -> float:
        return self.target_mw + self._given_back_mw(now, rate_per_s, rest_mw)

    def ceiling_at(self, now: float, rate_per_s: float, rest_mw: float) -> float:
        return min(max(rest_mw, self.ceiling_mw),
                   self.ceiling_mw + self._given_back_mw(now, rate_per_s, rest_mw))

    def done(self, now: float, rate_per_s: float, rest_mw: float) -> bool:
        if self.release_at is None:
            return False
        given = self._given_back_mw(now, rate_per_s, rest_mw)
        return (given >= self._reduction_mw()
                and self.ceiling_mw + given >= rest_mw - 1e-6)


def activation_of(ev: LatchedEvent) -> Activation:
    """The Activation a trigger of ``ev`` recorded (a duplicate trigger returns it)."""
    if ev.activation is None:  # only if the first trigger of this id died mid-way
        raise RuntimeError(f"event {ev.event_id} has no recorded activation")
    return ev.activation


def most_restrictive(
    events: Iterable[LatchedEvent], now: float, rate_per_s: float, rest_mw: float
) -> tuple[LatchedEvent, float] | None:
    """The event with the lowest ceiling now (the latest on a tie) and that ceiling;
    ``rest_mw``: the resting limits' total, where released ceilings end."""
    best: tuple[LatchedEvent, float] | None = None
    for ev in events:
        ceiling = ev.ceiling_at(now, rate_per_s, rest_mw)
        if best is None or ceiling <= best[1]:
            best = (ev, ceiling)
    return best


@dataclass(frozen=True)
class OutsideChange:
    """A GPU's limit moved by someone else (an operator's ``nvidia-smi -pl``, another process):
    from ``from_mw`` (the limit last read back) to ``to_mw``; ``resting_mw`` is the GPU's new
    resting limit (``to_mw`` clamped into its envelope); ``during_event``: an event was in force.
    """

    index: int
    from_mw: int
    to_mw: int
    resting_mw: int
    during_event: bool
