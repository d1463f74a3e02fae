"""gridtao/control/tier1/workaware.py: the work-aware split of a node cut, and its selection in
allocation.py (tier 1), in virtual time on simulated GPUs."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from gridtao.clock import VirtualClock
from gridtao.config.agent import ControlConfig, SimConfig, SimWorkload
from gridtao.control.tier1.allocation import allocate_mw
from gridtao.control.tier1.loop import FastLoop
from gridtao.control.tier1.workaware import (
    WorkAwareSplit,
    WorkCurve,
    marginal_work_per_mw,
    work_aware_levels_mw,
    work_value,
)
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.sim.throughput import INFERENCE_EXPONENT, TRAINING_EXPONENT
from gridtao.safety.island import SafetyIsland

INFERENCE = WorkCurve(INFERENCE_EXPONENT)
TRAINING = WorkCurve(TRAINING_EXPONENT)
MIN_MW, MAX_MW = 200_000, 700_000


def _case(rng: random.Random, n: int) -> tuple[list[float], list[int], list[int],
                                               list[WorkCurve]]:
    lower = [rng.choice((MIN_MW, rng.randint(MIN_MW, 400_000))) for _ in range(n)]
    upper = [rng.choice((MAX_MW, rng.randint(450_000, MAX_MW))) for _ in range(n)]
    want = [rng.choice((float(u), rng.uniform(150_000, u))) for u in upper]
    curves = [WorkCurve(rng.choice((INFERENCE_EXPONENT, TRAINING_EXPONENT, rng.uniform(0.05, 1))),
                        rng.choice((1.0, rng.uniform(0.2, 3.0))),
                        rng.choice((0.0, 0.0, rng.uniform(50_000, 650_000))),  # free draw
                        rng.random() < 0.5)  # some queue
              for _ in range(n)]
    return want, lower, upper, curves


def _marginal_left(c: float, demand: float, upper: float, curve: WorkCurve) -> float:
    """m just below ``c`` (at the demand: the first watt's cost)."""
    return marginal_work_per_mw(min(c, demand) - 1e-6, demand, upper, curve)


@pytest.mark.parametrize("seed", range(40))
def test_the_optimum_equalises_the_marginal_work_per_watt(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 12)
    want, lower, upper, curves = _case(rng, n)
    tops = [max(lo, min(u, w)) for lo, u, w in zip(lower, upper, want, strict=True)]
    budget = rng.uniform(sum(lower), sum(tops))
    levels = work_aware_levels_mw(budget, want, lower, upper, curves)
    assert levels is not None
    assert math.isclose(sum(levels), budget, rel_tol=1e-9)
    for c, lo, t in zip(levels, lower, tops, strict=True):
        assert lo - 1e-6 <= c <= t + 1e-6
    demand = [max(w, t) for w, t in zip(want, tops, strict=True)]
    knees = [cv.knee_mw(d, u) for cv, d, u in zip(curves, demand, upper, strict=True)]
    inside = [marginal_work_per_mw(c, d, u, cv) for c, lo, t, d, u, cv, kn
              in zip(levels, lower, tops, demand, upper, curves, knees, strict=True)
              if lo + 1.0 < c < t - 1.0 and abs(c - kn) > 1.0]
    if not inside:
        return
    lam = sum(inside) / len(inside)
    assert all(math.isclose(m, lam, rel_tol=2e-3) for m in inside), (inside, lam)
    for c, lo, t, d, u, cv, kn in zip(levels, lower, tops, demand, upper, curves, knees,
                                      strict=True):
        if c <= lo + 1.0 and lo < t:  # held at its bound: would give more, cheaper than lam
            assert marginal_work_per_mw(lo, d, u, cv) <= lam * (1 + 2e-3)
        if c >= t - 1.0 and lo < t:  # left whole: its first watt costs more than lam
            assert _marginal_left(t, d, u, cv) >= lam * (1 - 2e-3)
        if abs(c - kn) <= 1.0 and lo + 1.0 < c:  # at a queued job's knee: the free watts
            # above it are all given, and the first one below it costs more than lam
            assert _marginal_left(kn, d, u, cv) >= lam * (1 - 2e-3)


@pytest.mark.parametrize("seed", range(20))
def test_no_other_split_of_the_same_watts_keeps_more_work(seed: int) -> None:
    rng = random.Random(1000 + seed)
    want, lower, upper, curves = _case(rng, rng.randint(2, 6))
    tops = [max(lo, min(u, w)) for lo, u, w in zip(lower, upper, want, strict=True)]
    budget = rng.uniform(sum(lower), sum(tops))
    levels = work_aware_levels_mw(budget, want, lower, upper, curves)
    assert levels is not None
    demand = [max(w, t) for w, t in zip(want, tops, strict=True)]

    def value(cs: Sequence[float]) -> float:
        return sum(work_value(c, d, u, cv) for c, d, u, cv in zip(cs, demand, upper, curves,
                                                                   strict=True))

    best = value(levels)
    for _ in range(200):  # move watts between two GPUs, within their bounds
        i, j = rng.sample(range(len(levels)), 2)
        delta = rng.uniform(0, min(levels[i] - lower[i], tops[j] - levels[j]))
        moved = list(levels)
        moved[i] -= delta
        moved[j] += delta
        assert value(moved) <= best + 1e-9 * max(1.0, best)


@pytest.mark.parametrize("seed", range(20))
def test_within_the_envelope_and_floors_and_the_same_total_as_proportional(seed: int) -> None:
    rng = random.Random(2000 + seed)
    n = rng.randint(1, 10)
    want, floors, upper, curves = _case(rng, n)
    budget = rng.uniform(sum(floors) - 50_000, sum(upper) + 50_000)
    aware = allocate_mw(budget, want, floors, upper, split=WorkAwareSplit(lambda: curves))
    proportional = allocate_mw(budget, want, floors, upper)
    assert sum(aware) == sum(proportional)
    for lim, lo, hi in zip(aware, floors, upper, strict=True):
        assert lo <= lim <= hi


def test_a_queued_servers_watts_down_to_its_knee_cost_nothing_and_go_first() -> None:
    # Arrivals of 300 W: flat out at its minimum (200 W) it serves 700 * (200/700) ** 0.194 =
    # 549 W of work, so its knee (where it would fall behind) lies below its minimum.
    queued = WorkCurve(INFERENCE_EXPONENT, free_mw=300_000.0, queued=True)
    knee = queued.knee_mw(700_000.0, MAX_MW)
    assert knee == pytest.approx(MAX_MW * (1.1 * 300 / 700) ** (1 / INFERENCE_EXPONENT))
    assert knee < MIN_MW
    assert marginal_work_per_mw(MIN_MW, 700_000.0, MAX_MW, queued) == 0.0
    assert work_value(MIN_MW, 700_000.0, MAX_MW, queued) == work_value(
        MAX_MW, 700_000.0, MAX_MW, queued)
    want, lower, upper = [600_000.0, 700_000.0], [MIN_MW] * 2, [MAX_MW] * 2
    levels = work_aware_levels_mw(1_000_000, want, lower, upper, [TRAINING, queued])
    assert levels == pytest.approx([600_000, 400_000])  # all of the cut from the server
    levels = work_aware_levels_mw(800_000, want, lower, upper, [TRAINING, queued])
    assert levels == pytest.approx([600_000, MIN_MW])  # down to its minimum, still free
    levels = work_aware_levels_mw(700_000, want, lower, upper, [TRAINING, queued])
    assert levels == pytest.approx([500_000, MIN_MW])  # then the training job gives
    # Not queued, the same server is a job that cannot wait: both give.
    for unqueued in (INFERENCE, WorkCurve(INFERENCE_EXPONENT, free_mw=600_000.0)):
        levels = work_aware_levels_mw(800_000, want, lower, upper, [TRAINING, unqueued])
        assert levels is not None and levels[0] < 590_000 and levels[1] > MIN_MW + 10_000
    # A busy server's knee lies inside its range: above it the watts are free, below it not.
    busy = WorkCurve(INFERENCE_EXPONENT, free_mw=600_000.0, queued=True)
    knee = busy.knee_mw(700_000.0, MAX_MW)
    assert MIN_MW < knee < 700_000.0
    assert marginal_work_per_mw(knee + 1.0, 700_000.0, MAX_MW, busy) == 0.0
    assert marginal_work_per_mw(knee - 1.0, 700_000.0, MAX_MW, busy) > 0.0
    levels = work_aware_levels_mw(600_000.0 + knee, want, lower, upper, [TRAINING, busy])
    assert levels == pytest.approx([600_000, knee])


def test_gpus_of_one_job_are_valued_alike_whichever_presses_on_its_limit() -> None:
    # Two GPUs of one training job, both drawing 580 W free; under the cut one presses on its
    # limit now (tier 1 wants its upper limit for it), the other is in a dip.
    want, lower, upper = [700_000.0, 640_000.0], [MIN_MW] * 2, [MAX_MW] * 2
    blind = work_aware_levels_mw(1_000_000, want, lower, upper, [TRAINING, TRAINING])
    assert blind is not None and blind[0] > blind[1] + 20_000  # the presser looks hungrier
    job = WorkCurve(TRAINING_EXPONENT, free_mw=580_000.0)
    assert job.demand_mw(700_000.0) == job.demand_mw(640_000.0) == pytest.approx(638_000.0)
    levels = work_aware_levels_mw(1_000_000, want, lower, upper, [job, job])
    assert levels == pytest.approx([500_000, 500_000])
    # Tier 1's want still bounds it: a GPU wanting less than its free draw says is not given more.
    assert job.demand_mw(450_000.0) == 450_000.0


def test_the_first_watts_come_from_the_flattest_curve() -> None:
    want, lower, upper = [700_000.0] * 2, [MIN_MW] * 2, [MAX_MW] * 2
    levels = work_aware_levels_mw(1_300_000, want, lower, upper, [TRAINING, INFERENCE])
    assert levels is not None
    assert levels[0] == pytest.approx(MAX_MW) and levels[1] == pytest.approx(600_000)
    # Deeper, both give; the inference GPU still gives more.
    levels = work_aware_levels_mw(900_000, want, lower, upper, [TRAINING, INFERENCE])
    assert levels is not None and levels[1] < levels[0] < MAX_MW
    # The proportional split cuts both alike.
    assert allocate_mw(900_000, want, lower, upper) == [450_000, 450_000]


def test_no_gpu_keeps_more_than_it_wants_during_a_cut() -> None:
    levels = work_aware_levels_mw(900_000, [700_000.0, 300_000.0], [MIN_MW] * 2, [MAX_MW] * 2,
                                  [INFERENCE, TRAINING])
    assert levels is not None
    assert levels[1] <= 300_000 + 1e-6 and sum(levels) == pytest.approx(900_000)


def test_one_gpu_takes_the_whole_budget() -> None:
    assert work_aware_levels_mw(450_000, [700_000.0], [MIN_MW], [MAX_MW], [TRAINING]) == \
        pytest.approx([450_000])
    assert allocate_mw(450_000, [700_000.0], [MIN_MW], [MAX_MW],
                       split=WorkAwareSplit(lambda: [TRAINING])) == [450_000]


def test_below_the_floors_every_gpu_sits_at_its_floor() -> None:
    floors = [300_000, 250_000, 200_000]
    curves = [INFERENCE, TRAINING, INFERENCE]
    assert work_aware_levels_mw(600_000, [700_000.0] * 3, floors, [MAX_MW] * 3, curves) == \
        floors
    assert allocate_mw(100_000, [700_000.0] * 3, floors, [MAX_MW] * 3,
                       split=WorkAwareSplit(lambda: curves)) == floors


@pytest.mark.parametrize("curves", [
    [WorkCurve(1.0)] * 3,  # flat ranking: every watt is worth the same everywhere
    [WorkCurve(0.3, weight=0.0)] * 3,  # no work worth keeping anywhere
    [INFERENCE, None, TRAINING],  # a GPU without a curve
])
def test_curves_that_cannot_rank_the_gpus_leave_the_split_proportional(
        curves: list[WorkCurve | None]) -> None:
    want, lower, upper = [700_000.0, 500_000.0, 650_000.0], [MIN_MW] * 3, [MAX_MW] * 3
    assert work_aware_levels_mw(1_200_000, want, lower, upper, curves) is None
    assert allocate_mw(1_200_000, want, lower, upper, split=WorkAwareSplit(lambda: curves)) == \
        allocate_mw(1_200_000, want, lower, upper)


def test_watts_to_spare_go_where_a_rise_in_demand_would_keep_most_work() -> None:
    want, lower, upper = [400_000.0, 500_000.0], [MIN_MW] * 2, [MAX_MW] * 2
    curves = [INFERENCE, TRAINING]
    levels = work_aware_levels_mw(950_000, want, lower, upper, curves)
    assert levels == pytest.approx([400_000, 550_000])  # the steeper curve first
    want = [250_000.0, 500_000.0]
    levels = work_aware_levels_mw(1_000_000, want, lower, upper, curves)
    assert levels is not None and sum(levels) == pytest.approx(1_000_000)
    assert all(w < c < MAX_MW for c, w in zip(levels, want, strict=True))
    # Both inside their bounds: the same marginal work per watt, valued at full demand.
    m = [marginal_work_per_mw(c, u, u, cv) for c, u, cv in zip(levels, upper, curves,
                                                               strict=True)]
    assert m[0] == pytest.approx(m[1], rel=1e-3)
    assert work_aware_levels_mw(1_500_000, want, lower, upper, curves) == [MAX_MW, MAX_MW]
    # The proportional split spreads them by room instead.
    assert allocate_mw(950_000, [400_000.0, 500_000.0], lower, upper) == [430_000, 520_000]


def test_gpus_doing_no_work_give_everything_before_the_others() -> None:
    idle = WorkCurve(0.3, weight=0.0)
    levels = work_aware_levels_mw(1_100_000, [700_000.0] * 2, [MIN_MW] * 2, [MAX_MW] * 2,
                                  [idle, TRAINING])
    assert levels == pytest.approx([400_000, MAX_MW])


def test_a_split_is_used_only_where_given() -> None:
    want, lower, upper = [700_000.0] * 2, [MIN_MW] * 2, [MAX_MW] * 2
    split = WorkAwareSplit(lambda: [TRAINING, INFERENCE])
    assert allocate_mw(1_300_000, want, lower, upper, split=split) == [MAX_MW, 600_000]
    assert allocate_mw(1_300_000, want, lower, upper) == [650_000, 650_000]


def _shed_on_mixed_node(curves: Sequence[WorkCurve] | None) -> tuple[tuple[int, ...],
                                                                     tuple[int, ...]]:
    """2 inference and 2 training GPUs: the island's caps for a 25 % shed, and tier 1's
    limits 3 s into it."""
    clock = VirtualClock()
    workloads = (SimWorkload("inference"),) * 2 + (SimWorkload("training"),) * 2
    sim = SimNvml.from_config(SimConfig(count=4, device=None, workloads=workloads), clock)
    backend = NvmlBackend(sim)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=3600)
    island.start()
    loop = FastLoop(backend, island, clock=clock, config=ControlConfig())
    loop.split = None if curves is None else WorkAwareSplit(lambda: curves)
    try:
        t = clock.now()
        for _ in range(200):
            loop.step()
            t += loop.period_s
            clock.advance(max(0.0, t - clock.now()))
        assert not loop.at_target  # no event
        caps = island.trigger_shed("shed", 0.25).caps_mw
        reached = []
        for _ in range(300):
            result = loop.step()
            reached.append(loop.at_target)
            t += loop.period_s
            clock.advance(max(0.0, t - clock.now()))
        assert any(reached[:20])  # in band within 0.2 s of the trigger
        return caps, result.limits_mw
    finally:
        island.close()


def test_tier_1_resplits_a_cut_work_aware_while_the_islands_caps_stay_as_they_were() -> None:
    caps_p, limits_p = _shed_on_mixed_node(None)
    caps_w, limits_w = _shed_on_mixed_node([INFERENCE, INFERENCE, TRAINING, TRAINING])
    assert caps_w == caps_p  # the trigger path computes the same caps: nothing changed there
    assert abs(sum(limits_w) - sum(limits_p)) <= 20_000  # the same watts, bar tier 1's noise
    assert max(limits_w[:2]) < min(limits_w[2:])  # inference gives first
    assert sum(limits_w[:2]) < sum(limits_p[:2]) - 50_000


def test_the_proportional_hold_ends_once_the_node_has_reached_its_target() -> None:
    clock = VirtualClock()
    in_band = [False]
    split = WorkAwareSplit(lambda: [TRAINING, INFERENCE], clock=clock, hold_off_s=1.0,
                           blend_s=1.0, reached=lambda: in_band[0])
    want, lower, upper = [700_000.0] * 2, [MIN_MW] * 2, [MAX_MW] * 2
    aware = work_aware_levels_mw(1_300_000, want, lower, upper, [TRAINING, INFERENCE])
    assert aware is not None
    seen = []
    for step in range(150):  # tier 1 at 100 Hz; the node is in its band from 0.05 s on
        in_band[0] = step >= 5
        seen.append(split(1_300_000, want, lower, upper))
        clock.advance(0.01)
    assert all(levels is None for levels in seen[:5])  # the response: proportional
    assert seen[55] is not None and seen[55][1] == pytest.approx((650_000 + aware[1]) / 2,
                                                                 rel=0.02)
    assert seen[110] == pytest.approx(aware)  # fully work-aware a second after it reached
    # Leaving the band later does not bring the hold back within the same cut ...
    in_band[0] = False
    assert split(1_300_000, want, lower, upper) == pytest.approx(aware)
    # ... and a node that never reaches its band is held for hold_off_s, as without the signal.
    assert split(1_100_000, want, lower, upper) is None  # a deeper target: a new cut
    clock.advance(0.99)
    assert split(1_100_000, want, lower, upper) is None
    clock.advance(0.02)
    assert split(1_100_000, want, lower, upper) is not None


def test_a_new_cut_is_split_proportionally_first_then_blends_in() -> None:
    clock = VirtualClock()
    split = WorkAwareSplit(lambda: [TRAINING, INFERENCE], clock=clock, hold_off_s=1.0,
                           blend_s=1.0)
    want, lower, upper = [700_000.0] * 2, [MIN_MW] * 2, [MAX_MW] * 2
    aware = work_aware_levels_mw(1_300_000, want, lower, upper, [TRAINING, INFERENCE])
    assert aware is not None
    seen = []
    for _ in range(250):  # tier 1 at 100 Hz through the first 2.5 s of a cut
        seen.append(split(1_300_000, want, lower, upper))
        clock.advance(0.01)
    assert all(levels is None for levels in seen[:100])  # the response: proportional
    halfway = seen[150]
    assert halfway is not None
    assert halfway[1] == pytest.approx((650_000 + aware[1]) / 2, rel=0.02)
    assert seen[-1] == pytest.approx(aware)
    clock.advance(3.0)  # tier 1 skipped the split for a while: the same cut goes on
    assert split(1_300_000, want, lower, upper) == pytest.approx(aware)
    assert split(1_100_000, want, lower, upper) is None  # a deeper target: a new response
    clock.advance(10.0)  # no cut for long: the next one starts anew
    assert split(1_300_000, want, lower, upper) is None
