"""What any day-ahead forecast of the planner bench's node could earn (``gridtao bench planner``,
its ``informed_bound``): the synthetic node's own predictive distribution at the gate.

The oracle plans on the day's actual draw, which no forecast made at the gate can know: training
jobs arrive at random (:mod:`gridtao.history.synth`), and those that start after the gate decide
much of the day. This strategy is given everything that is knowable, and more: the model that
generates the node (job arrival rate, sizes, lengths, levels), every job that started before the
gate (its start, size and level; one still running is known to be running, its end is not), and
the day's actual inference draw (which a forecast could not know either). From these it samples
``samples`` futures of the day: the running jobs' lengths drawn from their log-uniform law given
that they have run so far, and new jobs arriving after the gate as the model makes them (turned
away when they do not fit, as synth does). Each future's lowest minute p10 per hour, and its mean,
give the forecast: the ``quantile`` of the lowest minute as its p10 (the planner's bound on
offers), the median and 90th percentile of the mean. Tier 3 then plans on it like on any forecast.

Because it knows more than any forecast could, what it earns at a given rate of undeliverable
hours bounds from above what a better forecaster of this node could earn at that rate: the gap
between gridtao and the oracle that no forecast can close. Bench code, not the product's."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gridtao.bench.plannerday import DAY_S, HOUR_S
from gridtao.bench.plannerweek import Week, pooled
from gridtao.history.synth import Job, JobModel, SyntheticNode, draw_with, sample_day_load
from gridtao.tier3 import Forecast

__all__ = ["BOUND_QUANTILES", "BOUND_SAMPLES", "informed_forecasts", "sample_jobs"]

FloatArray = npt.NDArray[np.float64]

#: Futures sampled per day.
BOUND_SAMPLES = 200
#: Quantiles of each hour's sampled lowest minute planned on (0: the lowest of the samples).
BOUND_QUANTILES = (0.5, 0.25, 0.1, 0.05, 0.01, 0.0)


def sample_jobs(node: SyntheticNode, gate_min: float, end_min: float, model: JobModel,
                rng: np.random.Generator) -> list[Job]:
    """One future of ``node``'s jobs up to row ``end_min``, as known at row ``gate_min``
    (minutes from its first row): jobs that ended before the gate as they ran; a job running at
    the gate with its length drawn from ``model``'s log-uniform law above its age (at least
    its age); then new arrivals from the gate drawn from ``model``, turned away when the GPUs
    the jobs hold leave no room."""
    lo_min, hi_min = 60.0 * model.min_h, 60.0 * model.max_h
    jobs: list[Job] = []
    for job in node.jobs:
        if job.start_min >= gate_min:
            break  # synth lists jobs in start order; from here on, unknown at the gate
        age = gate_min - job.start_min
        if job.length_min <= age:
            jobs.append(job)
            continue
        low = max(lo_min, age)
        length = (low if low >= hi_min
                  else math.exp(rng.uniform(math.log(low), math.log(hi_min))))
        jobs.append(Job(job.start_min, length, job.size, job.level_w))
    running = [(j.start_min + j.length_min, j.size) for j in jobs
               if j.start_min + j.length_min > gate_min]
    sizes, weights = model.size_choices(node.gpus)
    t = gate_min
    while True:
        gap, size, length, level = model.draw(rng, sizes, weights, node.tdp_w)
        t += gap  # arrivals are Poisson: the wait from the gate is a fresh exponential
        if t >= end_min:
            return jobs
        running = [(end, k) for end, k in running if end > t]
        if sum(k for _, k in running) + size > node.gpus:
            continue
        running.append((t + length, size))
        jobs.append(Job(t, length, size, level))


def informed_forecasts(week: Week, day_start: int, quantiles: Sequence[float] = BOUND_QUANTILES,
                       samples: int = BOUND_SAMPLES, seed: int = 0, *,
                       knows_inference: bool = True) -> dict[float, Forecast]:
    """The day's forecast per quantile (module docstring), sampled as known ``week.lead_s``
    before ``day_start`` (a local midnight); deterministic in ``seed`` and the day. The site's
    nodes (``--nodes``) are sampled each on its own and summed as :func:`pooled` sums them.
    ``knows_inference`` False: each future's inference load is drawn too, as synth draws a
    day's (:func:`~gridtao.history.synth.sample_day_load`), not taken from the day."""
    first = int(week.t[0])
    gate = (day_start - week.lead_s - first) / 60.0
    lo = (day_start - first) // 60
    hi = lo + DAY_S // 60
    rng = np.random.default_rng([seed, day_start, 29, knows_inference])
    lowest = np.empty((samples, 24))
    mean = np.empty((samples, 24))
    for k in range(samples):
        drawn = [draw_with(node, sample_jobs(node, gate, hi, week.job_model, rng), lo, hi,
                           None if knows_inference
                           else sample_day_load(node.base_load[lo:hi], rng))
                 for node in week.parts]
        site_mean, site_p10 = pooled(np.array([m for m, _ in drawn]),
                                     np.array([q for _, q in drawn]))
        lowest[k] = site_p10.reshape(24, 60).min(axis=1)
        mean[k] = site_mean.reshape(24, 60).mean(axis=1)
    p50 = np.median(mean, axis=0)
    p90 = np.maximum(np.quantile(mean, 0.9, axis=0), p50)
    known = "the day's inference" if knows_inference else "the model's inference"
    return {q: Forecast(day_start, HOUR_S,
                        np.minimum(np.quantile(lowest, q, axis=0, method="lower"), p50), p50,
                        p90, method=f"informed ({known}), q{q:g} of {samples} futures")
            for q in quantiles}
