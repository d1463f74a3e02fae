"""Work-aware split of a node cut: take each watt where it costs the least work.

Tier 1 splits its node budget ``B`` (mW) between GPUs (gridtao/control/tier1/allocation.py).
The proportional split gives every GPU that presses on its limit the same level of its range;
this one maximises the work the node keeps. Its value model, per GPU ``i`` at limit ``c`` (mW):

    V_i(c) = w_i * (D_i / U_i) * (min(c, D_i) / D_i) ** b_i

in GPU-seconds of full-speed work per second: ``D_i`` is the draw its job asks for (tier 1's
``want``: recent peak plus headroom, or its upper limit while it presses on its limit), ``U_i``
its upper limit (the GPU at ``U_i`` under full load does one GPU-second of work per second),
``b_i`` in (0, 1] the exponent of its throughput curve (rate ~ power ** b under a limit, at a
steady demand: gridtao/gpu/sim/throughput.py, gridtao/work/model.py) and ``w_i >= 0`` what one
GPU-second of its work is worth next to the others' (1 by default: all work alike). A limit
above ``D_i`` costs nothing; below it, the marginal work lost per watt is

    m_i(c) = w_i * b_i / U_i * (c / D_i) ** (b_i - 1)       (c < D_i; 0 above)

which grows as ``c`` falls (concave curves). Two facts a work model may add to a curve (its
``free_mw``: the mean draw of the job running free, from before the cut; ``queued``: whether its
work waits for it):

* tier 1's want is a ceiling, not a demand: while a GPU presses on its limit it is the upper
  limit, whatever the job would draw. With ``free_mw`` known, the demand a cut meets is taken as
  ``D_i = min(want_i, (1 + DEMAND_MARGIN) * free_i)`` (a job's draw swings above its mean), so
  GPUs running the same job are valued alike whichever of them presses on its limit now;
* a queued job (an inference server: requests that arrive while a cap holds it back wait, and
  it catches up running flat out) loses nothing while what it can serve at its limit, flat out,
  exceeds what arrives, the mean draw ``free_i`` its arrivals take unhindered. It keeps all its
  work down to the knee ``K_i = min(D_i, U_i * ((1 + DEMAND_MARGIN) * free_i / U_i) ** (1 /
  b_i))`` and below it loses as a job asking for ``K_i`` would: ``(c / D_i)`` becomes ``(c /
  K_i)`` above (the value still scaled by ``D_i``), so the first watts it gives cost nothing.

The optimum of ``sum V_i`` under ``sum c_i = B`` and ``lower_i <= c_i <= min(want_i, U_i)`` is
water-filling on ``m``: one level ``lam``, with every GPU strictly inside its bounds at
``m_i(c_i) = lam``; those held at their lower bound would give more watts at less than ``lam``
each, and those left at ``D_i`` would lose more than ``lam`` on their first watt. ``lam`` is
found by bisection in ``log(lam)`` (the total is non-increasing in it), then the two
bracketing splits are blended so the total is exactly ``B``: GPUs tied at ``lam`` (linear
curves, ``b = 1``) share what is left in proportion to their range, as the proportional split
would.

Pure functions of their arguments: no clock, no I/O, no state (:class:`WorkAwareSplit`, which
tier 1 calls, adds a hold-off after each cut starts). Plain Python floats (8-64 GPUs: cheaper
than numpy's per-call set-up); one call costs O(n x 100) power evaluations at most (about
0.15 ms for 8 GPUs). Called on tier 1's thread at its rate; the island's trigger path never
calls it: the island's caps are cut proportionally as before, and tier 1 re-splits them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gridtao.clock import Clock
from gridtao.control.tier1.allocation import proportional_levels

__all__ = ["BLEND_S", "DEMAND_MARGIN", "HOLD_OFF_S", "WorkAwareSplit", "WorkCurve",
           "marginal_work_per_mw", "work_aware_levels_mw", "work_value"]

#: Bisection stops when the two bracketing totals are this close, mW (or after MAX_ITER).
TOTAL_TOLERANCE_MW = 0.5
MAX_ITER = 100
#: A job's draw swings above its mean free draw by up to this share (a training step's compute
#: phase, an inference server's bursts): the demand a cut meets, and a queued job's knee, leave
#: it (so the queue a burst builds drains).
DEMAND_MARGIN = 0.1


@dataclass(frozen=True)
class WorkCurve:
    """A GPU's throughput curve under a limit: ``exponent`` in (0, 1] (rate ~ power ** exponent
    at a steady demand); ``weight`` >= 0, the worth of one GPU-second of its full-speed work
    (0: the GPU does no work worth keeping); ``free_mw`` >= 0, the mean draw of its job running
    free, mW (0: not known); ``queued``: its work waits for it (an inference server's requests).
    See the module docstring."""

    exponent: float
    weight: float = 1.0
    free_mw: float = 0.0
    queued: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.exponent) and 0.0 < self.exponent <= 1.0):
            raise ValueError(f"exponent must be in (0, 1], got {self.exponent!r}")
        if not (math.isfinite(self.weight) and self.weight >= 0.0):
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight!r}")
        if not (math.isfinite(self.free_mw) and self.free_mw >= 0.0):
            raise ValueError(f"free_mw must be a finite number >= 0, got {self.free_mw!r}")

    def demand_mw(self, want_mw: float) -> float:
        """``D``: the demand a cut meets, mW: ``want_mw`` (tier 1's), at most the free draw
        plus its margin when that is known; at least 1 mW."""
        if self.free_mw > 0.0:
            want_mw = min(want_mw, (1.0 + DEMAND_MARGIN) * self.free_mw)
        return max(1.0, want_mw)

    def knee_mw(self, want_mw: float, upper_mw: float) -> float:
        """``K``: where the job starts to lose work, mW: its demand (:meth:`demand_mw`), or a
        queued job's knee below it (see the module docstring); at least 1 mW."""
        demand = self.demand_mw(want_mw)
        if not self.queued or self.free_mw <= 0.0 or upper_mw <= 0.0:
            return demand
        load = min(1.0, (1.0 + DEMAND_MARGIN) * self.free_mw / upper_mw)
        return max(1.0, min(demand, float(upper_mw * load ** (1.0 / self.exponent))))


def work_value(c_mw: float, want_mw: float, upper_mw: float, curve: WorkCurve) -> float:
    """``V(c)``: the work rate at limit ``c_mw``, GPU-seconds of full-speed work per second
    (times the curve's weight), for tier 1's want ``want_mw``. 0 when the GPU asks for
    nothing."""
    if want_mw <= 0.0 or upper_mw <= 0.0:
        return 0.0
    x = min(1.0, max(0.0, c_mw / curve.knee_mw(want_mw, upper_mw)))
    return float(curve.weight * curve.demand_mw(want_mw) / upper_mw * x**curve.exponent)


def marginal_work_per_mw(c_mw: float, want_mw: float, upper_mw: float,
                         curve: WorkCurve) -> float:
    """``m(c)``: the work lost per mW taken at limit ``c_mw`` (0 at or above the knee: the
    demand, or a queued job's knee), for tier 1's want ``want_mw``."""
    if upper_mw <= 0.0 or want_mw <= 0.0:
        return 0.0
    knee = curve.knee_mw(want_mw, upper_mw)
    if c_mw >= knee:
        return 0.0
    if c_mw <= 0.0:
        return math.inf
    return float(curve.weight * curve.exponent * curve.demand_mw(want_mw) / (upper_mw * knee)
                 * (c_mw / knee) ** (curve.exponent - 1.0))


def _level_at(lam: float, k: float, b: float, demand: float, lo: float, top: float) -> float:
    """The limit where ``m = lam`` for a GPU with ``m(c) = k * (c/demand) ** (b-1)`` below
    ``demand`` (0 above it: any ``lam > 0`` takes it at least down to ``demand``), clipped
    into ``[lo, top]``; linear curves (``b == 1``) sit at ``lo`` from ``lam >= k`` on."""
    top = max(lo, min(top, demand))
    if k <= 0.0:
        return lo
    if b >= 1.0:
        return lo if lam >= k else top
    # In logs: near b = 1 the power (lam / k) ** (1 / (b - 1)) overflows a float.
    log_c = math.log(demand) + math.log(lam / k) / (b - 1.0)
    if log_c >= math.log(top):
        return top
    c = math.exp(log_c)
    return lo if c <= lo else c


def work_aware_levels_mw(
    budget_mw: float,
    want_mw: Sequence[float],
    lower_mw: Sequence[float],
    upper_mw: Sequence[float],
    curves: Sequence[WorkCurve | None],
) -> list[float] | None:
    """Per-GPU limits (mW floats) that sum to ``budget_mw`` (clamped into the sum of the lower
    and of the upper bounds) and equalise the marginal work per watt (see the module
    docstring), each in ``[lower, upper]``.

    ``lower_mw``: each GPU's minimum or priority floor; ``upper_mw``: its upper limit;
    ``want_mw``: its demand. A cut (below the sum of the wants) leaves each GPU at most its
    want. A budget above them gives each its want, and the watts to spare where they would keep
    the most work should demand rise to the upper limits (steep curves first). Returns None
    where the curves cannot rank the GPUs, so the caller splits proportionally: a GPU without
    a curve, every curve worth nothing, or every GPU with room on one and the same straight
    line.
    """
    n = len(want_mw)
    if not (len(lower_mw) == len(upper_mw) == len(curves) == n):
        raise ValueError("want, lower, upper and curves must have one entry per GPU")
    if n == 0 or any(c is None for c in curves):
        return None
    known = [c for c in curves if c is not None]
    up = [float(u) for u in upper_mw]
    lo = [min(float(a), u) for a, u in zip(lower_mw, up, strict=True)]
    top = [max(a, min(u, float(w))) for a, u, w in zip(lo, up, want_mw, strict=True)]
    # k_i: the marginal work per mW at the demand point (x = 1).
    k = [cv.weight * cv.exponent / u if u > 0.0 else 0.0 for cv, u in zip(known, up, strict=True)]
    b = [cv.exponent for cv in known]
    if budget_mw >= math.fsum(top):  # not a cut: the spare watts, valued as if demand rose
        if budget_mw >= math.fsum(up):
            return up
        return _fill(budget_mw, k, b, up, top, up)
    if budget_mw <= math.fsum(lo):
        return lo
    demand = [max(float(w), t, 1.0) for w, t in zip(want_mw, top, strict=True)]
    knee = [cv.knee_mw(d, u) for cv, d, u in zip(known, demand, up, strict=True)]
    # Below its knee a GPU loses as one asking for the knee would, scaled by its demand.
    k = [ki * cv.demand_mw(d) / kn for ki, cv, d, kn in zip(k, known, demand, knee, strict=True)]
    return _fill(budget_mw, k, b, knee, lo, top)


def _fill(budget_mw: float, k: list[float], b: list[float], demand: list[float],
          lo: list[float], top: list[float]) -> list[float] | None:
    """Water-filling on ``m_i(c) = k_i * (c / demand_i) ** (b_i - 1)`` with each ``c_i`` in
    ``[lo_i, top_i]``, summing to ``budget_mw`` (strictly between the sums of the bounds);
    None when the curves cannot rank the GPUs with room."""
    room = [t - a > 0.0 for a, t in zip(lo, top, strict=True)]
    ranked = [(bi, ki) for bi, ki, r in zip(b, k, room, strict=True) if r]
    if all(ki <= 0.0 for _, ki in ranked) or (
            all(bi >= 1.0 for bi, _ in ranked) and len({ki for _, ki in ranked}) == 1):
        return None

    def split(lam: float) -> list[float]:
        return [_level_at(lam, ki, bi, d, a, t) if r else a
                for ki, bi, d, a, t, r in zip(k, b, demand, lo, top, room, strict=True)]

    # m_i ranges over [m_i(top_i), m_i(lo_i)]; outside the union of those ranges every GPU is
    # at one bound. GPUs worth nothing (k = 0) sit at their lower bound for any lam > 0.
    highs = [ki * min(1.0, a / d) ** (bi - 1.0) if a > 0.0 else math.inf
             for ki, bi, a, d in zip(k, b, lo, demand, strict=True)]
    lows = [ki * min(1.0, t / d) ** (bi - 1.0)
            for ki, bi, t, d in zip(k, b, top, demand, strict=True)]
    positive = [v for v, ki, r in zip(lows, k, room, strict=True) if ki > 0.0 and r]
    finite = [v for v, ki, r in zip(highs, k, room, strict=True)
              if ki > 0.0 and r and math.isfinite(v)]
    lam_lo = min(positive) * 0.5
    lam_hi = max(finite + positive) * 2.0
    under = split(lam_lo)  # the most any lam > 0 gives: working GPUs at their tops
    total_under = math.fsum(under)
    if total_under <= budget_mw:
        # Even at their knees the working GPUs leave watts over: the room above the knees and
        # the GPUs worth nothing take the rest in proportion (it costs no work either way).
        spare = budget_mw - total_under
        idle = [t - u for u, t in zip(under, top, strict=True)]
        idle_total = math.fsum(idle)
        share = 0.0 if idle_total <= 0.0 else min(1.0, spare / idle_total)
        return [u + share * r for u, r in zip(under, idle, strict=True)]
    over = split(lam_hi)
    total_over = math.fsum(over)
    if total_over > budget_mw:  # a lower bound of 0 mW: no finite lam reaches it
        over, total_over = list(lo), math.fsum(lo)
    log_lo, log_hi = math.log(lam_lo), math.log(lam_hi)
    for _ in range(MAX_ITER):
        if total_under - total_over <= TOTAL_TOLERANCE_MW:
            break
        mid = 0.5 * (log_lo + log_hi)
        levels = split(math.exp(mid))
        total = math.fsum(levels)
        if total >= budget_mw:
            log_lo, under, total_under = mid, levels, total
        else:
            log_hi, over, total_over = mid, levels, total
    gap = total_under - total_over
    theta = 0.0 if gap <= 0.0 else (budget_mw - total_over) / gap
    return [o + theta * (u - o) for o, u in zip(over, under, strict=True)]


#: Per-GPU curves now (None: none for that GPU, or no work model at all).
CurveSource = Callable[[], Sequence[WorkCurve | None] | None]

#: After a cut starts, the split stays proportional until the node is in its band, or this
#: long (s) at most, so it moves no watts before the response to a trigger is done ...
HOLD_OFF_S = 1.0
#: ... then blends into the work-aware split over this long (s).
BLEND_S = 1.0
#: A new cut: the budget fell by this share of the GPUs' upper limits since the last call (a
#: trigger or a deeper target; tier 1's own corrections move it far slower), or no cut was
#: split for NEW_CUT_GAP_S (s; within an event tier 1 may skip the split while the budget
#: covers every GPU's want).
NEW_CUT_DROP = 0.01
NEW_CUT_GAP_S = 5.0


class WorkAwareSplit:
    """Tier 1's node split (``allocation.NodeSplit``) from the curves ``curves()`` gives at
    each call (a cheap, thread-safe read of a snapshot). Returns None, so the split is
    proportional, while the curves cannot rank the GPUs.

    With ``clock`` (tier 1's), a cut is split proportionally until the node has reached its
    target (``reached()``, tier 1's ``at_target``, when given) or for ``hold_off_s`` at most,
    and blended into the work-aware split over the next ``blend_s``: moving watts toward a GPU
    raises its limit, which the firmware follows slowly, so doing it before the node has
    reached its target could only delay the response. Without a clock: work-aware at once.
    Called on tier 1's thread only."""

    def __init__(self, curves: CurveSource, *, clock: Clock | None = None,
                 hold_off_s: float = HOLD_OFF_S, blend_s: float = BLEND_S,
                 reached: Callable[[], bool] | None = None) -> None:
        self._curves = curves
        self._clock = clock
        self._hold_off_s = hold_off_s
        self._blend_s = blend_s
        self._reached = reached
        self._last_s = -math.inf
        self._hold_end = -math.inf  # when the current cut's proportional hold ends (s)
        self._last_budget_mw = math.inf

    def __call__(self, budget_mw: float, want_mw: Sequence[float], lower_mw: Sequence[int],
                 upper_mw: Sequence[int]) -> list[float] | None:
        weight = 1.0
        if self._clock is not None:
            now = self._clock.now()
            drop_mw = NEW_CUT_DROP * math.fsum(upper_mw)
            if now - self._last_s > NEW_CUT_GAP_S or budget_mw < self._last_budget_mw - drop_mw:
                self._hold_end = now + self._hold_off_s
            self._last_s, self._last_budget_mw = now, budget_mw
            if now < self._hold_end and self._reached is not None and self._reached():
                self._hold_end = now  # the response is done: no need to hold any longer
            age = now - self._hold_end
            if age < 0.0:
                return None
            weight = 1.0 if self._blend_s <= 0.0 else min(1.0, age / self._blend_s)
        curves = self._curves()
        if curves is None or len(curves) != len(want_mw):
            return None
        levels = work_aware_levels_mw(budget_mw, want_mw, lower_mw, upper_mw, curves)
        if levels is None or weight >= 1.0:
            return levels
        base = proportional_levels(budget_mw, want_mw, lower_mw, upper_mw)
        return [b + weight * (w - b) for b, w in zip(base, levels, strict=True)]
