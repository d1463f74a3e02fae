"""An informed reference for the planner bench (``gridtao bench planner``, its
``informed_reference``): tier 3 planned on the synthetic node's own predictive distribution at
the gate, to tell how much of the oracle's lead a better forecast could win.

The oracle plans on the day's actual draw, which no forecast made at the gate can know: training
jobs arrive at random (:mod:`gridtao.history.synth`). Each variant here is given more than a
forecaster of the node's draw has: the model that generates the node (job arrival rate, sizes,
lengths, levels; the inference load's daily shape, day factor and wander) and every job begun
before the gate (its start, size and level; one still running is known to be running, its end
is not). A job that starts or ends in the minute before the gate's row counts as known at the
gate (under a minute of extra knowledge). From these it samples ``samples`` futures of the day:
the running jobs' lengths drawn from their log-uniform law given that they have run so far, new
jobs arriving after the gate as the model makes them (turned away when they do not fit, as
synth does), the day's inference load as synth draws a day's. Each future's lowest minute p10
per hour, and its mean, give the forecast: the ``quantile`` of the lowest minute as its p10 (the
planner's bound on offers), the median and 90th percentile of the mean. Tier 3 then plans on it
like on any forecast.

Variants (:data:`KNOWS`): ``model`` knows only the above; ``inference`` is also given the day's
actual inference load; ``jobs`` is also given the day's actual jobs, those that start after the
gate included (their draws, not the inference). The last two split the oracle's lead between
what the jobs and what the inference load hide. The job futures and the loads are drawn from
separate streams, so ``model`` and ``inference`` plan on the same job futures.

It is a reference, not a bound: one quantile for every hour through the same optimiser is not
the best use of what it knows, so a forecaster can earn more at some rate of undeliverable
hours. What it earns at each quantile traces what knowing the model buys. Bench code, not the
product's."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from gridtao.bench.plannerday import DAY_S, HOUR_S
from gridtao.bench.plannerweek import Week, pooled
from gridtao.history.synth import Job, JobModel, SyntheticNode, draw_with, sample_day_load
from gridtao.tier3 import Forecast

__all__ = ["KNOWS", "REFERENCE_QUANTILES", "REFERENCE_SAMPLES", "Knows", "informed_forecasts",
           "sample_jobs"]

FloatArray = npt.NDArray[np.float64]
Knows = Literal["model", "inference", "jobs"]

#: The variants, by what each knows of the day beyond the model and the gate.
KNOWS: tuple[Knows, ...] = ("model", "inference", "jobs")
#: Futures sampled per day.
REFERENCE_SAMPLES = 200
#: Quantiles of each hour's sampled lowest minute planned on (0: the lowest of the samples).
REFERENCE_QUANTILES = (0.5, 0.25, 0.1, 0.05, 0.01, 0.0)


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


def informed_forecasts(week: Week, day_start: int,
                       quantiles: Sequence[float] = REFERENCE_QUANTILES,
                       samples: int = REFERENCE_SAMPLES, seed: int = 0, *,
                       knows: Knows = "model") -> dict[float, Forecast]:
    """The day's forecast per quantile (module docstring), sampled as known ``week.lead_s``
    before ``day_start`` (a local midnight) by the variant ``knows``; deterministic in
    ``seed`` and the day. The site's nodes (``--nodes``) are sampled each on its own and summed
    as :func:`pooled` sums them."""
    first = int(week.t[0])
    gate = (day_start - week.lead_s - first) / 60.0
    lo = (day_start - first) // 60
    hi = lo + DAY_S // 60
    jobs_rng = np.random.default_rng([seed, day_start, 29])
    load_rng = np.random.default_rng([seed, day_start, 31])
    lowest = np.empty((samples, 24))
    mean = np.empty((samples, 24))
    for k in range(samples):
        drawn = []
        for node in week.parts:
            jobs = (node.jobs if knows == "jobs"
                    else sample_jobs(node, gate, hi, week.job_model, jobs_rng))
            load = (None if knows == "inference"
                    else sample_day_load(node.base_load[lo:hi], load_rng))
            drawn.append(draw_with(node, jobs, lo, hi, load))
        site_mean, site_p10 = pooled(np.array([m for m, _ in drawn]),
                                     np.array([q for _, q in drawn]))
        lowest[k] = site_p10.reshape(24, 60).min(axis=1)
        mean[k] = site_mean.reshape(24, 60).mean(axis=1)
    p50 = np.median(mean, axis=0)
    p90 = np.maximum(np.quantile(mean, 0.9, axis=0), p50)
    return {q: Forecast(day_start, HOUR_S,
                        np.minimum(np.quantile(lowest, q, axis=0, method="lower"), p50), p50,
                        p90, method=f"informed (knows the {knows}), q{q:g} of {samples} futures")
            for q in quantiles}
