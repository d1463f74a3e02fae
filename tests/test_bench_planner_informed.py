"""The planner bench's informed reference: futures sampled from what was known at the gate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gridtao.bench.plannerday import DAY_S, HOUR_S, WEEK_START_S
from gridtao.bench.plannerinformed import Knows, informed_forecasts, sample_jobs
from gridtao.bench.plannerreport import bracket
from gridtao.bench.plannerweek import Week
from gridtao.history.synth import (
    JobModel,
    SyntheticNode,
    draw_with,
    sample_day_load,
    synthetic_node,
)

GATE = 7 * 1440.0 + 123.5
END = 9 * 1440.0


def _node() -> SyntheticNode:
    return synthetic_node(WEEK_START_S - 7 * DAY_S, 9, seed=4)


def test_futures_keep_what_was_known_at_the_gate() -> None:
    """Jobs that ended before the gate are kept as they ran; one running at the gate keeps its
    start, size and level and runs at least until the gate, at most the model's longest; new
    jobs start after the gate; the GPUs are never over-committed."""
    node = _node()
    model = JobModel.current()
    rng = np.random.default_rng(1)
    before = [j for j in node.jobs if j.start_min < GATE]
    running = [j for j in before if j.start_min + j.length_min > GATE]
    assert running, "the seed should have a job running at the gate"
    for _ in range(50):
        jobs = sample_jobs(node, GATE, END, model, rng)
        known, new = jobs[:len(before)], jobs[len(before):]
        for was, got in zip(before, known, strict=True):
            assert (got.start_min, got.size, got.level_w) == (was.start_min, was.size,
                                                                was.level_w)
            if was in running:
                assert GATE - got.start_min <= got.length_min <= 60.0 * model.max_h + 1e-9
            else:
                assert got == was
        assert all(GATE <= j.start_min < END for j in new)
        for t in np.arange(GATE, END, 7.0):
            assert sum(j.size for j in jobs if j.start_min <= t < j.start_min + j.length_min) \
                <= node.gpus


def test_what_came_after_the_gate_is_drawn_not_copied() -> None:
    """A running job's length follows its law given its age (the log-uniform above it), not
    its true length; the jobs after the gate are the model's draws, not the node's."""
    node = _node()
    model = JobModel.current()
    rng = np.random.default_rng(5)
    job = next(j for j in node.jobs if j.start_min < GATE < j.start_min + j.length_min)
    age = GATE - job.start_min
    low, high = math.log(max(60.0 * model.min_h, age)), math.log(60.0 * model.max_h)
    lengths, starts = [], []
    truth_after = {j.start_min for j in node.jobs if j.start_min >= GATE}
    for _ in range(2000):
        jobs = sample_jobs(node, GATE, END, model, rng)
        lengths.append(next(j.length_min for j in jobs if j.start_min == job.start_min))
        starts += [j.start_min for j in jobs if j.start_min >= GATE]
    logs = np.log(lengths)
    assert logs.mean() == pytest.approx((low + high) / 2, abs=0.03)  # uniform on [low, high]
    assert logs.std() == pytest.approx((high - low) / math.sqrt(12), rel=0.1)
    assert not truth_after & set(starts)
    # Arrivals keep the model's rate until the day's end (those turned away excepted).
    per_day = len(starts) / 2000 / ((END - GATE) / 1440.0)
    assert 0.5 * model.rate_per_day < per_day <= 1.2 * model.rate_per_day


def test_a_future_repeats_the_node_up_to_the_gate() -> None:
    """Sampled at the end of the window, a future's draw is the node's own up to the gate."""
    node = _node()
    lo, hi = 7 * 1440, 8 * 1440
    gate = lo + 600.0
    jobs = sample_jobs(node, gate, hi, JobModel.current(), np.random.default_rng(2))
    mean, p10 = draw_with(node, jobs, lo, hi)
    own_mean, own_p10 = draw_with(node, node.jobs, lo, hi)
    assert np.array_equal(mean[:600], own_mean[:600]) and np.array_equal(p10[:600], own_p10[:600])
    assert not np.array_equal(mean, own_mean)  # after the gate it is a different day


def test_a_sampled_load_follows_the_days_shape() -> None:
    node = _node()
    base = node.base_load[7 * 1440:8 * 1440]
    loads = np.array([sample_day_load(base, np.random.default_rng(k)) for k in range(200)])
    assert loads.min() >= 0.0 and loads.max() <= 1.0
    below = base < 0.8  # near 1 the clip pulls the mean down
    assert below.any() and np.allclose(loads.mean(axis=0)[below], base[below], atol=0.02)
    assert 0.03 < float(np.std(loads[:, 800] / base[800])) < 0.1  # day factor and wander, 5 % each
    with pytest.raises(ValueError, match="one value per row"):
        draw_with(node, node.jobs, 0, 10, np.zeros(9))


@pytest.mark.parametrize("knows", ["model", "inference", "jobs"])
def test_the_informed_p10_covers_the_actual_day(knows: Knows) -> None:
    """The day actually drawn is one of the futures the reference samples: the lowest of 200
    lies at or below the actual lowest minute in nearly every hour."""
    week = Week(7, seed=2)
    covered, hours = 0, 0
    for d in range(7):
        start = WEEK_START_S + d * DAY_S
        got = informed_forecasts(week, start, (0.0, 0.5), samples=200,
                                 knows=knows)
        lowest = week.day(d).p10_w.reshape(24, 60).min(axis=1)
        covered += int(np.sum(lowest >= got[0.0].p10_w - 1e-9))
        hours += 24
        assert got[0.0].start_s == start and got[0.0].mtu_s == HOUR_S
        assert np.all(got[0.0].p10_w <= got[0.5].p10_w)
    assert covered / hours >= 0.97


def test_gridtao_is_set_between_the_rows_on_either_side_of_its_misses() -> None:
    rows = [{"knows": "model", "quantile": 0.5, "revenue": 9.0, "undeliverable_hours": 9},
            {"knows": "model", "quantile": 0.25, "revenue": 6.0, "undeliverable_hours": 4},
            {"knows": "model", "quantile": 0.1, "revenue": 5.0, "undeliverable_hours": 2},
            {"knows": "model", "quantile": 0.0, "revenue": 4.0, "undeliverable_hours": 0},
            {"knows": "inference", "quantile": 0.1, "revenue": 7.0, "undeliverable_hours": 0}]
    assert bracket(2, rows) == (rows[2], rows[1])
    assert bracket(1, rows) == (rows[3], rows[2])
    assert bracket(9, rows) == (rows[0], None)
    assert bracket(0, rows[:3]) == (None, rows[2])
