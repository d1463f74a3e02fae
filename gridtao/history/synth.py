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
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gridtao.gpu.sim.daily import DailyShape
from gridtao.history.store import MinuteRow

__all__ = ["JOB_RATE_PER_DAY", "Job", "JobModel", "SyntheticNode", "draw_with", "inference_w",
           "sample_day_load", "synthetic_minutes", "synthetic_node"]

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


@dataclass(frozen=True)
class JobModel:
    """How training jobs arrive and what they ask for (module docstring): ``rate_per_day``
    arrivals (Poisson), sizes (GPUs) with their weights, a log-uniform ``min_h``-``max_h`` length,
    a per-job level in ``level`` (fractions of TDP). :meth:`current` reads the module's values
    at call time."""

    rate_per_day: float
    sizes: tuple[int, ...]
    size_weights: tuple[float, ...]
    min_h: float
    max_h: float
    level: tuple[float, float]

    @classmethod
    def current(cls) -> JobModel:
        """The module's job model as it stands now (a bench may have changed its lengths)."""
        return cls(JOB_RATE_PER_DAY, _JOB_SIZES, _JOB_SIZE_WEIGHTS, _JOB_MIN_H, _JOB_MAX_H,
                   _TRAIN_LEVEL)

    def size_choices(self, gpus: int) -> tuple[list[int], npt.NDArray[np.float64]]:
        """The sizes that fit ``gpus`` GPUs (the node's whole, if none does) and their
        probabilities."""
        sizes = [s for s in self.sizes if s <= gpus] or [gpus]
        weights = np.asarray(self.size_weights[:len(sizes)], np.float64)
        return sizes, weights / weights.sum()

    def draw(self, rng: np.random.Generator, sizes: list[int],
             weights: npt.NDArray[np.float64], tdp_w: float) -> tuple[float, int, float, float]:
        """One arrival: (gap since the last one, size, length, per-GPU level): minutes, GPUs,
        minutes, W. Always all four, in this order: a stream stays in time order."""
        gap = float(rng.exponential(1440.0 / self.rate_per_day))
        size = int(sizes[int(rng.choice(len(sizes), p=weights))])
        length = 60.0 * math.exp(rng.uniform(math.log(self.min_h), math.log(self.max_h)))
        return gap, size, length, float(rng.uniform(*self.level)) * tdp_w


@dataclass(frozen=True)
class Job:
    """A training job that ran: its start and length (minutes from the history's first row;
    the start may be negative), its GPUs and their draw each (W)."""

    start_min: float
    length_min: float
    size: int
    level_w: float


@dataclass(frozen=True)
class SyntheticNode:
    """What :func:`synthetic_minutes` draws, before it is summed: the minute starts (Unix s),
    the jobs that ran (including those begun before the first row), the daily shape's load per
    minute before its day factor and wander, and one inference GPU's mean draw and 1-s spread
    per minute (W). :meth:`minutes` sums them; a bench may sum them
    with other jobs (:func:`draw_with`)."""

    starts: npt.NDArray[np.int64]
    jobs: tuple[Job, ...]
    base_load: npt.NDArray[np.float64]
    infer_w: npt.NDArray[np.float64]
    infer_sd_w: npt.NDArray[np.float64]
    gpus: int
    tdp_w: float
    idle_w: float

    def minutes(self) -> list[MinuteRow]:
        """The minute rows (module docstring)."""
        mean, p10 = draw_with(self, self.jobs, 0, len(self.starts))
        limit = float(self.gpus * self.tdp_w)
        return [MinuteRow(int(s), float(m), float(q), 60.0 * float(m), limit, 0.0)
                for s, m, q in zip(self.starts.tolist(), mean.tolist(), p10.tolist(),
                                   strict=True)]


def synthetic_minutes(start_s: int, days: float, *, gpus: int = 8, tdp_w: float = 700.0,
                      idle_w: float = 80.0, seed: int = 0,
                      shape: DailyShape | None = None) -> list[MinuteRow]:
    """``round(days * 1440)`` consecutive minute rows from the minute containing ``start_s``
    (Unix seconds), for a node of ``gpus`` GPUs of ``tdp_w`` that idle at ``idle_w`` (W),
    following ``shape`` (default :meth:`DailyShape.default`). See the module docstring for the
    model. Raises ``ValueError`` for days <= 0, gpus < 1 or not ``0 < idle_w < tdp_w``."""
    return synthetic_node(start_s, days, gpus=gpus, tdp_w=tdp_w, idle_w=idle_w, seed=seed,
                          shape=shape).minutes()


def synthetic_node(start_s: int, days: float, *, gpus: int = 8, tdp_w: float = 700.0,
                   idle_w: float = 80.0, seed: int = 0,
                   shape: DailyShape | None = None) -> SyntheticNode:
    """The parts of :func:`synthetic_minutes` (same arguments, same errors)."""
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
    jobs = _jobs(jobs_rng, n, gpus, tdp_w)
    base = shape.at_array(starts + 30)
    load = _load(day_rng, wander_rng, starts, base, shape.offset_s)
    infer_w, infer_sd = inference_w(load, tdp_w, idle_w)
    return SyntheticNode(starts, tuple(jobs), base, infer_w, infer_sd, gpus, tdp_w, idle_w)


def inference_w(load: npt.NDArray[np.float64], tdp_w: float, idle_w: float
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """One inference GPU's mean draw and the spread of its 1-s averages at ``load`` (W)."""
    return (idle_w + (_INFER_PEAK * tdp_w - idle_w) * load,
            np.maximum(_IDLE_SPREAD_W, _INFER_SPREAD * tdp_w * load))


def sample_day_load(base: npt.NDArray[np.float64], rng: np.random.Generator
                    ) -> npt.NDArray[np.float64]:
    """A load for the minutes of one local day whose shape is ``base``, drawn as synth draws
    a day's (its factor, a wander started in its stationary distribution), from ``rng``."""
    factor = 1.0 + _DAY_SD * float(rng.standard_normal())
    wander = _wander(float(rng.standard_normal()) * _WANDER_SD, rng.standard_normal(len(base)))
    out: npt.NDArray[np.float64] = np.clip(base * factor * (1.0 + wander), 0.0, 1.0)
    return out


def draw_with(node: SyntheticNode, jobs: Iterable[Job], lo: int, hi: int,
              load: npt.NDArray[np.float64] | None = None
              ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The node's IT draw per minute of rows ``lo:hi`` (mean, p10; W) had ``jobs`` run on it
    (its own, or others a bench imagines): jobs' GPUs at their level, the rest inferring at
    the node's own load or at ``load`` (one value per row of ``lo:hi``)."""
    if not 0 <= lo <= hi <= len(node.starts):
        raise ValueError(f"rows {lo}:{hi} are not within the node's {len(node.starts)}")
    if load is not None and len(load) != hi - lo:
        raise ValueError(f"load needs one value per row of {lo}:{hi}, got {len(load)}")
    n = hi - lo
    busy = np.zeros(n, np.int64)
    train_w = np.zeros(n, np.float64)
    train_var = np.zeros(n, np.float64)
    for job in jobs:
        a = max(lo, math.ceil(job.start_min))
        b = min(hi, math.ceil(job.start_min + job.length_min))
        if a < b:
            busy[a - lo:b - lo] += job.size
            train_w[a - lo:b - lo] += job.size * job.level_w
            train_var[a - lo:b - lo] += (job.size * _TRAIN_SPREAD * node.tdp_w) ** 2
    infer, infer_sd = ((node.infer_w[lo:hi], node.infer_sd_w[lo:hi]) if load is None
                       else inference_w(load, node.tdp_w, node.idle_w))
    infer_gpus = node.gpus - busy
    mean = train_w + infer_gpus * infer
    sd = np.sqrt(train_var + infer_gpus * infer_sd**2)
    p10 = np.clip(mean - _Z10 * sd, 0.95 * node.gpus * node.idle_w, mean)
    return mean, p10


def _jobs(rng: np.random.Generator, n: int, gpus: int, tdp_w: float) -> list[Job]:
    """The jobs that ran, from ``-_WARMUP_MIN`` to row ``n`` (minutes from row 0)."""
    model = JobModel.current()
    sizes, weights = model.size_choices(gpus)
    accepted: list[Job] = []
    running: list[tuple[float, int]] = []  # (end minute, size)
    t = -float(_WARMUP_MIN)
    while True:
        # Draw every property of a job whether or not it runs: the stream stays in time order.
        gap, size, length, level = model.draw(rng, sizes, weights, tdp_w)
        t += gap
        if t >= n:
            break
        running = [(end, k) for end, k in running if end > t]
        if sum(k for _, k in running) + size > gpus:
            continue  # turned away
        running.append((t + length, size))
        accepted.append(Job(t, length, size, level))
    return accepted


def _load(day_rng: np.random.Generator, wander_rng: np.random.Generator,
          starts: npt.NDArray[np.int64], base: npt.NDArray[np.float64], offset_s: float
          ) -> npt.NDArray[np.float64]:
    """Inference load per minute in ``[0, 1]``: ``base`` (the shape at mid-minute), times a
    per-day factor and a slow wander."""
    n = len(starts)
    day = np.floor((starts + offset_s) / 86_400).astype(np.int64)
    day -= day[0]
    day_factor = 1.0 + _DAY_SD * day_rng.standard_normal(int(day[-1]) + 1)
    x = float(wander_rng.standard_normal()) * _WANDER_SD  # start in the stationary distribution
    wander = _wander(x, wander_rng.standard_normal(n))
    out: npt.NDArray[np.float64] = np.clip(base * day_factor[day] * (1.0 + wander), 0.0, 1.0)
    return out


def _wander(x: float, normals: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The AR(1) wander from ``x``, one step per standard normal of ``normals``."""
    shocks = normals * (_WANDER_SD * math.sqrt(1.0 - _WANDER_PHI**2))
    wander = np.empty(len(shocks), np.float64)
    for i, e in enumerate(shocks.tolist()):
        x = _WANDER_PHI * x + e
        wander[i] = x
    return wander
