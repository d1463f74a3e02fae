"""How nodes' draws move together: the correlation a site may claim when it pools them.

A site coordinator that pools its nodes' forecasts (``site.market.pooling_correlation``)
combines their spreads with one correlation ``rho`` between every two nodes: spread of the sum
= sqrt((1 - rho) * sum(s_i^2) + rho * (sum s_i)^2). :func:`draw_correlation` estimates the
``rho`` that makes this right for the site's own nodes, from their minute histories, in a way
meant to be read and checked:

1. per node, the mean draw of each hour that has at least ``MIN_MINUTES`` minutes of history
   and no minute under a grid activation (a capped draw is not the node's own);
2. per node, each hour's residual: its mean less the node's median for that hour of the week
   over the window (the daily and weekly shape every node shares, and a forecast knows, taken
   out); an hour of the week seen fewer than twice in the window does not count, so the window
   needs two weeks at least (four give steadier figures);
3. over the hours every node has (at least ``MIN_HOURS``), the site's **equicorrelation**: the
   ``rho`` for which the formula above gives the spread the residuals' sum really has,
   ``(var(sum r_i) - sum var(r_i)) / ((sum sd_i)^2 - sum var(r_i))``. It weighs each pair by
   the size of its nodes' swings, as the site's sum does (a plain mean over pairs lets many
   small steady nodes hide two large ones that move together);
4. how far that could be off: the same figure over ``BOOTSTRAP_DRAWS`` resamplings of whole
   days (days, not hours, because one hour's residual and the next are related: jobs last
   hours); the value suggested to claim is their ``UPPER_QUANTILE`` quantile, rounded up to
   0.05 and within [0, 1].

Pairs of nodes are also correlated one by one, for reading. On the synthetic history of
gridtao's simulator (independent nodes, jobs of 2-24 h), four weeks measure 0 give or take
about 0.1 per pair, and the suggested value lands near 0.1-0.2 for a few nodes.

Pure functions over arrays; power in W, times in Unix seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import numpy.typing as npt

from gridtao.history.rows import MinuteRow

__all__ = ["BOOTSTRAP_DRAWS", "MIN_HOURS", "MIN_MINUTES", "UPPER_QUANTILE", "PairCorrelation",
           "SiteCorrelation", "draw_correlation", "equicorrelation", "hourly_residuals"]

MIN_MINUTES = 45  # of an hour's 60, for the hour to count
MIN_HOURS = 48  # in common, for a correlation to count
BOOTSTRAP_DRAWS = 400
UPPER_QUANTILE = 0.975
HOUR_S = 3600
DAY_S = 86_400
WEEK_S = 7 * DAY_S


@dataclass(frozen=True)
class PairCorrelation:
    """Two nodes' residual correlation over ``hours`` hours both have (None: too few)."""

    a: str
    b: str
    hours: int
    rho: float | None


@dataclass(frozen=True)
class SiteCorrelation:
    """``rho``: the site's equicorrelation over ``common_hours`` hours every node has (None:
    fewer than ``MIN_HOURS``, or a node that never moves off its shape); ``upper``: its
    ``UPPER_QUANTILE`` quantile over day resamplings; ``suggested``: ``upper`` rounded up to
    0.05 within [0, 1], the value to configure. ``pairs`` and ``hours`` (per node, hours that
    counted) for reading."""

    pairs: tuple[PairCorrelation, ...]
    hours: Mapping[str, int]
    common_hours: int
    rho: float | None
    upper: float | None

    @property
    def suggested(self) -> float | None:
        if self.upper is None:
            return None
        return min(1.0, max(0.0, math.ceil(round(self.upper * 20.0, 9)) / 20.0))


def hourly_residuals(rows: Sequence[MinuteRow], *, tz_offset_s: int = 0) -> dict[int, float]:
    """Hour start -> that hour's mean draw less the node's median for its hour of the (local)
    week (module docstring, steps 1 and 2)."""
    sums: dict[int, list[float]] = {}
    for r in rows:
        hour = r.start_s // HOUR_S * HOUR_S
        cell = sums.setdefault(hour, [0.0, 0.0, 0.0])  # total, minutes, activated minutes
        cell[0] += r.it_mean_w
        cell[1] += 1.0
        cell[2] += 1.0 if r.event_s > 0 else 0.0
    means = {h: c[0] / c[1] for h, c in sums.items() if c[1] >= MIN_MINUTES and c[2] == 0}

    def slot(hour: int) -> int:
        return (hour + tz_offset_s) % WEEK_S // HOUR_S

    by_slot: dict[int, list[float]] = {}
    for hour, w in means.items():
        by_slot.setdefault(slot(hour), []).append(w)
    medians = {k: float(np.median(v)) for k, v in by_slot.items() if len(v) >= 2}
    return {h: w - medians[slot(h)] for h, w in means.items() if slot(h) in medians}


def _pearson(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float | None:
    sx, sy = float(np.std(x)), float(np.std(y))
    if sx <= 1e-9 or sy <= 1e-9:
        return None  # a node that never moves off its shape: no co-movement to measure
    return float(np.mean((x - x.mean()) * (y - y.mean())) / (sx * sy))


def equicorrelation(residuals: npt.NDArray[np.float64]) -> float | None:
    """The ``rho`` of the module docstring's step 3 (rows: nodes, columns: hours)."""
    var = residuals.var(axis=1)
    sd = np.sqrt(var)
    cross = float(sd.sum() ** 2 - var.sum())
    if residuals.shape[0] < 2 or cross <= 1e-9 or float(sd.min()) <= 1e-9:
        return None
    return (float(residuals.sum(axis=0).var()) - float(var.sum())) / cross


def draw_correlation(histories: Mapping[str, Sequence[MinuteRow]], *,
                     tz_offset_s: int = 0, seed: int = 0) -> SiteCorrelation:
    """The site's figures from each node's minutes (node -> rows; module docstring).
    ``seed``: the day resamplings' (the same inputs give the same figures)."""
    residuals = {n: hourly_residuals(rows, tz_offset_s=tz_offset_s)
                 for n, rows in sorted(histories.items())}
    pairs = []
    for a, b in combinations(residuals, 2):
        common = sorted(set(residuals[a]) & set(residuals[b]))
        rho = None
        if len(common) >= MIN_HOURS:
            rho = _pearson(np.array([residuals[a][h] for h in common]),
                           np.array([residuals[b][h] for h in common]))
        pairs.append(PairCorrelation(a, b, len(common), rho))
    hours = {n: len(r) for n, r in residuals.items()}
    every = sorted(set.intersection(*(set(r) for r in residuals.values()))) if residuals else []
    if len(every) < MIN_HOURS or len(residuals) < 2:
        return SiteCorrelation(tuple(pairs), hours, len(every), None, None)
    matrix = np.array([[r[h] for h in every] for r in residuals.values()])
    rho = equicorrelation(matrix)
    if rho is None:
        return SiteCorrelation(tuple(pairs), hours, len(every), None, None)
    days = (np.array(every) + tz_offset_s) // DAY_S  # local days, as the residuals' slots
    columns = [np.flatnonzero(days == d) for d in np.unique(days)]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(BOOTSTRAP_DRAWS):
        picked = rng.integers(0, len(columns), len(columns))
        got = equicorrelation(matrix[:, np.concatenate([columns[i] for i in picked])])
        if got is not None:
            draws.append(got)
    upper = float(np.quantile(draws, UPPER_QUANTILE)) if draws else None
    return SiteCorrelation(tuple(pairs), hours, len(every), rho, upper)
