"""The compliance scorer on hand-made traces with known answers: every rule passes on a
compliant trace and fails on one that breaks it, with the measured value. Also the test
shapes (rates, the 1/(1+s) meter lag, normal frequency) and the requirement functions."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import pytest

from gridtao.prequal import rules as pr
from gridtao.prequal import scoring as sc
from gridtao.prequal import shapes
from gridtao.prequal.scoring import Trace

CAP = 1000.0
DT = 0.05  # the bench records at 20 Hz


def trace(delivered: Callable[[float], float], required: Callable[[float], float] = lambda t: 0.0,
          *, end_s: float = 30.0, hz: Callable[[float], float] = lambda t: 50.0) -> Trace:
    t = [k * DT for k in range(round(end_s / DT) + 1)]
    d = [delivered(x) for x in t]
    return Trace(t, [hz(x) for x in t], [required(x) for x in t], d, d)


def step_at(t0: float, level: float = CAP) -> Callable[[float], float]:
    return lambda t: level if t >= t0 else 0.0


def first_order(t0: float, tau_s: float, level: float = CAP) -> Callable[[float], float]:
    return lambda t: level * (1.0 - math.exp(-(t - t0) / tau_s)) if t >= t0 else 0.0


# ---- activation time -----------------------------------------------------------------------------


def test_activation_time_is_interpolated_and_passes_inside_the_limit() -> None:
    r = sc.activation_time(trace(step_at(1.5)), event_s=1.0, capacity_w=CAP, limit_s=0.7,
                           horizon_s=10.0)
    # The 95 % level is crossed between the samples at 1.45 s (0) and 1.50 s (CAP).
    assert r.passed and r.value == pytest.approx(0.4975, abs=1e-3)
    assert (r.limit, r.op, r.unit) == (0.7, "<=", "s")


def test_activation_time_fails_when_late_with_the_measured_value() -> None:
    # First-order response, tau 0.5 s: 95 % after 0.5 * ln 20 = 1.50 s.
    r = sc.activation_time(trace(first_order(1.0, 0.5)), event_s=1.0, capacity_w=CAP,
                           limit_s=0.7, horizon_s=10.0)
    assert not r.passed and r.value == pytest.approx(0.5 * math.log(20), abs=0.03)


def test_activation_time_never_reached_shows_what_was_delivered() -> None:
    # tau 2 s and the activation ends after 5 s: 92 % at best, never the 95 % band.
    deliver = first_order(1.0, 2.0)
    r = sc.activation_time(trace(lambda t: deliver(t) if t < 6.0 else 0.0), event_s=1.0,
                           capacity_w=CAP, limit_s=0.7, horizon_s=10.0)
    assert not r.passed and r.value is None
    assert "30 % of capacity at 0.7 s" in r.detail  # 1 - exp(-0.35) = 29.5 %


def test_a_single_lucky_sample_is_not_an_activation() -> None:
    r = sc.activation_time(trace(lambda t: CAP if abs(t - 1.2) < 0.01 or t >= 3.0 else 0.0),
                           event_s=1.0, capacity_w=CAP, limit_s=1.3, horizon_s=10.0)
    assert not r.passed and r.value == pytest.approx(1.9975, abs=1e-3)


def test_power_at_the_deadline() -> None:
    tr = trace(first_order(1.0, 0.5))
    assert sc.power_at(tr, at_s=1.0 + 2.0, capacity_w=CAP, name="p").passed  # 98 %
    bad = sc.power_at(tr, at_s=1.0 + 0.7, capacity_w=CAP, name="p")
    assert not bad.passed and bad.value == pytest.approx(100 * (1 - math.exp(-1.4)), abs=0.5)


# ---- steady state, hold, over-delivery -----------------------------------------------------------


@pytest.mark.parametrize(("level", "ok"), [(1.0, True), (0.96, True), (1.19, True),
                                           (0.90, False), (1.25, False)])
def test_steady_state_band_is_minus_5_plus_20(level: float, ok: bool) -> None:
    tr = trace(lambda t: level * CAP, lambda t: CAP)
    r = sc.steady_state(tr, a_s=5.0, b_s=20.0, capacity_w=CAP)
    assert r.passed is ok and r.value == pytest.approx(100 * (level - 1.0))
    assert r.limit == (-5.0, 20.0) and r.op == "in"


def test_hold_fails_on_a_fall_back_and_ignores_sub_second_swings() -> None:
    held = trace(lambda t: CAP * (0.97 if int(t * 10) % 2 else 1.0), lambda t: CAP)
    assert sc.hold(held, windows=[(2.0, 25.0)], capacity_w=CAP).passed
    # A one-sample dip to zero is a 5 % dent in the 1 s mean: still held.
    blip = trace(lambda t: 0.0 if abs(t - 10.0) < 0.01 else CAP, lambda t: CAP)
    assert sc.hold(blip, windows=[(2.0, 25.0)], capacity_w=CAP).passed
    sag = trace(lambda t: 0.85 * CAP if 12.0 <= t < 15.0 else CAP, lambda t: CAP)
    r = sc.hold(sag, windows=[(2.0, 25.0)], capacity_w=CAP)
    assert not r.passed and r.value == pytest.approx(-15.0, abs=0.1)
    # The same sag outside the scored window does not count.
    assert sc.hold(sag, windows=[(16.0, 25.0)], capacity_w=CAP).passed


def test_over_delivery_above_plus_20_percent_fails() -> None:
    ok = trace(lambda t: 1.15 * CAP, lambda t: CAP)
    assert sc.over_delivery(ok, windows=[(1.0, 20.0)], capacity_w=CAP).passed
    spike = trace(lambda t: 2.0 * CAP if abs(t - 5.0) < 0.01 else CAP, lambda t: CAP)
    assert sc.over_delivery(spike, windows=[(1.0, 20.0)], capacity_w=CAP).passed
    over = trace(lambda t: 1.3 * CAP if 5.0 <= t < 8.0 else CAP, lambda t: CAP)
    r = sc.over_delivery(over, windows=[(1.0, 20.0)], capacity_w=CAP)
    assert not r.passed and r.value == pytest.approx(30.0, abs=0.1)


# ---- ramp rates ----------------------------------------------------------------------------------


def ramp_from(t0: float, pct_per_s: float) -> Callable[[float], float]:
    return lambda t: CAP if t < t0 else CAP * max(0.0, 1.0 - (t - t0) * pct_per_s / 100)


def test_ramp_out_at_20_percent_per_s_passes_and_faster_fails() -> None:
    r = sc.ramp_down_rate(trace(ramp_from(5.0, 18.0)), start_s=1.0, end_s=30.0, capacity_w=CAP,
                          limit_pct_per_s=20.0, name="ramp_out_rate")
    assert r.passed and r.value == pytest.approx(18.0, abs=0.05)
    fast = sc.ramp_down_rate(trace(ramp_from(5.0, 40.0)), start_s=1.0, end_s=30.0,
                             capacity_w=CAP, limit_pct_per_s=20.0, name="ramp_out_rate")
    assert not fast.passed and fast.value == pytest.approx(40.0, abs=0.1)
    drop = sc.ramp_down_rate(trace(lambda t: CAP if t < 5.0 else 0.0), start_s=1.0, end_s=30.0,
                             capacity_w=CAP, limit_pct_per_s=20.0, name="ramp_out_rate")
    assert not drop.passed and drop.value is not None and drop.value > 100.0
    never = sc.ramp_down_rate(trace(lambda t: CAP), start_s=1.0, end_s=30.0, capacity_w=CAP,
                              limit_pct_per_s=20.0, name="ramp_out_rate")
    assert not never.passed and never.value is None


def test_ramp_rate_is_a_fit_not_two_noisy_points() -> None:
    wobble = ramp_from(5.0, 10.0)
    noisy = trace(lambda t: wobble(t) + (30.0 if round(t / DT) % 2 else -30.0))
    r = sc.ramp_down_rate(noisy, start_s=1.0, end_s=30.0, capacity_w=CAP,
                          limit_pct_per_s=10.2, name="ramp")
    assert r.passed and r.value == pytest.approx(10.0, abs=0.2)


# ---- FCR-D dynamic: 7.5 s power and energy -------------------------------------------------------


def test_fcr_d_dynamic_power_and_energy_pass_for_a_fast_response() -> None:
    tau = 2.0  # dP(7.5)/dP_ss = 1 - e^-3.75 = 0.976; energy = 7.5 - 2 x 0.976 = 5.55 s
    rules = pr.fcr_d_dynamic(trace(first_order(2.0, tau)), start_s=2.0, dp_ss_w=CAP)
    power, energy = rules
    assert power.passed and power.value == pytest.approx(0.976, abs=0.01)
    assert energy.passed and energy.value == pytest.approx(5.55, abs=0.02)


def test_fcr_d_dynamic_power_fails_for_a_slow_response() -> None:
    tau = 4.0  # 1 - e^-1.875 = 0.847 < 0.86; energy 7.5 - 4 x 0.847 = 4.11 s still passes
    power, energy = pr.fcr_d_dynamic(trace(first_order(2.0, tau)), start_s=2.0, dp_ss_w=CAP)
    assert not power.passed and power.value == pytest.approx(0.845, abs=0.01)
    assert energy.passed and energy.value == pytest.approx(4.11, abs=0.02)


def test_fcr_d_dynamic_energy_fails_for_a_late_step() -> None:
    # Nothing for 4.5 s then full: dP(7.5) = dP_ss but only 3.0 s x dP_ss of energy.
    power, energy = pr.fcr_d_dynamic(trace(step_at(6.5)), start_s=2.0, dp_ss_w=CAP)
    assert power.passed and power.value == pytest.approx(1.0)
    assert not energy.passed and energy.value == pytest.approx(3.0, abs=0.03)
    missing = pr.fcr_d_dynamic(trace(lambda t: 0.0), start_s=2.0, dp_ss_w=0.0)
    assert not any(r.passed for r in missing) and all(r.value is None for r in missing)


# ---- requirements --------------------------------------------------------------------------------


def test_requirements_follow_the_product_definitions() -> None:
    assert [pr.required_fcr_d(hz, CAP) for hz in (50.0, 49.9, 49.7, 49.5, 49.0)] == [
        0.0, 0.0, pytest.approx(500.0), pytest.approx(CAP), CAP]
    assert [pr.required_fcr_n(hz, CAP) for hz in (50.2, 50.1, 50.05, 50.0, 49.95, 49.8)] == [
        -CAP, pytest.approx(-CAP), pytest.approx(-500.0), 0.0, pytest.approx(500.0), CAP]
    spec = pr.ProductSpec("ffr", CAP, 49.5, 5.0)
    assert spec.full_activation_s == 0.7
    req = pr.required_step([0.0, 1.0, 5.9, 6.0, 7.0, 12.0], spec, 1.0)
    # Capacity from the crossing for the 5 s support, then at most 20 %/s down.
    assert req == [0.0, CAP, CAP, pytest.approx(CAP), pytest.approx(800.0), 0.0]
    assert pr.ProductSpec("ffr", CAP, 49.7).full_activation_s == 1.3
    assert pr.ProductSpec("ercot-ffr", CAP, 59.85).full_activation_s == 0.25
    ev = pr.DrWindow("a", start_s=10.0, ramp_s=2.0, duration_s=5.0, recovery_s=4.0,
                     amount_w=CAP)
    half = pr.DrWindow("b", start_s=12.0, ramp_s=0.0, duration_s=10.0, recovery_s=0.0,
                       amount_w=CAP / 2)
    got = pr.required_dr([7.0, 9.0, 12.0, 16.0, 17.0, 19.0, 21.0, 23.0], [ev, half])
    assert got == [0.0, 500.0, CAP, 750.0, 500.0, 500.0, 500.0, 0.0]


def test_static_requirement_holds_60_s_after_recovery_then_ramps_at_2_5_percent() -> None:
    spec = pr.ProductSpec("fcr-d-up-static", CAP, 49.7)
    t = [k * 1.0 for k in range(150)]
    hz = [49.6 if 5 <= x < 20 else 50.0 for x in t]
    req = pr.required_static(t, hz, spec)
    assert req[4] == 0.0 and req[5] == CAP and req[79] == CAP  # back above 49.9 at 20 s
    assert req[90] == pytest.approx(CAP * (1 - 0.025 * 10))
    assert req[130] == 0.0


# ---- product recipes -----------------------------------------------------------------------------


def ffr_like(act_s: float, support_s: float, ramp_pct: float, level: float = 1.0
             ) -> Callable[[float], float]:
    start, end = 2.0 + act_s, 2.0 + act_s + support_s

    def f(t: float) -> float:
        if t < start:
            return 0.0
        if t < end:
            return level * CAP
        return level * CAP * max(0.0, 1.0 - (t - end) * ramp_pct / 100)

    return f


def names(rules: list[sc.RuleResult]) -> dict[str, sc.RuleResult]:
    return {r.name: r for r in rules}


def step_trace(spec: pr.ProductSpec, delivered: Callable[[float], float]) -> Trace:
    """A trace whose requirement is the product's, crossing at 2 s."""
    tr = trace(delivered)
    return Trace(tr.t_s, tr.hz, pr.required_step(tr.t_s, spec, 2.0), tr.delivered_w,
                 tr.delivered_it_w)


def test_ffr_step_passes_when_fast_held_and_gently_ramped() -> None:
    spec = pr.ProductSpec("ffr", CAP, 49.5, 5.0)
    tr = step_trace(spec, ffr_like(0.2, 5.6, 19.0))
    rules = names(pr.score_step(spec, tr, event_s=2.0))
    assert set(rules) == {"full_activation_time", "power_at_full_activation_time",
                          "support_duration", "steady_state", "over_delivery", "ramp_out_rate"}
    assert all(r.passed for r in rules.values()), [r.describe() for r in rules.values()]
    assert rules["support_duration"].value == pytest.approx(5.6 + 0.05 / 0.19, abs=0.1)


@pytest.mark.parametrize(("act", "support", "ramp", "level", "broken"), [
    (1.0, 5.6, 19.0, 1.0, "full_activation_time"),  # later than 0.7 s
    (0.2, 4.0, 19.0, 1.0, "support_duration"),  # held 4 s (+ 0.26 s to leave the band)
    (0.2, 5.6, 50.0, 1.0, "ramp_out_rate"),  # ramped out at 50 %/s
    (0.2, 5.6, 19.0, 1.3, "over_delivery"),  # 130 % of capacity
])
def test_ffr_step_fails_the_broken_rule(act: float, support: float, ramp: float, level: float,
                                        broken: str) -> None:
    spec = pr.ProductSpec("ffr", CAP, 49.5, 5.0)
    rules = names(pr.score_step(spec, step_trace(spec, ffr_like(act, support, ramp, level)),
                                event_s=2.0))
    assert not rules[broken].passed and rules[broken].value is not None
    assert not sc.passed(list(rules.values()))


def test_ercot_and_long_support_ffr_have_no_ramp_rule() -> None:
    spec = pr.ProductSpec("ercot-ffr", CAP, 59.85, 10.0, short_support=False)
    rules = names(pr.score_step(spec, step_trace(spec, ffr_like(0.2, 12.0, 100.0)), event_s=2.0))
    assert "ramp_out_rate" not in rules and sc.passed(list(rules.values()))
    late = names(pr.score_step(spec, step_trace(spec, ffr_like(0.3, 12.0, 100.0)), event_s=2.0))
    assert not late["full_activation_time"].passed  # 0.3 s > 250 ms


def fcr_d_holds() -> tuple[list[shapes.Hold], float]:
    """Lead at 50 Hz, 49.9 Hz, then a ramp at 2 s to 49.0 Hz held 20 s, then 49.9 Hz."""
    return [shapes.Hold(0.0, 1.0, 50.0), shapes.Hold(1.0, 2.0, 49.9),
            shapes.Hold(5.75, 25.75, 49.0), shapes.Hold(25.75, 29.75, 49.9)], 2.0


def test_fcr_d_scoring_pass_and_fail() -> None:
    spec = pr.ProductSpec("fcr-d-up", CAP)
    holds, dyn = fcr_d_holds()

    def required(t: float) -> float:
        return CAP if 3.7 <= t < 25.75 else 0.0

    good = first_order(2.0, 1.5)
    tr = trace(lambda t: good(t) if t < 25.75 else 0.0, required)
    rules = names(pr.score_fcr_d(spec, tr, holds=holds, dynamic_s=dyn,
                                 long_hold=(dyn, 25.75), after_s=1.0))
    assert all(r.passed for r in rules.values()), [r.describe() for r in rules.values()]
    assert {"steady_state@49.00Hz", "power_7.5s", "energy_7.5s", "no_fall_back",
            "released@49.90Hz", "over_delivery"} <= set(rules)
    # Falls back to 80 % after 12 s while frequency stays at 49.0 Hz; never released after.
    sag = trace(lambda t: (0.8 * CAP if 14.0 <= t < 25.75 else good(t)) if t < 25.75
                else CAP, required)
    bad = names(pr.score_fcr_d(spec, sag, holds=holds, dynamic_s=dyn, long_hold=(dyn, 25.75),
                               after_s=1.0))
    assert not bad["no_fall_back"].passed and bad["no_fall_back"].value == pytest.approx(-20.0)
    assert not bad["steady_state@49.00Hz"].passed
    assert not bad["released@49.90Hz"].passed and bad["released@49.90Hz"].value == 100.0


def test_fcr_d_static_scoring_pass_and_fail() -> None:
    spec = pr.ProductSpec("fcr-d-up-static", CAP, 49.7)

    def hz(t: float) -> float:
        return 49.6 if 2.0 <= t < 10.0 else 50.0

    end = 10.0 + 60.0

    def good(t: float) -> float:
        if t < 3.0:
            return 0.0
        return CAP * min(1.0, max(0.0, 1.0 - (t - end - 1.0) * 0.024))

    tr = trace(good, end_s=120.0, hz=hz)
    tr = Trace(tr.t_s, tr.hz, pr.required_static(tr.t_s, tr.hz, spec), tr.delivered_w,
               tr.delivered_it_w)
    rules = names(pr.score_static(spec, tr, event_s=2.0))
    assert all(r.passed for r in rules.values()), [r.describe() for r in rules.values()]
    assert rules["ramp_down_rate"].value == pytest.approx(2.4, abs=0.02)
    early = trace(lambda t: CAP if 4.0 <= t < 40.0 else 0.0, end_s=120.0, hz=hz)
    early = Trace(early.t_s, early.hz, pr.required_static(early.t_s, early.hz, spec),
                  early.delivered_w, early.delivered_it_w)
    bad = names(pr.score_static(spec, early, event_s=2.0))
    assert bad["activation_time"].passed  # 2.0 s <= 2.5 s
    assert not bad["held_60s_after_recovery"].passed  # gave up 30 s early
    assert not bad["ramp_down_rate"].passed  # and dropped at once


def test_fcr_d_static_ramp_down_is_judged_over_the_whole_ramp() -> None:
    """A 2 %/s ramp-down that lets its last 15 % go in one step passes a 90 -> 10 % fit
    but not the whole ramp: the step is part of the ramp-down."""
    spec = pr.ProductSpec("fcr-d-up-static", CAP, 49.7)

    def hz(t: float) -> float:
        return 49.6 if 2.0 <= t < 10.0 else 50.0

    end = 10.0 + 60.0

    def stepped(t: float) -> float:
        if t < 3.0:
            return 0.0
        level = 1.0 - max(0.0, t - end - 1.0) * 0.02
        return CAP * level if level > 0.15 else 0.0

    tr = trace(stepped, end_s=130.0, hz=hz)
    tr = Trace(tr.t_s, tr.hz, pr.required_static(tr.t_s, tr.hz, spec), tr.delivered_w,
               tr.delivered_it_w)
    fit = sc.ramp_down_rate(tr, start_s=end, end_s=tr.t_s[-1], capacity_w=CAP,
                            limit_pct_per_s=sc.FCR_D_STATIC_RAMP_PCT_PER_S, name="fit")
    assert fit.passed  # the 90 -> 10 % fit does not see the step
    rules = names(pr.score_static(spec, tr, event_s=2.0))
    assert rules["held_60s_after_recovery"].passed
    ramp = rules["ramp_down_rate"]
    assert not ramp.passed and ramp.value is not None and ramp.value > 10.0


def test_fcr_n_scoring_pass_and_fail() -> None:
    spec = pr.ProductSpec("fcr-n", CAP)
    holds = [shapes.Hold(0.0, 5.0, 50.0), shapes.Hold(5.0, 15.0, 49.95),
             shapes.Hold(15.0, 25.0, 50.1)]

    def hz(t: float) -> float:
        return 49.95 if 5.0 <= t < 15.0 else (50.1 if t >= 15.0 else 50.0)

    def req(t: float) -> float:
        return pr.required_fcr_n(hz(t), CAP)

    ok = names(pr.score_fcr_n(spec, trace(req, req, hz=hz), holds=holds, after_s=5.0))
    assert all(r.passed for r in ok.values()) and len(ok) == 3

    # Upward regulation short by 30 %: the node cannot draw more than it has.
    def short(t: float) -> float:
        return max(-0.7 * CAP, req(t))

    bad = names(pr.score_fcr_n(spec, trace(short, req, hz=hz), holds=holds, after_s=5.0))
    assert not bad["steady_state@50.10Hz#1"].passed
    # A shortfall in the upward direction reads negative, as a share of the 1000 W asked ...
    assert bad["steady_state@50.10Hz#1"].value == pytest.approx(-30.0)
    # ... and is never reported as over-delivery.
    assert bad["over_delivery"].value == pytest.approx(0.0, abs=1e-6)


def test_dr_scoring_pass_and_fail() -> None:
    ev = pr.DrWindow("a", start_s=5.0, ramp_s=2.0, duration_s=10.0, recovery_s=4.0,
                     amount_w=CAP)

    def req(t: float) -> float:
        return ev.level(t) * CAP

    ok = names(pr.score_dr(trace(req, req), [ev]))
    assert all(r.passed for r in ok.values()), [r.describe() for r in ok.values()]
    # Late by 2 s, and snapping back at the end instead of following the recovery.
    late = names(pr.score_dr(trace(lambda t: CAP if 7.0 <= t < 15.0 else 0.0, req), [ev]))
    assert not late["full_at_start@a"].passed and late["full_at_start@a"].value == (
        pytest.approx(2.0, abs=0.01))
    assert not late["recovery_not_early@a"].passed


def test_dr_over_delivery_is_judged_on_each_event_s_own_amount() -> None:
    # A 500 W event over-delivered by 150 W (30 % of it) beside a 1000 W event held exactly:
    # against the larger amount the excess would read 15 % and pass.
    small = pr.DrWindow("small", start_s=2.0, ramp_s=0.0, duration_s=8.0, recovery_s=0.0,
                        amount_w=500.0)
    large = pr.DrWindow("large", start_s=14.0, ramp_s=0.0, duration_s=8.0, recovery_s=0.0,
                        amount_w=CAP)

    def req(t: float) -> float:
        return small.level(t) * 500.0 + large.level(t) * CAP

    def over(t: float) -> float:
        return req(t) + (150.0 if small.level(t) > 0 else 0.0)

    rules = names(pr.score_dr(trace(over, req), [small, large]))
    assert rules["over_delivery@small"].value == pytest.approx(30.0, abs=0.5)
    assert not rules["over_delivery@small"].passed
    assert rules["over_delivery@large"].passed


def test_quiet_frequency_is_scored_from_the_enforced_limits_not_power() -> None:
    spec = pr.ProductSpec("ffr", CAP, threshold_hz=49.7)
    swinging = trace(lambda t: 300.0 if int(t) % 2 else -300.0)  # the load's own swings
    limits = [5600.0] * len(swinging.t_s)
    ok = names(pr.score_quiet(spec, swinging, limits, after_s=6.0))["no_false_activation"]
    assert ok.passed and ok.value == 0.0
    # A 100 W cut of the limits after the lead fails with its size; one before it does not count.
    cut = [5500.0 if 10.0 <= t < 12.0 else 5600.0 for t in swinging.t_s]
    bad = names(pr.score_quiet(spec, swinging, cut, after_s=6.0))["no_false_activation"]
    assert not bad.passed and bad.value == pytest.approx(10.0)
    early = [5500.0 if t < 5.0 else 5600.0 for t in swinging.t_s]
    assert names(pr.score_quiet(spec, swinging, early, after_s=6.0))[
        "no_false_activation"].passed
    with pytest.raises(ValueError):
        pr.score_quiet(spec, swinging, limits[:-1], after_s=6.0)


def test_dr_hold_is_scored_on_settlement_interval_means() -> None:
    ev = pr.DrWindow("a", start_s=2.0, ramp_s=0.0, duration_s=20.0, recovery_s=0.0,
                     amount_w=CAP, interval_s=10.0)

    def req(t: float) -> float:
        return ev.level(t) * CAP

    # A training job's swings: +/-30 % square wave, 4 s period, around the requirement. Every
    # interval mean is on the requirement, so DR settlement passes what 1-s holds would fail.
    def swing(t: float) -> float:
        return req(t) * (1.3 if int(t / 2) % 2 else 0.7)

    scored = names(pr.score_dr(trace(swing, req), [ev]))
    ok = scored["hold@a"]
    assert ok.passed and ok.value is not None and abs(ok.value) < 5.0
    assert not sc.hold(trace(swing, req), windows=[(4.0, 20.0)], capacity_w=CAP).passed
    # Over-delivery is settled the same way: the swings' deeper seconds are no excess.
    excess = scored["over_delivery@a"]
    assert excess.passed and excess.value is not None and abs(excess.value) < 5.0
    assert not sc.over_delivery(trace(swing, req), windows=[(4.0, 20.0)],
                                capacity_w=CAP).passed

    # 10 % short in the second interval only: that interval fails the event.
    def short(t: float) -> float:
        return req(t) * (0.9 if t >= 13.0 else 1.0)

    bad = names(pr.score_dr(trace(short, req), [ev]))["hold@a"]
    assert not bad.passed and bad.value == pytest.approx(-10.0, abs=0.5)


# ---- shapes --------------------------------------------------------------------------------------


def test_fcr_d_ramps_have_the_tso_rates_and_a_scaled_hold() -> None:
    s = shapes.fcr_d_ramps(time_scale=0.1)
    m, dt = s.marks, s.dt_s
    nominal = s.nominal_hz

    def rate(at: float) -> float:
        k = round(at / dt) + 2
        return (nominal[k + 1] - nominal[k]) / dt

    assert rate(m["ramp_0_14"]) == pytest.approx(-0.14)
    assert rate(m["ramp_0_09"]) == pytest.approx(0.09)
    assert rate(m["ramp_0_24"]) == pytest.approx(-0.24)
    assert rate(m["dynamic"]) == pytest.approx(-0.24)
    assert m["hold_49_5_end"] - m["hold_49_5"] == pytest.approx(30.0)
    assert shapes.fcr_d_ramps(time_scale=1.0).marks["hold_49_5_end"] - shapes.fcr_d_ramps(
        time_scale=1.0).marks["hold_49_5"] == pytest.approx(300.0)
    assert min(nominal) == pytest.approx(49.0) and s.lagged


def test_meter_lag_is_1_over_1_plus_s() -> None:
    lagged = shapes.meter_lag([0.0] + [1.0] * 40, 0.1)
    assert lagged[10] == pytest.approx(1 - math.exp(-1.0))  # one time constant after the step
    s = shapes.fcr_n_steps(time_scale=0.1)
    k = round(s.marks["step_0"] / s.dt_s)
    assert s.nominal_hz[k] == pytest.approx(49.95) and s.hz[k] > 49.99  # the lag holds it back
    assert [h.hz for h in s.holds][-5:] == [49.95, 50.0, 49.9, 50.1, 50.0]


def test_ffr_and_trip_shapes_cross_at_their_marks() -> None:
    s = shapes.ffr_step(49.5)
    k = round(s.marks["event"] / s.dt_s)
    assert s.hz[k - 1] == 50.0 and s.hz[k] == pytest.approx(49.45) and not s.lagged
    trip = shapes.large_trip(49.7)
    assert trip.marks["event"] - trip.marks["fall"] == pytest.approx(1.2)  # 0.3 Hz at 0.25 Hz/s
    ercot = shapes.ercot_step()
    assert ercot.nominal_frequency_hz == 60.0 and min(ercot.hz) == pytest.approx(59.8)


def test_normal_frequency_has_the_nordic_spread_and_is_seeded() -> None:
    a = shapes.normal_frequency(3000.0, seed=3)
    b = shapes.normal_frequency(3000.0, seed=3)
    assert a.hz == b.hz and a.hz != shapes.normal_frequency(3000.0, seed=4).hz
    assert statistics.pstdev(a.hz) == pytest.approx(0.04, rel=0.25)
    assert abs(statistics.fmean(a.hz) - 50.0) < 0.02


def test_rule_results_serialise_with_value_limit_and_verdict() -> None:
    r = sc.steady_state(trace(lambda t: CAP, lambda t: CAP), a_s=1.0, b_s=5.0, capacity_w=CAP)
    assert r.to_json() | {"detail": ""} == {"name": "steady_state", "value": 0.0,
                                             "limit": [-5.0, 20.0], "passed": True, "unit": "%",
                                             "op": "in", "detail": ""}
    assert "PASS" in r.describe()


def test_float_noise_is_shown_as_zero_not_in_exponent_form() -> None:
    rule = sc.RuleResult("steady_state", 9.09e-14, (-5.0, 20.0), True, "%", "in")
    assert rule.shown == "0"
    assert "9.09e-14" not in rule.describe() and ": 0 %" in rule.describe()
    assert sc.RuleResult("x", None, 1.0, False, "s", "<=").shown == "n/a"
    assert sc.RuleResult("x", 0.1234, 1.0, True, "s", "<=").shown == "0.123"
