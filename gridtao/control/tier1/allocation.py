"""Tier-1 allocation math: pure functions and two small state holders, no I/O, no clock.

All power is in milliwatts (floats inside, ints at the GPU boundary). Invariants every function
here keeps, and tests/test_allocation.py checks by property:

* every per-GPU limit lies in ``[min_mw[i], default_mw[i]]``;
* a node budget, once clamped into ``[sum(min), sum(default)]``, is met exactly: the limits sum
  to the budget rounded down to a whole mW;
* results depend only on the inputs (deterministic; ties broken by GPU index).

How tier 1's node budget is split between GPUs is ``control.allocation``: ``proportional``
(this module's water-filling on one level) or ``work-aware`` (gridtao/control/tier1/workaware.py:
equal work lost per watt), given to tier 1 (``FastLoop.split``) by the agent
(gridtao/app/workmodel.py).
Either is computed here, on tier 1's thread; the island's armed caps and its trigger path are
unchanged.

Lists of 8-64 floats: plain Python beats numpy here (no array set-up per call).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

#: A node split other than the proportional one: ``(budget, wants, lower, upper)`` (mW; the
#: budget within the sums of the bounds, every want in its bounds) to per-GPU levels (mW
#: floats, summing to the budget, each in its bounds), or None to split this one
#: proportionally.
NodeSplit = Callable[[float, Sequence[float], Sequence[int], Sequence[int]], list[float] | None]


def _round_to_total(
    values: Sequence[float], min_mw: Sequence[int], max_mw: Sequence[int], total_mw: float
) -> list[int]:
    """Whole-mW limits in bounds whose sum is ``floor(total_mw)`` where the bounds allow.

    Largest-remainder rounding: floor everything, then hand the few missing mW to the entries
    that lost the most, ties by index (deterministic).
    """
    out = [min(hi, max(lo, math.floor(v))) for v, lo, hi in zip(values, min_mw, max_mw,
                                                                  strict=True)]
    missing = math.floor(total_mw) - sum(out)
    if missing > 0:
        order = sorted(range(len(out)), key=lambda i: (out[i] - values[i], i))
        for i in order:
            if missing <= 0:
                break
            if out[i] < max_mw[i]:
                out[i] += 1
                missing -= 1
    return out


def clamp_budget_mw(budget_mw: float, min_mw: Sequence[int], default_mw: Sequence[int]) -> float:
    """``budget_mw`` clamped into what the GPUs can hold: ``[sum(min), sum(default)]``."""
    return min(float(sum(default_mw)), max(float(sum(min_mw)), budget_mw))


def want_mw(
    draw_mw: Sequence[float],
    limit_mw: Sequence[int],
    min_mw: Sequence[int],
    default_mw: Sequence[int],
    headroom_mw: float,
    *,
    peak_mw: Sequence[float] | None = None,
    hold: Sequence[bool] | None = None,
) -> list[float]:
    """Each GPU's demand evidence: the limit it would take if watts were free, mW.

    * Held (``hold[i]``: its limit was just raised and its draw is still climbing through the
      firmware's slow cap-up lag, or its reading is stale): it keeps its current limit, so a
      raise is not undone before it can show and a GPU we cannot see is not re-planned.
    * Pressing on its limit (draw within ``headroom/2`` of it): it could use more, so it wants
      its default limit.
    * Otherwise it is drawing under its limit and wants ``peak + headroom``, where ``peak`` is
      its highest recent draw (default: the draw now). Using a recent peak rather than the draw
      now keeps a job's short dips (training's communication phases, ~0.05-0.3 s) from moving
      watts away only to take them back: cap-up is slower than the dip, so that would lose power.

    The ``headroom/2`` threshold is hysteresis: a GPU given ``draw + headroom`` sits
    ``headroom`` under its limit and stays classed as under-using; it flips to pressing only once
    its draw rises by ``headroom/2``, not on every noisy sample.
    """
    half = headroom_mw / 2.0
    peaks = draw_mw if peak_mw is None else peak_mw
    out: list[float] = []
    for i, (d, pk, lim, lo, hi) in enumerate(
        zip(draw_mw, peaks, limit_mw, min_mw, default_mw, strict=True)
    ):
        if hold is not None and hold[i]:
            w = float(lim)
        elif d >= lim - half:
            w = float(hi)
        else:
            w = max(d, pk) + headroom_mw
        out.append(min(float(hi), max(float(lo), w)))
    return out


def allocate_mw(
    budget_mw: float,
    want: Sequence[float],
    min_mw: Sequence[int],
    default_mw: Sequence[int],
    *,
    split: NodeSplit | None = None,
) -> list[int]:
    """Split a node budget into per-GPU limits (sum == clamped budget, each in [min, default]).

    ``split`` where one is given and it returns levels; else proportionally. If the budget
    does not cover every GPU's ``want`` (a cut): water-filling on one level ``lam`` in [0, 1],
    ``limit_i = min(want_i, min_i + lam * (default_i - min_i))``. GPUs that want little keep
    exactly what they want; the rest share the remainder in proportion to their adjustable
    range (equal shares for identical GPUs).
    If the budget covers every want, the surplus is spread in proportion to each GPU's room
    above its want, so limits never exceed defaults.
    """
    n = len(want)
    if not (len(min_mw) == len(default_mw) == n):
        raise ValueError("want, min_mw and default_mw must have one entry per GPU")
    budget = clamp_budget_mw(budget_mw, min_mw, default_mw)
    wants = [min(float(hi), max(float(lo), w)) for w, lo, hi in zip(want, min_mw, default_mw,
                                                                    strict=True)]
    if split is not None:
        levels = split(budget, wants, min_mw, default_mw)
        if levels is not None:
            return _round_to_total(levels, min_mw, default_mw, budget)
    total_want = sum(wants)
    if budget >= total_want:
        room = [hi - w for w, hi in zip(wants, default_mw, strict=True)]
        total_room = sum(room)
        mu = 0.0 if total_room <= 0 else min(1.0, (budget - total_want) / total_room)
        return _round_to_total([w + mu * r for w, r in zip(wants, room, strict=True)], min_mw,
                               default_mw, budget)
    return _round_to_total(proportional_levels(budget, wants, min_mw, default_mw), min_mw,
                           default_mw, budget)


def proportional_levels(
    budget_mw: float, wants: Sequence[float], min_mw: Sequence[int], default_mw: Sequence[int]
) -> list[float]:
    """The proportional split of a cut (a :data:`NodeSplit` that never declines): water-filling
    on one level of each GPU's range, GPUs that want less keeping their want (mW floats)."""
    n = len(wants)
    budget = budget_mw  # below sum(wants): the caller's cut
    ranges = [float(hi - lo) for lo, hi in zip(min_mw, default_mw, strict=True)]
    fixed = 0.0  # GPUs with min == default: nothing to allocate
    free_min = 0.0
    free_range = 0.0
    breakpoints: list[tuple[float, int]] = []
    for i in range(n):
        if ranges[i] <= 0:
            fixed += min_mw[i]
        else:
            free_min += min_mw[i]
            free_range += ranges[i]
            breakpoints.append(((wants[i] - min_mw[i]) / ranges[i], i))
    breakpoints.sort()
    saturated = 0.0
    lam = 1.0
    for bp, i in breakpoints:
        lam = (budget - fixed - saturated - free_min) / free_range
        if lam <= bp:
            break
        # GPU i is satisfied below this level: it keeps its want, the rest share what is left.
        saturated += wants[i]
        free_min -= min_mw[i]
        free_range -= ranges[i]
    lam = max(0.0, min(1.0, lam))
    return [
        min(w, lo + lam * r) if r > 0 else float(lo)
        for w, lo, r in zip(wants, min_mw, ranges, strict=True)
    ]


def raise_toward_mw(
    limit_mw: Sequence[int], default_mw: Sequence[int], allowance_mw: float
) -> list[int]:
    """Raise limits toward defaults by at most ``allowance_mw`` in total (never lowers one).

    The allowance is spread in proportion to each GPU's distance to its default, so all GPUs
    reach their defaults on the same step. Limits above default are brought down to it.
    """
    capped = [min(lim, hi) for lim, hi in zip(limit_mw, default_mw, strict=True)]
    gaps = [hi - lim for lim, hi in zip(capped, default_mw, strict=True)]
    total_gap = sum(gaps)
    if total_gap <= 0:
        return capped
    frac = max(0.0, min(1.0, allowance_mw / total_gap))
    if frac >= 1.0:
        return list(default_mw)
    return [lim + math.floor(frac * g) for lim, g in zip(capped, gaps, strict=True)]


class NodeBudget:
    """Integral state of tier 1: the node's limit budget ``B`` (mW) while a target is active.

    ``B += dT + Ki * (T - P) * dt`` where ``dT`` feeds target changes (release ramps) straight
    through and the integral removes steady error (power above target from noise or loose
    firmware enforcement). ``B`` is clamped into ``[sum(min), min(ceiling, sum(default))]`` every
    step; the clamp is also the anti-windup: when demand is low and power sits under the target
    the integral cannot grow past the island's ceiling. Raises are rate-limited to
    ``max_raise_mw_per_s`` except while the island ramps a release (then the ramp sets the pace);
    a target rise the limit holds back is carried to the next steps, so a target that rises in
    steps (tier 2 updates it once per frequency sample) is followed at the limit's pace, never
    dropped to the integral's.
    """

    def __init__(
        self,
        min_mw: Sequence[int],
        default_mw: Sequence[int],
        *,
        integral_gain_per_s: float,
        max_raise_mw_per_s: float,
    ) -> None:
        self.min_total_mw = float(sum(min_mw))
        self.default_total_mw = float(sum(default_mw))
        self.integral_gain_per_s = integral_gain_per_s
        self.max_raise_mw_per_s = max_raise_mw_per_s
        self.budget_mw: float | None = None
        self._last_target_mw: float | None = None

    def _upper_mw(self, ceiling_mw: float | None) -> float:
        if ceiling_mw is None:
            return self.default_total_mw
        return max(self.min_total_mw, min(ceiling_mw, self.default_total_mw))

    def activate(self, target_mw: float, ceiling_mw: float | None) -> float:
        """Start tracking a new event: ``B`` starts at the lower of the target and the ceiling
        (the event's caps). Under an event the target can be tier 2's commitment, below the
        caps: starting there spares the GPUs a raise the integral would take back."""
        start = target_mw if ceiling_mw is None else min(ceiling_mw, target_mw)
        self.budget_mw = max(self.min_total_mw, min(start, self._upper_mw(ceiling_mw)))
        self._last_target_mw = target_mw
        return self.budget_mw

    def deactivate(self) -> None:
        self.budget_mw = None
        self._last_target_mw = None

    def update(
        self,
        *,
        target_mw: float,
        ceiling_mw: float | None,
        measured_mw: float,
        dt_s: float,
        releasing: bool,
    ) -> float:
        """One control step; returns the new budget, mW. Activates on first use."""
        if self.budget_mw is None or self._last_target_mw is None:
            return self.activate(target_mw, ceiling_mw)
        old = self.budget_mw
        dt = max(0.0, dt_s)
        fed = target_mw - self._last_target_mw
        b = old + fed + self.integral_gain_per_s * (target_mw - measured_mw) * dt
        carry = 0.0
        if not releasing:
            slewed = min(b, old + self.max_raise_mw_per_s * dt)
            # A rise of the target the slew limit held back is fed on the next steps, not lost
            # (a target updated in steps, e.g. tier 2's at each frequency sample, would
            # otherwise rise only at the integral's pace); the integral's excess is dropped.
            carry = min(b - slewed, max(0.0, fed))
            b = slewed
        b = max(self.min_total_mw, min(b, self._upper_mw(ceiling_mw)))
        self.budget_mw = b
        self._last_target_mw = target_mw - carry
        return b


class PeakHold:
    """Per-GPU maximum draw over the last ``window_s`` (between 3/4 and all of it), mW.

    The window is kept as ``buckets`` sub-windows of running maxima, so an update costs one
    pass over the GPUs and memory stays fixed, whatever the loop rate.
    """

    def __init__(self, count: int, window_s: float, buckets: int = 4) -> None:
        if window_s <= 0 or buckets < 1:
            raise ValueError("need window_s > 0 and buckets >= 1")
        self._count = count
        self._bucket_s = window_s / buckets
        self._buckets = buckets
        self._slots: list[tuple[int, list[float]]] = []

    def update(self, now_s: float, draw_mw: Sequence[float]) -> None:
        bucket = math.floor(now_s / self._bucket_s)
        if self._slots and self._slots[-1][0] == bucket:
            cur = self._slots[-1][1]
            for i, d in enumerate(draw_mw):
                if d > cur[i]:
                    cur[i] = d
        else:
            self._slots.append((bucket, [float(d) for d in draw_mw]))
        while self._slots[0][0] <= bucket - self._buckets:
            self._slots.pop(0)

    def peaks(self) -> list[float]:
        if not self._slots:
            return [0.0] * self._count
        out = list(self._slots[0][1])
        for _, values in self._slots[1:]:
            for i, v in enumerate(values):
                if v > out[i]:
                    out[i] = v
        return out


class SettleTracker:
    """Remembers which GPUs had their limit raised recently (their draw still climbing).

    A raised GPU is 'settling' for ``settle_s`` after the raise, so :func:`want_mw` does not
    reclaim watts the firmware has not yet let it use (cap-up is slow: hundreds of ms).
    """

    def __init__(self, count: int, settle_s: float, min_raise_mw: float) -> None:
        self.settle_s = settle_s
        self.min_raise_mw = min_raise_mw
        self._until_s = [-math.inf] * count

    def settling(self, now_s: float) -> list[bool]:
        return [now_s < u for u in self._until_s]

    def note_limits(self, now_s: float, old_mw: Sequence[int], new_mw: Sequence[int]) -> None:
        for i, (o, n) in enumerate(zip(old_mw, new_mw, strict=True)):
            if n - o > self.min_raise_mw:
                self._until_s[i] = now_s + self.settle_s
