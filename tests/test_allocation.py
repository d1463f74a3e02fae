"""Tier-1 allocation math: examples and properties (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridtao.control.tier1.allocation import (
    NodeBudget,
    PeakHold,
    SettleTracker,
    allocate_mw,
    clamp_budget_mw,
    raise_toward_mw,
    want_mw,
)

W = 1000  # mW per W
H100_MIN, H100_DEF = 200 * W, 700 * W


def h100(n: int) -> tuple[list[int], list[int]]:
    return [H100_MIN] * n, [H100_DEF] * n


# ---------------------------------------------------------------- examples


def test_equal_shares_when_everyone_presses() -> None:
    lo, hi = h100(4)
    limits = allocate_mw(2000 * W, [float(H100_DEF)] * 4, lo, hi)
    assert limits == [500 * W] * 4


def test_watts_freed_by_light_gpu_go_to_pressing_ones() -> None:
    lo, hi = h100(4)
    want = [300 * W + 15 * W, H100_DEF, H100_DEF, H100_DEF]
    limits = allocate_mw(2000 * W, [float(w) for w in want], lo, hi)
    assert limits[0] == 315 * W
    assert sum(limits) == 2000 * W
    assert max(limits[1:]) - min(limits[1:]) <= 1
    assert limits[1] == pytest.approx((2000 - 315) / 3 * W, abs=1)


def test_light_gpu_is_cut_when_budget_is_tight() -> None:
    lo, hi = h100(2)
    # Budget below what the light GPU alone wants at an equal level: both sit on the same level.
    limits = allocate_mw(500 * W, [450.0 * W, float(H100_DEF)], lo, hi)
    assert limits == [250 * W, 250 * W]


def test_surplus_spread_toward_defaults() -> None:
    lo, hi = h100(2)
    limits = allocate_mw(1100 * W, [300.0 * W, 400.0 * W], lo, hi)
    # surplus 400 W in proportion to room (400 W, 300 W)
    assert sum(limits) == 1100 * W
    assert limits[0] == pytest.approx(300 * W + 400 * W * 4 / 7, abs=1)
    assert all(lim <= H100_DEF for lim in limits)


def test_budget_clamped_into_device_bounds() -> None:
    lo, hi = h100(3)
    assert allocate_mw(0.0, [float(H100_DEF)] * 3, lo, hi) == lo
    assert allocate_mw(1e12, [float(H100_MIN)] * 3, lo, hi) == hi
    assert clamp_budget_mw(-5.0, lo, hi) == 600 * W


def test_mixed_gpus_share_in_proportion_to_range() -> None:
    lo, hi = [100 * W, 200 * W], [300 * W, 600 * W]  # ranges 200 W and 400 W
    limits = allocate_mw(600 * W, [300.0 * W, 600.0 * W], lo, hi)
    # level lam: 100 + 200 lam + 200 + 400 lam = 600 -> lam = 0.5
    assert limits == [200 * W, 400 * W]


def test_fixed_gpu_with_no_range() -> None:
    lo, hi = [300 * W, H100_MIN], [300 * W, H100_DEF]
    limits = allocate_mw(800 * W, [300.0 * W, float(H100_DEF)], lo, hi)
    assert limits == [300 * W, 500 * W]


def test_mismatched_lengths_rejected() -> None:
    with pytest.raises(ValueError):
        allocate_mw(1.0, [1.0], [1, 2], [3, 4])


def test_want_classification_and_hysteresis() -> None:
    lo, hi = h100(4)
    h = 15 * W
    draw = [495.0 * W, 480.0 * W, 300.0 * W, 300.0 * W]
    limits = [500 * W] * 4
    w = want_mw(draw, limits, lo, hi, h, hold=[False, False, False, True])
    assert w[0] == H100_DEF  # within headroom/2 of its limit: pressing
    assert w[1] == 495 * W  # 20 W under: wants draw + headroom
    assert w[2] == 315 * W
    assert w[3] == 500 * W  # just raised: keeps its limit while the draw climbs
    # After being given draw + headroom it stays classed as under-using (no flip-flop).
    again = want_mw([480.0 * W], [495 * W], [H100_MIN], [H100_DEF], h)
    assert again == [495.0 * W]


def test_want_uses_recent_peak() -> None:
    lo, hi = h100(2)
    # GPU 0 is in a short dip but pressed its limit a moment ago: it keeps asking for more.
    w = want_mw([385.0 * W, 300.0 * W], [431 * W, 431 * W], lo, hi, 15 * W,
                peak_mw=[431.0 * W, 310.0 * W])
    assert w == [446.0 * W, 325.0 * W]


def test_peak_hold_window() -> None:
    ph = PeakHold(2, window_s=1.0, buckets=4)
    ph.update(0.0, [500.0, 100.0])
    ph.update(0.1, [300.0, 200.0])
    assert ph.peaks() == [500.0, 200.0]
    ph.update(0.6, [300.0, 150.0])
    assert ph.peaks() == [500.0, 200.0]
    ph.update(1.05, [310.0, 120.0])  # the [0, 0.25) bucket has left the window
    assert ph.peaks() == [310.0, 150.0]
    with pytest.raises(ValueError):
        PeakHold(1, window_s=0.0)


def test_want_respects_bounds() -> None:
    w = want_mw([10.0 * W, 695.0 * W], [400 * W, 700 * W], *h100(2), 15 * W)
    assert w == [float(H100_MIN), float(H100_DEF)]


def test_raise_toward_defaults_is_monotone_and_rate_limited() -> None:
    _, hi = h100(2)
    limits = [300 * W, 500 * W]
    out = raise_toward_mw(limits, hi, 300 * W)  # gaps 400 W and 200 W -> half of each
    assert out == [500 * W, 600 * W]
    assert raise_toward_mw(out, hi, 1e9) == hi
    assert raise_toward_mw(hi, hi, 10.0) == hi
    assert raise_toward_mw([800 * W], [H100_DEF], 0.0) == [H100_DEF]


def test_node_budget_starts_at_the_caps_and_integrates_up_to_the_ceiling() -> None:
    lo, hi = h100(8)
    nb = NodeBudget(lo, hi, integral_gain_per_s=0.5, max_raise_mw_per_s=2000 * W)
    # The caps sit at the target; the ceiling above them is room, not a starting point.
    b0 = nb.update(target_mw=4000 * W, ceiling_mw=4100 * W, measured_mw=5000 * W, dt_s=0.01,
                   releasing=False)
    assert b0 == 4000 * W
    # Power above target: the budget falls by Ki * error * dt.
    b1 = nb.update(target_mw=4000 * W, ceiling_mw=4100 * W, measured_mw=4200 * W, dt_s=0.1,
                   releasing=False)
    assert b1 == pytest.approx(4000 * W - 0.5 * 200 * W * 0.1)
    # Power under target (a bursty load's dips): the budget rises, never past the ceiling.
    for _ in range(100):
        b = nb.update(target_mw=4000 * W, ceiling_mw=4100 * W, measured_mw=3800 * W, dt_s=0.1,
                      releasing=False)
    assert b == 4100 * W
    # A ceiling under the target (the caps' sum rounded down) is where it starts.
    nb.deactivate()
    assert nb.update(target_mw=4000 * W, ceiling_mw=3999 * W, measured_mw=0.0, dt_s=0.01,
                     releasing=False) == 3999 * W


def test_node_budget_anti_windup_at_ceiling() -> None:
    lo, hi = h100(8)
    nb = NodeBudget(lo, hi, integral_gain_per_s=1.0, max_raise_mw_per_s=1e9)
    nb.activate(4000 * W, 4000 * W)
    for _ in range(1000):  # demand is low: power far under target for 10 s
        b = nb.update(target_mw=4000 * W, ceiling_mw=4000 * W, measured_mw=1000 * W, dt_s=0.01,
                      releasing=False)
    assert b == 4000 * W
    # and it responds immediately once power exceeds the target (no wound-up integral)
    b = nb.update(target_mw=4000 * W, ceiling_mw=4000 * W, measured_mw=4100 * W, dt_s=0.01,
                  releasing=False)
    assert b < 4000 * W


def test_node_budget_raise_rate_limited_outside_release() -> None:
    lo, hi = h100(8)
    nb = NodeBudget(lo, hi, integral_gain_per_s=0.0, max_raise_mw_per_s=100 * W)
    nb.activate(3000 * W, 3000 * W)
    b = nb.update(target_mw=4000 * W, ceiling_mw=5000 * W, measured_mw=3000 * W, dt_s=0.1,
                  releasing=False)
    assert b == pytest.approx(3010 * W)
    # the rise held back is not lost: it is fed on the next steps, at the limit's pace
    b = nb.update(target_mw=4000 * W, ceiling_mw=5000 * W, measured_mw=3000 * W, dt_s=0.1,
                  releasing=False)
    assert b == pytest.approx(3020 * W)
    # a release ramp's target step is fed straight through, with what was still held back
    b = nb.update(target_mw=4500 * W, ceiling_mw=5000 * W, measured_mw=3000 * W, dt_s=0.1,
                  releasing=True)
    assert b == pytest.approx(4500 * W)


def test_node_budget_follows_a_target_that_rises_in_steps() -> None:
    """Tier 2 moves the target once per frequency sample (10 Hz) while tier 1 steps at 100 Hz:
    a 50 W step is more than one 10 ms step's raise allowance (20 W at 2 kW/s), and the
    budget must still follow the target, not fall back to the integral's pace."""
    lo, hi = h100(8)
    nb = NodeBudget(lo, hi, integral_gain_per_s=0.3, max_raise_mw_per_s=2000 * W)
    target = 3000 * W
    b = nb.activate(target, None)
    for k in range(200):  # 2 s, +500 W/s in 50 W steps every 0.1 s
        if k % 10 == 0:
            target += 50 * W
        b = nb.update(target_mw=target, ceiling_mw=None, measured_mw=b, dt_s=0.01,
                      releasing=False)
    assert target == 4000 * W
    assert b == pytest.approx(target, abs=30 * W)


def test_node_budget_no_ceiling_bounded_by_defaults() -> None:
    lo, hi = h100(2)
    nb = NodeBudget(lo, hi, integral_gain_per_s=0.0, max_raise_mw_per_s=1e9)
    assert nb.activate(5000 * W, None) == 1400 * W
    nb.deactivate()
    assert nb.budget_mw is None


def test_settle_tracker() -> None:
    st_ = SettleTracker(3, settle_s=0.5, min_raise_mw=15 * W)
    st_.note_limits(1.0, [400 * W] * 3, [500 * W, 410 * W, 300 * W])
    assert st_.settling(1.2) == [True, False, False]
    assert st_.settling(1.6) == [False, False, False]


# ---------------------------------------------------------------- properties


@st.composite
def gpu_sets(draw: st.DrawFn) -> tuple[list[int], list[int], list[float], float]:
    gpus = draw(
        st.lists(
            st.tuples(
                st.integers(min_value=50 * W, max_value=500 * W),
                st.integers(min_value=0, max_value=600 * W),
                st.floats(min_value=0, max_value=1000 * W),
            ),
            min_size=1,
            max_size=64,
        )
    )
    lo = [a for a, _, _ in gpus]
    hi = [a + span for a, span, _ in gpus]
    want = [w for _, _, w in gpus]
    budget = draw(st.floats(min_value=-1000 * W, max_value=70000 * W, allow_nan=False))
    return lo, hi, want, budget


@settings(max_examples=200, deadline=None)
@given(gpu_sets())
def test_allocation_bounds_and_sum(case: tuple[list[int], list[int], list[float], float]) -> None:
    lo, hi, want, budget = case
    limits = allocate_mw(budget, want, lo, hi)
    assert all(a <= x <= b for a, x, b in zip(lo, limits, hi, strict=True))
    target = clamp_budget_mw(budget, lo, hi)
    assert sum(limits) == math.floor(target)


@settings(max_examples=200, deadline=None)
@given(gpu_sets())
def test_allocation_is_monotone_in_budget(
    case: tuple[list[int], list[int], list[float], float],
) -> None:
    lo, hi, want, budget = case
    a = allocate_mw(budget, want, lo, hi)
    b = allocate_mw(budget + 100 * W, want, lo, hi)
    # more budget never lowers a GPU's limit (beyond 1 mW of rounding)
    assert all(y >= x - 1 for x, y in zip(a, b, strict=True))


@settings(max_examples=200, deadline=None)
@given(gpu_sets())
def test_gpus_wanting_little_get_what_they_want_first(
    case: tuple[list[int], list[int], list[float], float],
) -> None:
    lo, hi, want, budget = case
    limits = allocate_mw(budget, want, lo, hi)
    clamped = [min(b, max(a, w)) for a, b, w in zip(lo, hi, want, strict=True)]
    if clamp_budget_mw(budget, lo, hi) >= sum(clamped):
        assert all(x >= math.floor(w) - 1 for x, w in zip(limits, clamped, strict=True))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=900 * W), min_size=1, max_size=64),
    st.floats(min_value=0, max_value=1e7),
)
def test_raise_toward_properties(limits: list[int], allowance: float) -> None:
    hi = [H100_DEF] * len(limits)
    out = raise_toward_mw(limits, hi, allowance)
    assert all(x <= d for x, d in zip(out, hi, strict=True))
    assert all(x >= min(lim, d) for x, lim, d in zip(out, limits, hi, strict=True))
    raised = sum(out) - sum(min(lim, d) for lim, d in zip(limits, hi, strict=True))
    assert raised <= allowance + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-1e4 * W, 1e5 * W), st.floats(0, 1e5 * W), st.floats(0, 0.1)),
        min_size=1,
        max_size=50,
    ),
    st.booleans(),
)
def test_node_budget_always_within_bounds(
    steps: list[tuple[float, float, float]], releasing: bool
) -> None:
    lo, hi = h100(8)
    nb = NodeBudget(lo, hi, integral_gain_per_s=0.3, max_raise_mw_per_s=2000 * W)
    ceiling = 4000 * W
    for target, measured, dt in steps:
        b = nb.update(target_mw=target, ceiling_mw=ceiling, measured_mw=measured, dt_s=dt,
                      releasing=releasing)
        assert sum(lo) <= b <= ceiling
