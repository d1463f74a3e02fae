"""Deactivation and re-arm tests: a second activation after the first has ended, scored with
the same rules as the first.

A reserve is bought for every disturbance, not the first one only: after an activation ends
(frequency back to normal, the release ramp done and, for FFR, the re-arm time over) the
product must respond to a second disturbance as it did to the first. Each test plays one
activation, its deactivation, and a second activation (marks ``event``/``rearm_event``,
``dynamic``/``rearm_dynamic`` or ``step``/``rearm_step``), and scores each activation on its
own part of the trace with the product's rules; the second activation's rules are named
``...#2``.

* FFR (:func:`ffr_rearm`): a step 0.05 Hz below the threshold, the support and ramp-out, then
  the re-arm time (``rearm_s``, 900 s, shortened with the time scale like every hold and
  stated), and a second step ``REARM_MARGIN_S`` after the product is due to be ready.
* Dynamic FCR-D upwards (:func:`fcr_d_rearm`): the 0.24 Hz/s dynamic ramp 49.9 -> 49.0 Hz,
  held, back at 0.24 Hz/s to 50.0 Hz (the TSOs' "deactivation test 2", held 300 s scaled),
  then the same ramp again: the power and energy at 7.5 s, steady state and release are
  scored for both.
* FCR-D static (:func:`fcr_d_static_rearm`): the static test twice, the second step after
  the first activation's 60 s wait and ramp-down have ended.

Each activation is measured from its own reference, as a TSO measures each activation from the
power just before it (:func:`reference_windows`): the mean over ``BASELINE_S`` before the
test's lead ends for the first, and over ``BASELINE_S`` before the second's part of the trace
starts for the second. After the first activation the meter is not back at the first reference
(the facility's cooling lags the IT power by minutes), and a single reference would count that
shortfall as the second activation's delivery.

Times in s on the test's base (t = 0 at the first frequency sample), frequencies in Hz, powers
in W at the settlement point. Pure: nothing here imports the agent.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gridtao.prequal import rules as pr
from gridtao.prequal.scoring import RuleResult, Trace
from gridtao.prequal.shapes import BASELINE_S, LEAD_S, STATIC_RAMP_DOWN_S, Shape, _Builder

#: The second FFR trip comes this long after the product is due to be armed again (s).
REARM_MARGIN_S = 2.0
#: Allowed for an FFR ramp-out (s): a short-support ramp-out at the product's 90 % of 20 %/s
#: takes 5.6 s; the island's release goes on at that rate past the baseline for the bursts.
RAMP_OUT_ALLOWANCE_S = 8.0
#: The second activation's part of the trace starts this long before its mark (s): FCR-D's
#: 2 s at 49.9 Hz before its ramp belong to it, as they do to the first.
BEFORE_S = 2.0
SAMPLE_SLACK_S = 0.2  # a part's first sample may come this long after a hold's start
#: The mark of each test's second activation, by the first's.
SECOND = {"event": "rearm_event", "dynamic": "rearm_dynamic", "step": "rearm_step"}


@dataclass(frozen=True)
class ReferenceWindow:
    """Where a reference power is taken and from when it counts (s, the test's base): the mean
    over ``[start_s, end_s)`` is the reference of every sample from ``applies_from_s`` on, up
    to the next window's ``applies_from_s``."""

    applies_from_s: float
    start_s: float
    end_s: float


def reference_windows(shape: Shape) -> list[ReferenceWindow]:
    """The windows of a test's references, in time order: the ``BASELINE_S`` before its lead
    ends and, for a re-arm test, the ``BASELINE_S`` before its second activation's part starts
    (``BEFORE_S`` before the second mark), applying from that part's start."""
    lead = shape.marks.get("lead_end", LEAD_S)
    windows = [ReferenceWindow(-math.inf, max(0.0, lead - BASELINE_S), lead)]
    first = next((m for m in SECOND if m in shape.marks), None)
    if first is not None and SECOND[first] in shape.marks:
        split = shape.marks[SECOND[first]] - BEFORE_S
        windows.append(ReferenceWindow(split, split - BASELINE_S, split))
    return windows


def ffr_rearm(threshold_hz: float, *, support_s: float, rearm_s: float, full_rearm_s: float,
              nominal_hz: float = 50.0) -> Shape:
    """Two FFR trips (a step 0.05 Hz below ``threshold_hz``, 2 s low): the second
    ``REARM_MARGIN_S`` after the first's support (``support_s``), ramp-out (at most
    ``RAMP_OUT_ALLOWANCE_S``) and re-arm time (``rearm_s``; ``full_rearm_s`` the product's
    unshortened one) are over."""
    low = threshold_hz - 0.05
    b = _Builder(nominal_hz).hold(LEAD_S).mark("lead_end")
    b.step(low, "event").hold(2.0)
    wait = support_s + RAMP_OUT_ALLOWANCE_S + rearm_s + REARM_MARGIN_S
    b.step(nominal_hz, "recover").hold(wait - 2.0)
    b.step(low, "rearm_event").hold(2.0)
    b.step(nominal_hz, "recover_2").hold(support_s + RAMP_OUT_ALLOWANCE_S + 4.0)
    shape = b.shape("ffr-rearm", f"two trips to {low:g} Hz, the second {wait:g} s after the "
                    f"first (re-arm {rearm_s:g} s)", lagged=False,
                    nominal_frequency_hz=nominal_hz)
    if rearm_s < full_rearm_s - 1e-9:
        shape = _shortened(shape, f"re-arm time: {rearm_s:g} s of the product's "
                                  f"{full_rearm_s:g} s")
    return shape


def fcr_d_rearm(time_scale: float = 0.1) -> Shape:
    """The FCR-D dynamic test, its deactivation (0.24 Hz/s back to 50 Hz, held 300 s scaled)
    and the dynamic test again. Marks ``dynamic``, ``rearm_dynamic``."""
    b = _Builder(50.0).hold(LEAD_S).mark("lead_end").step(49.9).hold(2.0)
    b.ramp(49.0, 0.24, "dynamic").hold_scaled(60, time_scale, 15.0, "hold_49_0")
    b.ramp(50.0, 0.24, "deactivate").hold_scaled(300, time_scale, 20.0, "released")
    b.step(49.9).hold(2.0)
    b.ramp(49.0, 0.24, "rearm_dynamic").hold_scaled(60, time_scale, 15.0, "hold_49_0_2")
    b.ramp(50.0, 0.24, "deactivate_2").hold(10.0)
    return b.shape("fcr-d-rearm", "FCR-D upwards: 0.24 Hz/s to 49.0 Hz, back to 50 Hz, "
                   "and again", lagged=True)


def fcr_d_static_rearm(time_scale: float = 0.1, threshold_hz: float = 49.7) -> Shape:
    """The FCR-D static test twice: the second step once the first activation's 60 s wait
    above 49.9 Hz and its ramp-down are over. Marks ``step``, ``rearm_step``."""
    b = _Builder(50.0).hold(LEAD_S).mark("lead_end")
    # After the ramp-down, one more second and then the second activation's reference window.
    rest_s = 60.0 + STATIC_RAMP_DOWN_S + 1.0 + BASELINE_S + BEFORE_S
    for k in ("", "rearm_"):
        b.step(threshold_hz - 0.1, f"{k}step").hold_scaled(60, time_scale, 10.0, f"{k}hold_low")
        b.step(50.0, f"{k}recover").hold(rest_s)
    return b.shape("fcr-d-static-rearm", f"FCR-D static twice: step below {threshold_hz:g} Hz, "
                   "return, ramp-down, and again", lagged=True)


def _shortened(shape: Shape, what: str) -> Shape:
    return dataclasses.replace(shape, shortened=(*shape.shortened, what))


# ---- scoring ----------------------------------------------------------------------------------


def is_rearm(shape: Shape) -> bool:
    return any(second in shape.marks for second in SECOND.values())


def _part(tr: Trace, a_s: float, b_s: float) -> Trace:
    """The samples with ``a_s <= t < b_s``."""
    lo, hi = bisect.bisect_left(tr.t_s, a_s), bisect.bisect_left(tr.t_s, b_s)
    return Trace(tr.t_s[lo:hi], tr.hz[lo:hi], tr.required_w[lo:hi], tr.delivered_w[lo:hi],
                 tr.delivered_it_w[lo:hi])


def _renamed(rules: Sequence[RuleResult], suffix: str) -> list[RuleResult]:
    return [dataclasses.replace(r, name=r.name + suffix) for r in rules]


def score_rearm(spec: pr.ProductSpec, shape: Shape, t: Sequence[float], hz: Sequence[float],
                delivered: Sequence[float], delivered_it: Sequence[float]
                ) -> tuple[Trace, list[RuleResult]]:
    """The trace (with the requirement of both activations) and the rules of a re-arm test:
    each activation scored on its own part, the first from the test's start to ``BEFORE_S``
    before the second's mark, the second from there to the end (``...#2``)."""
    marks = shape.marks
    first = next(m for m in SECOND if m in marks)
    a1, a2 = marks[first], marks[SECOND[first]]
    split = bisect.bisect_left(t, a2)
    if spec.kind in ("ffr", "ercot-ffr"):
        for at in (a1, a2):
            pr.check_step_crossing(t, hz, spec, at, shape.title)
        required = (pr.required_step(t[:split], spec, a1)
                    + pr.required_step(t[split:], spec, a2))
    elif spec.kind == "fcr-d-up-static":
        required = (pr.required_static(t[:split], hz[:split], spec)
                    + pr.required_static(t[split:], hz[split:], spec))
    else:
        required = [pr.required_fcr_d(f, spec.capacity_w) for f in hz]
    tr = Trace(list(t), list(hz), required, list(delivered), list(delivered_it))
    end = t[-1] + 1.0
    score: Callable[[Trace, float], list[RuleResult]]
    if spec.kind in ("ffr", "ercot-ffr"):
        def score(part: Trace, at: float) -> list[RuleResult]:
            return pr.score_step(spec, part, event_s=at)
    elif spec.kind == "fcr-d-up-static":
        def score(part: Trace, at: float) -> list[RuleResult]:
            return pr.score_static(spec, part, event_s=at)
    else:
        lead = marks.get("lead_end", 0.0)

        def score(part: Trace, at: float) -> list[RuleResult]:
            a, b = part.t_s[0] - SAMPLE_SLACK_S, part.t_s[-1]
            holds = [h for h in shape.holds if a <= h.start_s < b]
            return pr.score_fcr_d(spec, part, holds=holds, dynamic_s=at, long_hold=None,
                                  after_s=max(lead, a))
    rules = score(_part(tr, t[0], a2 - BEFORE_S), a1)
    rules += _renamed(score(_part(tr, a2 - BEFORE_S, end), a2), "#2")
    return tr, rules
