"""gridtao.safety.envelope: per-GPU bounds and the node-target split (examples and properties)."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gridtao.gpu.backend import PowerLimits
from gridtao.safety.envelope import Envelope

W = 1000  # mW per W
H100 = PowerLimits(min_mw=200 * W, max_mw=700 * W, default_mw=700 * W)


def h100s(n: int = 8) -> Envelope:
    return Envelope([H100] * n)


# ---------------------------------------------------------------- examples


def test_totals_and_clamp() -> None:
    env = Envelope([H100, PowerLimits(min_mw=100 * W, max_mw=400 * W, default_mw=300 * W)])
    assert env.min_total_mw == 300 * W
    assert env.default_total_mw == 1000 * W
    assert env.clamp_mw(0, 50 * W) == 200 * W
    assert env.clamp_mw(1, 350 * W) == 300 * W  # never above default even though max is 400 W
    assert env.clamp_mw(1, 250_000.9) == 250_000
    assert env.clamp_all([0, 10**9]) == [200 * W, 300 * W]


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        Envelope([])
    with pytest.raises(ValueError):
        Envelope([PowerLimits(min_mw=500, max_mw=700, default_mw=400)])
    env = h100s(2)
    with pytest.raises(ValueError):
        env.clamp_all([1, 2, 3])
    with pytest.raises(ValueError):
        env.cut_caps_mw([600 * W], 500 * W)
    with pytest.raises(ValueError):
        env.cut_caps_mw([600 * W, math.nan], 500 * W)
    with pytest.raises(ValueError):
        env.clamp_mw(0, math.nan)


def test_cut_is_proportional_to_draw_above_minimum() -> None:
    env = h100s(2)
    # 600 W and 400 W drawn: 400 W and 200 W above the 200 W floor; cut 300 W -> 200 W and 100 W.
    assert env.cut_caps_mw([600 * W, 400 * W], 700 * W) == [400 * W, 300 * W]


def test_gpu_at_floor_gives_nothing_and_others_take_the_cut() -> None:
    env = h100s(3)
    caps = env.cut_caps_mw([150 * W, 700 * W, 500 * W], 900 * W)
    assert caps[0] == 200 * W  # drawing below its minimum: nothing to take
    assert sum(caps) == 900 * W
    # 500 W and 300 W above the floor: the remaining room keeps that 5:3 ratio.
    assert caps[1:] == [387_500, 312_500]


def test_target_below_minimums_puts_every_gpu_at_minimum() -> None:
    env = h100s(4)
    assert env.cut_caps_mw([700 * W] * 4, 100 * W) == [200 * W] * 4


def test_target_above_draw_hands_out_headroom_up_to_defaults() -> None:
    env = h100s(2)
    # 300 W + 500 W drawn, node capped at 1000 W: 200 W spare, split by headroom 400:200.
    caps = env.cut_caps_mw([300 * W, 500 * W], 1000 * W)
    assert caps == [pytest.approx(433_333, abs=1), pytest.approx(566_666, abs=1)]
    assert env.cut_caps_mw([300 * W, 500 * W], 5000 * W) == [700 * W, 700 * W]


def test_draw_above_default_counts_as_default() -> None:
    env = h100s(2)
    assert env.cut_caps_mw([900 * W, 700 * W], 1000 * W) == [500 * W, 500 * W]


def test_fit_under_scales_down_above_minimum() -> None:
    env = h100s(2)
    assert env.fit_under_mw([700 * W, 400 * W], 2000 * W) == [700 * W, 400 * W]
    # 500 W + 200 W above the floors, 300 W allowed above them: factor 3/7.
    fitted = env.fit_under_mw([700 * W, 400 * W], 700 * W)
    assert fitted == [200 * W + 500 * W * 3 // 7, 200 * W + 200 * W * 3 // 7]
    assert env.fit_under_mw([700 * W, 400 * W], 100 * W) == [200 * W, 200 * W]
    assert env.fit_under_mw([900 * W, 0], 10**9) == [700 * W, 200 * W]


# ---------------------------------------------------------------- properties


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    n = draw(st.integers(min_value=1, max_value=12))
    limits = []
    for _ in range(n):
        lo = draw(st.integers(min_value=0, max_value=400 * W))
        default = lo + draw(st.integers(min_value=0, max_value=600 * W))
        hi = default + draw(st.integers(min_value=0, max_value=100 * W))
        limits.append(PowerLimits(min_mw=lo, max_mw=hi, default_mw=default))
    return Envelope(limits)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Envelope, list[float], float]:
    env = draw(envelopes())
    draws = [
        draw(st.floats(min_value=0, max_value=max(1.0, 1.3 * d), allow_nan=False))
        for d in env.default_mw
    ]
    target = draw(st.floats(min_value=0, max_value=1.5 * env.default_total_mw + 1))
    return env, draws, target


def _in_bounds(env: Envelope, caps: list[int]) -> bool:
    return all(lo <= c <= hi for c, lo, hi in zip(caps, env.min_mw, env.default_mw, strict=True))


@settings(max_examples=250, deadline=None)
@given(cases())
def test_caps_always_within_bounds_and_sum_to_clamped_target(
    case: tuple[Envelope, list[float], float],
) -> None:
    env, draws, target = case
    caps = env.cut_caps_mw(draws, target)
    assert all(isinstance(c, int) for c in caps)
    assert _in_bounds(env, caps)
    want = min(max(target, env.min_total_mw), env.default_total_mw)
    # Rounded down: at most want (up to float error), short by under 1 mW per GPU.
    assert want - env.count - 1e-6 * want <= sum(caps) <= want + 1e-6 * want


@settings(max_examples=200, deadline=None)
@given(cases())
def test_sum_is_max_of_target_and_minimums_when_cutting(
    case: tuple[Envelope, list[float], float],
) -> None:
    env, draws, target = case
    draw_total = sum(draws)
    assume(target <= draw_total)
    caps = env.cut_caps_mw(draws, target)
    want = max(target, env.min_total_mw)
    if want <= env.default_total_mw:
        assert want - env.count - 1e-6 * want <= sum(caps) <= want + 1e-6 * want


@settings(max_examples=200, deadline=None)
@given(cases(), st.floats(min_value=0, max_value=1))
def test_caps_monotone_in_target(case: tuple[Envelope, list[float], float], frac: float) -> None:
    env, draws, target = case
    lower = target * frac
    lo_caps = env.cut_caps_mw(draws, lower)
    hi_caps = env.cut_caps_mw(draws, target)
    assert all(a <= b for a, b in zip(lo_caps, hi_caps, strict=True))


@settings(max_examples=200, deadline=None)
@given(cases())
def test_cut_never_above_measured_draw_basis(case: tuple[Envelope, list[float], float]) -> None:
    env, draws, target = case
    assume(
        target
        <= sum(
            min(max(d, lo), hi) for d, lo, hi in zip(draws, env.min_mw, env.default_mw, strict=True)
        )
    )
    caps = env.cut_caps_mw(draws, target)
    for c, d, lo, hi in zip(caps, draws, env.min_mw, env.default_mw, strict=True):
        assert c <= max(lo, min(hi, math.floor(d)) + 1)


@settings(max_examples=200, deadline=None)
@given(cases(), st.data())
def test_fit_under_bounds_ceiling_and_never_raises(
    case: tuple[Envelope, list[float], float], data: st.DataObject
) -> None:
    env, _draws, ceiling = case
    limits = [data.draw(st.integers(min_value=-10, max_value=hi + 10**5)) for hi in env.default_mw]
    fitted = env.fit_under_mw(limits, ceiling)
    clamped = env.clamp_all(limits)
    assert _in_bounds(env, fitted)
    assert all(f <= c for f, c in zip(fitted, clamped, strict=True))
    assert sum(fitted) <= max(ceiling, env.min_total_mw) + 1e-6 * max(ceiling, 1)
