"""What each grid product requires over a test, and which rules score it (pure).

The requirement is computed from the TSO's definition of the product and the frequency the
unit was sent (required.py), not replayed through gridtao's own product objects, so a bug there
cannot hide itself. Rule mechanics (bands, smoothing, crossings): scoring.py and series.py.
Times in s from the test's start, powers in W at the settlement point, capacity > 0.

* FFR / ERCOT FFR: full capacity from the frequency crossing, due within the full-activation
  time, held for the support duration (measured from full activation to the first fall below
  the band), then ramped out no faster than 20 %/s of capacity (FFR, short support), judged
  over the whole ramp-out as the steepest fall of the 1 s mean over any 1 s.
* FCR-D upwards (dynamic): capacity x (49.9 - f) / 0.4 clipped to [0, 1]; the 0.24 Hz/s test's
  dP(7.5 s) >= 0.86 dP_ss and energy >= 3.2 s x dP_ss; steady state -5/+20 % in every hold
  below 49.9 Hz; after 7.5 s the power may not fall back while frequency stays (the 49.5 Hz
  hold); back at 49.9 Hz or above, the cut is given back (mean excess <= +20 %).
* FCR-D static: full capacity within 2.5 s of the crossing, held until 60 s after the frequency
  is back above 49.9 Hz, then ramped down no faster than 2.5 %/s of capacity.
* FCR-N: capacity x (50 - f) / 0.1 clipped to [-1, 1]; steady state -5/+20 % of what is
  required at every level, in its direction (upward regulation is negative).
* Demand response: each event's schedule (ramp, hold, recovery); full by its start (+1 s),
  held and recovered no faster than scheduled, both on settlement-interval means
  (``DrWindow.interval_s``, scoring.DR_INTERVAL_S): DR is paid on metered energy per
  interval, so a training job's second-to-second swings are not a failure, a short interval is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gridtao.prequal import scoring as sc

# What each product requires lives in required.py; named here too (``rules.ProductSpec``, ...).
from gridtao.prequal.required import CROSSING_SLACK_S as CROSSING_SLACK_S
from gridtao.prequal.required import DrWindow as DrWindow
from gridtao.prequal.required import ProductSpec as ProductSpec
from gridtao.prequal.required import check_glitches as check_glitches
from gridtao.prequal.required import check_step_crossing as check_step_crossing
from gridtao.prequal.required import required_dr as required_dr
from gridtao.prequal.required import required_fcr_d as required_fcr_d
from gridtao.prequal.required import required_fcr_n as required_fcr_n
from gridtao.prequal.required import required_static as required_static
from gridtao.prequal.required import required_step as required_step
from gridtao.prequal.required import static_recovered_s as static_recovered_s
from gridtao.prequal.scoring import RuleResult, Trace
from gridtao.prequal.shapes import Hold


def score_step(spec: ProductSpec, tr: Trace, *, event_s: float) -> list[RuleResult]:
    """FFR / ERCOT FFR after a crossing at ``event_s`` (a step or a ramp)."""
    cap, act = spec.capacity_w, spec.full_activation_s
    horizon = act + spec.support_s + 5.0
    activation = sc.activation_time(tr, event_s=event_s, capacity_w=cap, limit_s=act,
                                    horizon_s=horizon)
    rules = [activation, sc.power_at(tr, at_s=event_s + act, capacity_w=cap,
                                     name="power_at_full_activation_time")]
    full = None if activation.value is None else event_s + activation.value
    if full is None:
        rules.append(sc.RuleResult("support_duration", 0.0, spec.support_s, False, "s", ">=",
                                   "never fully activated"))
        return rules
    fell = sc.first_crossing(tr.t_s, tr.delivered_w, (1.0 - sc.BAND) * cap, start_s=full,
                             end_s=tr.t_s[-1], above=False)
    support = (fell if fell is not None else tr.t_s[-1]) - full
    rules.append(sc._rule("support_duration", support, spec.support_s, ">=", "s",
                          "from full activation to the first fall below 95 % of capacity"))
    held = (full, full + min(support, spec.support_s))
    rules.append(sc.steady_state(tr, a_s=held[0], b_s=held[1], capacity_w=cap))
    rules.append(sc.over_delivery(tr, windows=[_inner(held)], capacity_w=cap))
    if spec.kind == "ffr" and spec.short_support:
        if fell is None:
            rules.append(sc._rule("ramp_out_rate", None, sc.FFR_RAMP_OUT_PCT_PER_S, "<=", "%/s",
                                  "no ramp-out in the trace: the delivered power never fell "
                                  "below 95 % of capacity"))
            return rules
        a, b = ramp_out_window(tr, fell=fell, capacity_w=cap)
        rules.append(sc.steepest_fall(tr, start_s=a, end_s=b, capacity_w=cap,
                                      limit_pct_per_s=sc.FFR_RAMP_OUT_PCT_PER_S,
                                      name="ramp_out_rate"))
    return rules


def ramp_out_window(tr: Trace, *, fell: float, capacity_w: float) -> tuple[float, float]:
    """The whole ramp-out (s): from 1 s before the support ended (``fell``: the first fall
    below 95 % of capacity) to 1 s after the 1 s mean of the delivered power is first back
    within 5 % of capacity of nothing (the reduction is gone), else the trace's end. After
    that the load's own swings are the load's, not the reserve's."""
    mean = sc.smoothed(tr.t_s, tr.delivered_w)
    gone = next((t for t, v in zip(tr.t_s, mean, strict=True)
                 if t > fell and v <= sc.BAND * capacity_w), None)
    return fell - 1.0, (tr.t_s[-1] if gone is None else min(tr.t_s[-1], gone + 1.0))


def score_quiet(spec: ProductSpec, tr: Trace, limit_w: Sequence[float], *,
                after_s: float) -> list[RuleResult]:
    """Normal frequency that never reaches a threshold: no activation, judged from the GPUs'
    summed enforced limits (``limit_w``, one per trace sample, read through NVML), not from
    power: a training node's own swings reach a fifth of a 1000 W capacity in a 1 s mean with
    no limit touched."""
    return [sc.limit_drop(tr.t_s, limit_w, after_s=after_s, capacity_w=spec.capacity_w,
                          name="no_false_activation")]


def _inner(window: tuple[float, float]) -> tuple[float, float]:
    """``window`` less half a smoothing width at each end (when it is long enough), so a 1 s
    mean inside it does not reach the edges where the requirement steps."""
    a, b = window
    half = sc.SMOOTH_S / 2
    return (a + half, b - half) if b - a > 2 * sc.SMOOTH_S else window


def _settled(h: Hold, settle_s: float) -> tuple[float, float]:
    """The part of a hold where the response should be steady: from ``settle_s`` in (at most
    half of it), to its end."""
    return (h.start_s + min(settle_s, (h.end_s - h.start_s) / 2), h.end_s)


def score_fcr_d(spec: ProductSpec, tr: Trace, *, holds: Sequence[Hold],
                dynamic_s: float | None, long_hold: tuple[float, float] | None,
                after_s: float) -> list[RuleResult]:
    """FCR-D dynamic: steady state in every hold after ``after_s``, the 7.5 s power and energy
    of the ramp starting at ``dynamic_s``, no fall-back in ``long_hold`` (ramp start, end)."""
    cap = spec.capacity_w
    rules: list[RuleResult] = []
    windows = []
    for h in holds:
        if h.start_s < after_s or h.end_s - h.start_s < 2.0:
            continue
        w = _settled(h, sc.FCR_D_T_S)
        if h.hz < sc.FCR_D_START_HZ:
            windows.append(w)
            rules.append(sc.steady_state(tr, a_s=w[0], b_s=w[1], capacity_w=cap,
                                         name=f"steady_state@{h.hz:.2f}Hz"))
        else:
            # Nothing required: the load's own swings are not scored, a cut left in place is.
            rules.append(released(tr, a_s=w[0], b_s=w[1], capacity_w=cap,
                                  name=f"released@{h.hz:.2f}Hz"))
    if dynamic_s is not None:
        after = next((h for h in holds if h.start_s >= dynamic_s), None)
        if after is not None:
            a, b = (after.start_s + after.end_s) / 2, after.end_s
            dp_ss = sc.window_mean(tr.t_s, tr.delivered_w, a, b)
            rules.extend(fcr_d_dynamic(tr, start_s=dynamic_s, dp_ss_w=dp_ss))
    if long_hold is not None:
        rules.append(sc.hold(tr, windows=[(long_hold[0] + sc.FCR_D_T_S, long_hold[1])],
                             capacity_w=cap, name="no_fall_back"))
    rules.append(sc.over_delivery(tr, windows=[_inner(w) for w in windows], capacity_w=cap))
    return rules


def released(tr: Trace, *, a_s: float, b_s: float, capacity_w: float,
             name: str = "released") -> RuleResult:
    """Where (nearly) nothing is required: the mean excess of delivered over required power in
    [a_s, b_s] stays within the over-delivery tolerance (a cut that was not given back), % of
    capacity; limit <= +20 %. A mean, not the 1 s over-delivery check: uncut, the node swings
    with its workload."""
    excess = [d - r for d, r in zip(tr.delivered_w, tr.required_w, strict=True)]
    value = sc.window_mean(tr.t_s, excess, a_s, b_s)
    return sc._rule(name, None if math.isnan(value) else 100.0 * value / capacity_w,
                    100.0 * sc.OVER, "<=", "%", f"mean over {a_s:.1f}-{b_s:.1f} s")


def fcr_d_dynamic(tr: Trace, *, start_s: float, dp_ss_w: float) -> list[RuleResult]:
    """dP(7.5 s) / dP_ss >= 0.86 and energy(0-7.5 s) / dP_ss >= 3.2 s."""
    t75 = start_s + sc.FCR_D_T_S
    if not dp_ss_w > 0:
        why = f"no steady-state response (dP_ss = {dp_ss_w:.0f} W)"
        return [sc._rule("power_7.5s", None, sc.FCR_D_POWER_RATIO, ">=", "x dP_ss", why),
                sc._rule("energy_7.5s", None, sc.FCR_D_ENERGY_S, ">=", "s x dP_ss", why)]
    p75 = sc.window_mean(tr.t_s, tr.delivered_w, t75 - 0.5, t75 + 0.5)
    ts = [start_s] + [t for t in tr.t_s if start_s < t < t75] + [t75]
    ps = [max(0.0, sc.interp(tr.t_s, tr.delivered_w, t)) for t in ts]
    energy = math.fsum((ts[k + 1] - ts[k]) * (ps[k + 1] + ps[k]) / 2 for k in range(len(ts) - 1))
    detail = f"dP_ss = {dp_ss_w:.0f} W"
    return [sc._rule("power_7.5s", p75 / dp_ss_w, sc.FCR_D_POWER_RATIO, ">=", "x dP_ss", detail),
            sc._rule("energy_7.5s", energy / dp_ss_w, sc.FCR_D_ENERGY_S, ">=", "s x dP_ss",
                     detail)]


def score_static(spec: ProductSpec, tr: Trace, *, event_s: float) -> list[RuleResult]:
    """FCR-D static after the nominal step at ``event_s``."""
    cap = spec.capacity_w
    activation = sc.activation_time(tr, event_s=event_s, capacity_w=cap,
                                    limit_s=sc.FCR_D_STATIC_START_S, horizon_s=30.0,
                                    name="activation_time")
    rules = [activation]
    back = static_recovered_s(tr.t_s, tr.hz, event_s + 0.1)
    if back is None:
        return [*rules, sc._rule("held_60s_after_recovery", None, -100 * sc.BAND, ">=", "%",
                                 "frequency never came back above 49.9 Hz")]
    full = event_s + (activation.value or sc.FCR_D_STATIC_START_S)
    held = _inner((full, back + sc.FCR_D_STATIC_WAIT_S))
    rules.append(sc.hold(tr, windows=[held], capacity_w=cap, name="held_60s_after_recovery"))
    rules.append(sc.over_delivery(tr, windows=[held], capacity_w=cap))
    rules.append(static_ramp_down(tr, after_s=full, capacity_w=cap))
    return rules


def static_ramp_down(tr: Trace, *, after_s: float, capacity_w: float) -> RuleResult:
    """FCR-D static's ramp-down (<= 2.5 %/s), judged like FFR's ramp-out over the whole ramp:
    the steepest 1 s fall of the 1 s mean from 1 s before the delivered power first falls
    below 95 % of capacity after ``after_s`` (full activation, s; a fall before the hold's
    end is a ramp-down too) to 1 s after it is back within 5 % of nothing. A ramp that lets
    the last of the reduction go in one step reads that step, which a fit between the 90 %
    and 10 % points would not see."""
    fell = sc.first_crossing(tr.t_s, tr.delivered_w, (1.0 - sc.BAND) * capacity_w,
                             start_s=after_s, end_s=tr.t_s[-1], above=False)
    if fell is None:
        return sc._rule("ramp_down_rate", None, sc.FCR_D_STATIC_RAMP_PCT_PER_S, "<=", "%/s",
                        "no ramp-down in the trace: the delivered power never fell below 95 % "
                        "of capacity")
    a, b = ramp_out_window(tr, fell=fell, capacity_w=capacity_w)
    return sc.steepest_fall(tr, start_s=a, end_s=b, capacity_w=capacity_w,
                            limit_pct_per_s=sc.FCR_D_STATIC_RAMP_PCT_PER_S,
                            name="ramp_down_rate")


def score_fcr_n(spec: ProductSpec, tr: Trace, *, holds: Sequence[Hold],
                after_s: float) -> list[RuleResult]:
    """FCR-N: steady state at every level after ``after_s`` and no over-delivery."""
    windows = [_settled(h, 1e9) for h in holds if h.start_s >= after_s]
    rules = [sc.steady_state(tr, a_s=a, b_s=b, capacity_w=spec.capacity_w,
                             name=f"steady_state@{h.hz:.2f}Hz#{k}")
             for k, (h, (a, b)) in enumerate(zip([h for h in holds if h.start_s >= after_s],
                                                 windows, strict=True))]
    rules.append(sc.over_delivery(tr, windows=[_inner(w) for w in windows],
                                  capacity_w=spec.capacity_w))
    return rules


def score_dr(tr: Trace, events: Sequence[DrWindow]) -> list[RuleResult]:
    """Per event: full by its start (+1 s), steady state and hold (interval means) over the
    hold, recovery no faster than scheduled (its mean), and over-delivery over the hold
    (interval means, as the hold: demand response is settled on interval energy), each as a
    share of that event's own amount (a 300 W excess is 60 % of a 500 W event, whatever a
    larger event beside it asked)."""
    rules: list[RuleResult] = []
    for ev in events:
        cap, end = ev.amount_w, ev.start_s + ev.duration_s
        rules.append(sc.activation_time(
            tr, event_s=ev.start_s, capacity_w=cap, limit_s=sc.DR_START_ALLOWANCE_S,
            horizon_s=ev.duration_s, name=f"full_at_start@{ev.event_id}"))
        window = (ev.start_s + sc.DR_START_ALLOWANCE_S, end)
        rules.append(sc.steady_state(tr, a_s=window[0], b_s=window[1], capacity_w=cap,
                                     name=f"steady_state@{ev.event_id}"))
        rules.append(sc.interval_hold(tr, window=window, interval_s=ev.interval_s,
                                      capacity_w=cap, name=f"hold@{ev.event_id}"))
        rules.append(sc.interval_hold(tr, window=(end, end + ev.recovery_s),
                                      interval_s=ev.interval_s, capacity_w=cap,
                                      name=f"recovery_not_early@{ev.event_id}"))
        rules.append(sc.interval_over_delivery(tr, window=window, interval_s=ev.interval_s,
                                               capacity_w=cap,
                                               name=f"over_delivery@{ev.event_id}"))
    return rules
