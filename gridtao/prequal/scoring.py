"""Compliance scoring: pure functions from a measured trace to pass/fail rules with numbers.

A :class:`Trace` holds samples (time s, frequency sent to the unit Hz, required and delivered
reduction W at the settlement point, delivered IT reduction W). "Delivered" is the reference
power (measured before the test) minus the power now, so a cut is positive; FCR-N's upward
regulation is negative. Every rule is a :class:`RuleResult` ``{name, value, limit, passed}``
with the measured value, the limit and the unit; a test passes when all its rules pass.

How the rules measure (the TSOs' limits: docs/sources.md#grid-products; the conventions ours):

* Band: "reached" and "held" mean within 5 % of the capacity below the requirement (the
  steady-state tolerance -5 %), "over-delivery" more than 20 % above it. Every comparison is
  made in the direction required: where the requirement is negative (FCR-N above 50 Hz: draw
  more) a shortfall is delivering less than that magnitude, never "over-delivery".
* Steady state is scored on the magnitude required, as a share of what is required in the
  window (-5 % / +20 % of it), so a half-capacity step is held to half the tolerance in watts.
* Activation times are read on the raw samples (>= 10 Hz), interpolated between samples, and
  a crossing counts only if the next ``CONFIRM_S`` stay in the band (one lucky sample is not an
  activation). Steady-state, hold and over-delivery use 1 s centred means, so a workload's
  sub-second swings in the delivered power do not decide them.
* Ramp rates (FCR-D static) are the least-squares slope of the raw samples between the 90 % and
  10 % points of the ramp, in % of capacity per second (a fit, not two noisy end points). The
  FFR ramp-out is judged over the whole ramp-out instead, as the steepest fall of the 1 s mean
  over any 1 s (:func:`steepest_fall`): a last step at the end of a release counts.
* FCR-D dynamic test: ``dP_ss`` is the mean delivered power over the last half of the hold that
  follows the 0.24 Hz/s ramp; dP(7.5 s) is the 1 s mean around 7.5 s after the ramp starts; the
  energy is the trapezoid integral of the delivered power over the first 7.5 s.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

# The measurement helpers and their two settings live in series.py; named here too, as the
# rules modules use them (``sc.smoothed``, ``sc.SMOOTH_S``, ...).
from gridtao.prequal.series import CONFIRM_S as CONFIRM_S
from gridtao.prequal.series import SMOOTH_S as SMOOTH_S
from gridtao.prequal.series import first_crossing as first_crossing
from gridtao.prequal.series import interp as interp
from gridtao.prequal.series import slope_per_s as slope_per_s
from gridtao.prequal.series import smoothed as smoothed
from gridtao.prequal.series import window_mean as window_mean
from gridtao.prequal.series import window_means as window_means

BAND = 0.05  # steady-state tolerance below the requirement, fraction of capacity
OVER = 0.20  # steady-state tolerance above it (over-delivery), fraction of capacity

FFR_FULL_ACTIVATION_S = {49.7: 1.3, 49.6: 1.0, 49.5: 0.7}  # Fingrid / Svenska kraftnät
FFR_SUPPORT_S = {"short": 5.0, "long": 30.0}
FFR_RAMP_OUT_PCT_PER_S = 20.0  # short support only
ERCOT_FFR_ACTIVATION_S = 0.25  # 15 cycles at 60 Hz
FCR_D_START_HZ, FCR_D_FULL_HZ = 49.9, 49.5
FCR_D_T_S, FCR_D_POWER_RATIO, FCR_D_ENERGY_S = 7.5, 0.86, 3.2
FCR_D_STATIC_START_S, FCR_D_STATIC_WAIT_S, FCR_D_STATIC_RAMP_PCT_PER_S = 2.5, 60.0, 2.5
FCR_N_LOW_HZ, FCR_N_HIGH_HZ = 49.9, 50.1
DR_START_ALLOWANCE_S = 1.0  # ours: full by the event start + one tier-2 period
# Demand response is settled on interval means of metered energy (PJM load management:
# hourly; OpenADR reports: intervals), not on one-second power. Ours: 5-minute intervals,
# stricter than hourly; the bench scales them with its time scale like every hold.
DR_INTERVAL_S = 300.0
# Normal frequency: the summed enforced limits may not drop by more than this (% of capacity;
# rounding of per-GPU mW limits only).
QUIET_LIMIT_DROP_PCT = 0.5


@dataclass(frozen=True)
class RuleResult:
    """One rule's outcome. ``limit`` is a bound (``op`` ``<=``/``>=``) or a [low, high] pair
    (``op`` ``in``); ``value`` is None only when the quantity never happened (see detail)."""

    name: str
    value: float | None
    limit: float | tuple[float, float]
    passed: bool
    unit: str
    op: str
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        limit: object = list(self.limit) if isinstance(self.limit, tuple) else self.limit
        value = None if self.value is None else round(self.value, 4)
        return {"name": self.name, "value": value, "limit": limit, "passed": self.passed,
                "unit": self.unit, "op": self.op, "detail": self.detail}

    @property
    def shown(self) -> str:
        """The value as a reader wants it: 3 significant digits, float noise (below 1e-9 in
        magnitude, e.g. a sum of cancelling samples) shown as 0, ``n/a`` when undefined."""
        if self.value is None:
            return "n/a"
        return f"{0.0 if abs(self.value) < 1e-9 else self.value:.3g}"

    def describe(self) -> str:
        shown = self.shown
        lim = (f"[{self.limit[0]:g}, {self.limit[1]:g}]" if isinstance(self.limit, tuple)
               else f"{self.op} {self.limit:g}")
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict}  {self.name}: {shown} {self.unit} (limit {lim} {self.unit})"


@dataclass(frozen=True)
class Trace:
    """Samples on one time base (s from the test's start), sorted by time; powers in W."""

    t_s: Sequence[float]
    hz: Sequence[float]
    required_w: Sequence[float]
    delivered_w: Sequence[float]
    delivered_it_w: Sequence[float]

    def __post_init__(self) -> None:
        n = len(self.t_s)
        if any(len(s) != n for s in (self.hz, self.required_w, self.delivered_w,
                                     self.delivered_it_w)):
            raise ValueError("every trace column needs one value per sample")
        if n < 2:
            raise ValueError("a trace needs at least two samples")


def passed(rules: Sequence[RuleResult]) -> bool:
    """A test (or product) passes when it has rules and all of them pass."""
    return bool(rules) and all(r.passed for r in rules)


def _rule(name: str, value: float | None, limit: float, op: str, unit: str,
          detail: str = "") -> RuleResult:
    if value is None or math.isnan(value):
        return RuleResult(name, None, limit, False, unit, op, detail or "not measured")
    ok = value <= limit if op == "<=" else value >= limit
    return RuleResult(name, value, limit, ok, unit, op, detail)


def _pct(w: float, capacity_w: float) -> float:
    return 100.0 * w / capacity_w


# ---- generic rules ----------------------------------------------------------------------------


def activation_time(tr: Trace, *, event_s: float, capacity_w: float, limit_s: float,
                    horizon_s: float, name: str = "full_activation_time") -> RuleResult:
    """Time from ``event_s`` until delivered >= (1 - BAND) x capacity (and stays CONFIRM_S)."""
    level = (1.0 - BAND) * capacity_w
    at = first_crossing(tr.t_s, tr.delivered_w, level, start_s=event_s,
                        end_s=event_s + horizon_s)
    due = _pct(interp(tr.t_s, tr.delivered_w, event_s + limit_s), capacity_w)
    peak = _pct(max(smoothed(tr.t_s, tr.delivered_w, 0.2)), capacity_w)
    if at is None:
        return _rule(name, None, limit_s, "<=", "s",
                     f"never reached {100 * (1 - BAND):.0f} % of capacity within {horizon_s:g} s"
                     f"; {due:.0f} % of capacity at {limit_s:g} s, peak {peak:.0f} %")
    return _rule(name, at - event_s, limit_s, "<=", "s",
                 f"{due:.0f} % of capacity at {limit_s:g} s")


def power_at(tr: Trace, *, at_s: float, capacity_w: float, name: str) -> RuleResult:
    """Delivered power at ``at_s`` (interpolated), % of capacity; limit >= 100 - BAND."""
    value = _pct(interp(tr.t_s, tr.delivered_w, at_s), capacity_w)
    return _rule(name, value, 100.0 * (1.0 - BAND), ">=", "%")


def steady_state(tr: Trace, *, a_s: float, b_s: float, capacity_w: float,
                 name: str = "steady_state") -> RuleResult:
    """Steady state over [a_s, b_s] on the magnitude required, % of what is required there:
    ``100 x (sign x mean delivered - |mean required|) / |mean required|`` with ``sign`` the
    requirement's (FCR-N's upward regulation is negative), so a shortfall is negative in either
    direction; limits [-5, +20] %. Where (nearly) nothing is required (|mean required| below
    5 % of ``capacity_w``, W) there is no direction and no share: the mean of (delivered -
    required) in % of ``capacity_w``, same limits."""
    lim = (-100.0 * BAND, 100.0 * OVER)
    req = window_mean(tr.t_s, tr.required_w, a_s, b_s)
    got = window_mean(tr.t_s, tr.delivered_w, a_s, b_s)
    if math.isnan(req) or math.isnan(got):
        return RuleResult(name, None, lim, False, "%", "in", "no samples in the window")
    span = f"over {a_s:.1f}-{b_s:.1f} s"
    if abs(req) < BAND * capacity_w:
        value = _pct(got - req, capacity_w)
        detail = (f"nothing required (mean {req:.0f} W) {span}: delivered {got:.0f} W, "
                  f"% of the {capacity_w:g} W capacity")
    else:
        sign = 1.0 if req > 0 else -1.0
        value = 100.0 * (sign * got - abs(req)) / abs(req)
        way = "reduction" if req > 0 else "increase (drawing more)"
        detail = (f"required {abs(req):.0f} W {way}, delivered {sign * got:.0f} W {span}; "
                  "% of what is required")
    return RuleResult(name, value, lim, lim[0] <= value <= lim[1], "%", "in", detail)


def _errors(tr: Trace) -> list[float]:
    """1 s means of the error in the direction required (W): delivered - required where the
    requirement is >= 0, required - delivered where it is negative (drawing more), so a
    shortfall is negative and an excess positive either way."""
    err = [d - r if r >= 0 else r - d
           for d, r in zip(tr.delivered_w, tr.required_w, strict=True)]
    return smoothed(tr.t_s, err)


def hold(tr: Trace, *, windows: Sequence[tuple[float, float]], capacity_w: float,
         name: str = "hold") -> RuleResult:
    """No fall-back: the worst 1 s-mean error in the direction required over ``windows``, % of
    capacity; limit >= -5 %."""
    err = _errors(tr)
    worst = math.inf
    for a, b in windows:
        lo, hi = bisect.bisect_left(tr.t_s, a), bisect.bisect_right(tr.t_s, b)
        if hi > lo:
            worst = min(worst, min(err[lo:hi]))
    value = None if worst == math.inf else _pct(worst, capacity_w)
    return _rule(name, value, -100.0 * BAND, ">=", "%")


def _interval_means(tr: Trace, window: tuple[float, float], interval_s: float
                    ) -> tuple[list[float], str] | None:
    """The means of (delivered - required), W, over ``window`` cut into consecutive
    settlement intervals of ``interval_s`` (a remainder shorter than half an interval joins the
    interval before), and words for what was averaged; None when there is nothing to average."""
    a, b = window
    if not (interval_s > 0 and b > a):
        return None
    count = max(1, round((b - a) / interval_s))
    edges = [a + k * interval_s for k in range(count)] + [b]
    err = [d - r for d, r in zip(tr.delivered_w, tr.required_w, strict=True)]
    means = [window_mean(tr.t_s, err, lo, hi) for lo, hi in itertools.pairwise(edges)]
    means = [m for m in means if not math.isnan(m)]
    if not means:
        return None
    lengths = [hi - lo for lo, hi in itertools.pairwise(edges)]
    if all(abs(n - interval_s) < 1e-6 for n in lengths):
        what = f"{len(means)} interval mean(s) of {interval_s:g} s"
    else:  # the window is not a whole number of intervals: say what was averaged
        what = (f"{len(means)} mean(s) over " + ", ".join(f"{n:.3g} s" for n in lengths)
                + f" (settlement interval {interval_s:g} s)")
    return means, what


def interval_hold(tr: Trace, *, window: tuple[float, float], interval_s: float,
                  capacity_w: float, name: str) -> RuleResult:
    """Settlement-interval hold: the worst interval mean of (delivered - required) over
    ``window`` (:func:`_interval_means`), % of capacity, must be >= -5 %."""
    found = _interval_means(tr, window, interval_s)
    if found is None:
        return _rule(name, None, -100.0 * BAND, ">=", "%", "no samples in the window")
    means, what = found
    return _rule(name, _pct(min(means), capacity_w), -100.0 * BAND, ">=", "%",
                 f"worst of {what}")


def interval_over_delivery(tr: Trace, *, window: tuple[float, float], interval_s: float,
                           capacity_w: float, name: str) -> RuleResult:
    """Over-delivery as settled: the largest interval mean of (delivered - required) over
    ``window`` (:func:`_interval_means`), % of capacity, must be <= +20 %. Demand response is
    paid on interval energy, so a second of deeper cut inside an interval is not an excess."""
    found = _interval_means(tr, window, interval_s)
    if found is None:
        return _rule(name, None, 100.0 * OVER, "<=", "%", "no samples in the window")
    means, what = found
    return _rule(name, _pct(max(means), capacity_w), 100.0 * OVER, "<=", "%",
                 f"largest of {what}")


def limit_drop(t_s: Sequence[float], limit_w: Sequence[float], *, after_s: float,
               capacity_w: float, name: str) -> RuleResult:
    """The largest drop of the summed enforced limits below their level at ``after_s``, % of
    capacity; limit <= ``QUIET_LIMIT_DROP_PCT``."""
    if len(limit_w) != len(t_s):
        raise ValueError("need one summed limit per sample")
    start = bisect.bisect_left(t_s, after_s)
    if start >= len(limit_w):
        return _rule(name, None, QUIET_LIMIT_DROP_PCT, "<=", "%", "no samples")
    drop = max(limit_w[start] - w for w in limit_w[start:])
    return _rule(name, _pct(drop, capacity_w), QUIET_LIMIT_DROP_PCT, "<=", "%",
                 "largest drop of the summed enforced limits, % of capacity (0: they never "
                 "dropped)")


def over_delivery(tr: Trace, *, windows: Sequence[tuple[float, float]], capacity_w: float,
                  name: str = "over_delivery") -> RuleResult:
    """The largest 1 s-mean excess of delivered over required in ``windows``, in the direction
    required (drawing less than an upward requirement asks is a shortfall, not an excess), % of
    capacity; limit <= +20 %."""
    err = _errors(tr)
    worst = -math.inf
    for a, b in windows:
        lo, hi = bisect.bisect_left(tr.t_s, a), bisect.bisect_right(tr.t_s, b)
        if hi > lo:
            worst = max(worst, max(err[lo:hi]))
    value = None if worst == -math.inf else _pct(worst, capacity_w)
    return _rule(name, value, 100.0 * OVER, "<=", "%")


def ramp_down_rate(tr: Trace, *, start_s: float, end_s: float, capacity_w: float,
                   limit_pct_per_s: float, name: str) -> RuleResult:
    """How fast the delivered power falls back after ``start_s``: the least-squares slope
    between its 90 % and 10 % points, % of capacity per second (positive = falling)."""
    hi_t = first_crossing(tr.t_s, tr.delivered_w, 0.9 * capacity_w, start_s=start_s,
                          end_s=end_s, above=False, confirm_s=0.0)
    lo_t = None if hi_t is None else first_crossing(
        tr.t_s, tr.delivered_w, 0.1 * capacity_w, start_s=hi_t, end_s=end_s, above=False,
        confirm_s=0.0)
    if hi_t is None or lo_t is None:
        return _rule(name, None, limit_pct_per_s, "<=", "%/s",
                     "the delivered power did not fall from 90 % to 10 % of capacity")
    if lo_t - hi_t < 0.15:  # a step: fewer samples than a fit needs
        value = 80.0 / max(lo_t - hi_t, 1e-3)
    else:
        value = -_pct(slope_per_s(tr.t_s, tr.delivered_w, hi_t, lo_t), capacity_w)
    return _rule(name, value, limit_pct_per_s, "<=", "%/s",
                 f"90 % -> 10 % of capacity from {hi_t:.2f} s to {lo_t:.2f} s")


def steepest_fall(tr: Trace, *, start_s: float, end_s: float, capacity_w: float,
                  limit_pct_per_s: float, name: str) -> RuleResult:
    """How fast the delivered power falls back over the whole ramp-out: the steepest fall of
    the 1 s centred mean of the delivered power (:func:`window_means`) over any 1 s in
    [start_s, end_s] (s), % of ``capacity_w`` (W) per second. A linear ramp reads its rate; a
    ramp that ends with the last of the reduction let go in one step reads the ramp plus that
    step."""
    s = window_means(tr.t_s, tr.delivered_w)
    worst, at = -math.inf, start_s
    lo = bisect.bisect_left(tr.t_s, start_s)
    for k in range(lo, len(tr.t_s)):
        t = tr.t_s[k]
        if t + 1.0 > end_s or t + 1.0 > tr.t_s[-1]:
            break
        fall = s[k] - interp(tr.t_s, s, t + 1.0)
        if fall > worst:
            worst, at = fall, t
    if worst == -math.inf:
        return _rule(name, None, limit_pct_per_s, "<=", "%/s",
                     f"the ramp-out {start_s:.2f}-{end_s:.2f} s is shorter than 1 s of samples")
    before, after = _pct(interp(tr.t_s, s, at), capacity_w), _pct(
        interp(tr.t_s, s, at + 1.0), capacity_w)
    return _rule(name, _pct(worst, capacity_w), limit_pct_per_s, "<=", "%/s",
                 f"steepest 1 s fall of the 1 s mean over the ramp-out {start_s:.2f}-"
                 f"{end_s:.2f} s: {before:.0f} % -> {after:.0f} % of capacity at {at:.2f} s")
