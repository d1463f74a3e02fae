"""A deterministic synthetic minute history of one GPU node, for tests, benches and the demo.

The node's IT draw is the sum of its GPUs' draw (what gridtao measures through NVML). Each GPU
is, at any minute, in one of two states:

* **Training**: a job holds it. Jobs arrive as a Poisson process, :data:`JOB_RATE_PER_DAY`
  (3) a day on average, any time of day or week; each asks for 1, 2, 4 or 8 GPUs (weights
  0.25/0.30/0.30/0.15, at most the node's) for a log-uniform 2-24 h. A job that does not find
  enough free GPUs when it arrives is turned away (the scheduler places it elsewhere). A job's
  GPUs draw its level, drawn per job in 86-90 % of TDP, with 1-s averages spread by 3 % of TDP,
  the same on all its GPUs (data-parallel steps are synchronous).
* **Inference** (every GPU not in a job): ``idle_w + (0.6 * tdp_w - idle_w) * load`` where
  ``load`` is the :class:`~gridtao.gpu.sim.daily.DailyShape` multiplier at the middle of the
  minute (low at night, peak in the afternoon, lower at weekends), times a per-day factor
  (normal, mean 1, sd 5 %) and a slow per-minute wander (AR(1), ~20 min memory, sd 5 %),
  clipped to ``[0, 1]``. At load 0 the GPU idles at ``idle_w``. Its 1-s averages spread by
  ``max(3 W, 15 % of TDP * load)``, independently per GPU (requests are bursty).

Per minute, ``it_mean_w`` is the sum over GPUs; ``it_p10_w`` is the normal approximation
``mean - 1.2816 * sd`` of the 1-s averages (sd combining the jobs' and the inference GPUs'
spreads), clipped to ``[0.95 * gpus * idle_w, mean]``: a little below the mean when training
dominates, wider when inference does. ``energy_j`` is ``60 * it_mean_w``; ``limit_w`` is
``gpus * tdp_w`` (default limits); ``event_s`` is 0 (no grid events).

What is from sources and what is ours: that training holds ~88 % of TDP and inference is bursty
follows the simulator's workloads (docs/sources.md#workloads); the inference mean of 0.6 TDP is
the simulator's inference workload's mean; the job arrival rate, sizes and durations, the
spreads, the daily shape and its weekend factor are gridtao's own, chosen to look plausible,
not measured.

Deterministic: the same arguments always give the same rows, and a longer history starts with
the rows of a shorter one (the jobs, from 24 h before ``start_s`` so the history does not start
empty, the day factors and the wander come from separate streams of ``seed``, each drawn in
time order). Fast: one week at 8 GPUs is a few tens of milliseconds.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from gridtao.gpu.sim.daily import DailyShape
from gridtao.history.store import MinuteRow

__all__ = ["JOB_RATE_PER_DAY", "synthetic_minutes"]

JOB_RATE_PER_DAY = 3.0
_JOB_SIZES = (1, 2, 4, 8)
_JOB_SIZE_WEIGHTS = (0.25, 0.30, 0.30, 0.15)
_JOB_MIN_H, _JOB_MAX_H = 2.0, 24.0
_TRAIN_LEVEL = (0.86, 0.90)  # fraction of TDP, per job
_TRAIN_SPREAD = 0.03  # 1-s sd per GPU, fraction of TDP
_INFER_PEAK = 0.6  # fraction of TDP at load 1
_INFER_SPREAD = 0.15  # 1-s sd per GPU at load 1, fraction of TDP
_IDLE_SPREAD_W = 3.0
_DAY_SD = 0.05
_WANDER_SD = 0.05
_WANDER_PHI = math.exp(-1.0 / 20.0)  # ~20 min memory
_Z10 = 1.2816  # the standard normal's 90th percentile
_WARMUP_MIN = 24 * 60


def synthetic_minutes(start_s: int, days: float, *, gpus: int = 8, tdp_w: float = 700.0,
                      idle_w: float = 80.0, seed: int = 0,
                      shape: DailyShape | None = None) -> list[MinuteRow]:
    """``round(days * 1440)`` consecutive minute rows from the minute containing ``start_s``
    (Unix seconds), for a node of ``gpus`` GPUs of ``tdp_w`` that idle at ``idle_w`` (W),
    following ``shape`` (default :meth:`DailyShape.default`). See the module docstring for the
    model. Raises ``ValueError`` for days <= 0, gpus < 1 or not ``0 < idle_w < tdp_w``."""
    if not (math.isfinite(days) and days > 0):
        raise ValueError(f"days must be > 0, got {days}")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    if not (0.0 < idle_w < tdp_w and math.isfinite(tdp_w)):
        raise ValueError(f"need 0 < idle_w < tdp_w, got idle_w={idle_w}, tdp_w={tdp_w}")
    shape = shape if shape is not None else DailyShape.default()
    n = max(1, round(days * 1440))
    first = (int(start_s) // 60) * 60
    starts = first + 60 * np.arange(n, dtype=np.int64)
    # One stream per kind of draw, each in time order: a longer history starts with the rows
    # of a shorter one from the same arguments.
    jobs_rng, day_rng, wander_rng = (np.random.default_rng(s)
                                     for s in np.random.SeedSequence(seed).spawn(3))

    train_gpus, train_w, train_var = _jobs(jobs_rng, n, gpus, tdp_w)
    load = _load(day_rng, wander_rng, starts, shape)
    infer_gpus = gpus - train_gpus
    per_gpu = idle_w + (_INFER_PEAK * tdp_w - idle_w) * load
    mean = train_w + infer_gpus * per_gpu
    infer_sd = np.maximum(_IDLE_SPREAD_W, _INFER_SPREAD * tdp_w * load)
    sd = np.sqrt(train_var + infer_gpus * infer_sd**2)
    p10 = np.clip(mean - _Z10 * sd, 0.95 * gpus * idle_w, mean)
    limit = float(gpus * tdp_w)
    return [MinuteRow(int(s), float(m), float(q), 60.0 * float(m), limit, 0.0)
            for s, m, q in zip(starts.tolist(), mean.tolist(), p10.tolist(), strict=True)]


def _jobs(rng: np.random.Generator, n: int, gpus: int, tdp_w: float
          ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per minute: GPUs in training jobs, their summed draw (W) and the variance of its 1-s
    averages (W^2). Minute 0 is the first row; jobs start from ``-_WARMUP_MIN``."""
    busy = np.zeros(n, np.int64)
    draw = np.zeros(n, np.float64)
    var = np.zeros(n, np.float64)
    sizes = [s for s in _JOB_SIZES if s <= gpus] or [gpus]
    weights = np.asarray(_JOB_SIZE_WEIGHTS[:len(sizes)], np.float64)
    weights /= weights.sum()
    running: list[tuple[float, int]] = []  # (end minute, size)
    mean_gap_min = 1440.0 / JOB_RATE_PER_DAY
    t = -float(_WARMUP_MIN)
    while True:
        # Draw every property of a job whether or not it runs: the stream stays in time order.
        t += float(rng.exponential(mean_gap_min))
        size = int(sizes[int(rng.choice(len(sizes), p=weights))])
        length = 60.0 * math.exp(rng.uniform(math.log(_JOB_MIN_H), math.log(_JOB_MAX_H)))
        level = float(rng.uniform(*_TRAIN_LEVEL)) * tdp_w
        if t >= n:
            break
        running = [(end, k) for end, k in running if end > t]
        if sum(k for _, k in running) + size > gpus:
            continue  # turned away
        running.append((t + length, size))
        lo, hi = max(0, math.ceil(t)), min(n, math.ceil(t + length))
        if lo < hi:
            busy[lo:hi] += size
            draw[lo:hi] += size * level
            var[lo:hi] += (size * _TRAIN_SPREAD * tdp_w) ** 2
    return busy, draw, var


def _load(day_rng: np.random.Generator, wander_rng: np.random.Generator,
          starts: npt.NDArray[np.int64], shape: DailyShape) -> npt.NDArray[np.float64]:
    """Inference load per minute in ``[0, 1]``: the shape at mid-minute, times a per-day
    factor and a slow wander."""
    n = len(starts)
    base = shape.at_array(starts + 30)
    day = np.floor((starts + shape.offset_s) / 86_400).astype(np.int64)
    day -= day[0]
    day_factor = 1.0 + _DAY_SD * day_rng.standard_normal(int(day[-1]) + 1)
    x = float(wander_rng.standard_normal()) * _WANDER_SD  # start in the stationary distribution
    shocks = wander_rng.standard_normal(n) * (_WANDER_SD * math.sqrt(1.0 - _WANDER_PHI**2))
    wander = np.empty(n, np.float64)
    for i, e in enumerate(shocks.tolist()):
        x = _WANDER_PHI * x + e
        wander[i] = x
    out: npt.NDArray[np.float64] = np.clip(base * day_factor[day] * (1.0 + wander), 0.0, 1.0)
    return out
