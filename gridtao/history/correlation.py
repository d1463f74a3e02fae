"""How nodes' draws move together: the correlation a site may claim when it pools them.

A site coordinator that pools its nodes' forecasts (``site.market.pooling_correlation``) needs
to know how the nodes' draws move together once what each forecast already knows is taken out.
:func:`draw_correlation` estimates it from the nodes' minute histories, in a way meant to be
read and checked:

1. per node, the mean draw of each hour that has at least ``MIN_MINUTES`` minutes of history
   and no minute under a grid activation (a capped draw is not the node's own);
2. per node, each hour's residual: its mean less the node's median for that hour of the week
   over the window (the daily and weekly shape every node shares, and a forecast knows, taken
   out); an hour of the week seen fewer than twice in the window does not count, so the window
   needs two weeks at least (four give steadier figures);
3. per pair of nodes, the Pearson correlation of their residuals over the hours both have
   (at least ``MIN_HOURS``), and its standard error: the residuals of one hour and the next are
   related (jobs last hours), so the hours count as fewer independent samples,
   ``n (1 - a b) / (1 + a b)`` for lag-1 autocorrelations ``a`` and ``b`` (Bartlett), and the
   error is Fisher's ``(1 - rho^2) / sqrt(n_eff - 3)``;
4. the site's figure is the mean over the pairs; the value suggested to claim is that mean plus
   two standard errors (the pairs' mean error: they share nodes, so their errors do not
   average out), rounded up to 0.05 and within [0, 1].

Anything else the nodes share (a holiday, a common job) stays in the residuals and counts as
moving together: the estimate errs high, the safe side (a correlation claimed above the true one
is a margin). On the synthetic history of gridtao's simulator (jobs of 2-24 h), four weeks give
about 100 independent samples and a standard error near 0.1.

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

__all__ = ["MIN_HOURS", "MIN_MINUTES", "PairCorrelation", "SiteCorrelation", "draw_correlation",
           "hourly_residuals"]

MIN_MINUTES = 45  # of an hour's 60, for the hour to count
MIN_HOURS = 48  # in common, for a pair's correlation to count
HOUR_S = 3600
WEEK_S = 7 * 86_400


@dataclass(frozen=True)
class PairCorrelation:
    """Two nodes' residual correlation over ``hours`` hours both have (None: too few)."""

    a: str
    b: str
    hours: int
    rho: float | None
    #: Fisher's standard error over the effective samples (None with ``rho``).
    se: float | None = None
    effective_hours: float | None = None


@dataclass(frozen=True)
class SiteCorrelation:
    """Every pair's correlation; ``mean_rho`` their mean over the pairs that had enough hours
    (None: no pair had), ``mean_se`` their standard errors' mean; ``suggested`` the mean plus two
    standard errors, clipped to [0, 1] and rounded *up* to 0.05: the value to configure."""

    pairs: tuple[PairCorrelation, ...]
    hours: Mapping[str, int]  # per node, hours that counted

    @property
    def mean_rho(self) -> float | None:
        found = [p.rho for p in self.pairs if p.rho is not None]
        return float(np.mean(found)) if found else None

    @property
    def mean_se(self) -> float | None:
        found = [p.se for p in self.pairs if p.se is not None]
        return float(np.mean(found)) if found else None

    @property
    def suggested(self) -> float | None:
        rho = self.mean_rho
        if rho is None:
            return None
        rho += 2.0 * (self.mean_se or 0.0)
        return min(1.0, max(0.0, math.ceil(round(rho * 20.0, 9)) / 20.0))


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


def _lag1(hours: Sequence[int], values: Mapping[int, float]) -> float:
    """Lag-1 autocorrelation over the consecutive hours in ``hours`` (0 with too few)."""
    pairs = [(values[h], values[h + HOUR_S]) for h in hours if h + HOUR_S in values]
    if len(pairs) < 3:
        return 0.0
    x, y = np.array(pairs).T
    return _pearson(x, y) or 0.0


def _pair(a: str, b: str, ra: Mapping[int, float], rb: Mapping[int, float]) -> PairCorrelation:
    common = sorted(set(ra) & set(rb))
    if len(common) < MIN_HOURS:
        return PairCorrelation(a, b, len(common), None)
    rho = _pearson(np.array([ra[h] for h in common]), np.array([rb[h] for h in common]))
    if rho is None:
        return PairCorrelation(a, b, len(common), None)
    shared = set(common)
    auto = _lag1(common, {h: ra[h] for h in shared}) * _lag1(common, {h: rb[h] for h in shared})
    n_eff = len(common) * (1.0 - auto) / (1.0 + auto) if auto < 1.0 else 1.0
    se = (1.0 - rho * rho) / math.sqrt(max(n_eff - 3.0, 1.0))
    return PairCorrelation(a, b, len(common), rho, se, n_eff)


def draw_correlation(histories: Mapping[str, Sequence[MinuteRow]], *,
                     tz_offset_s: int = 0) -> SiteCorrelation:
    """The site's figure from each node's minutes (node -> rows; module docstring)."""
    residuals = {n: hourly_residuals(rows, tz_offset_s=tz_offset_s)
                 for n, rows in histories.items()}
    pairs = tuple(_pair(a, b, residuals[a], residuals[b])
                  for a, b in combinations(sorted(residuals), 2))
    return SiteCorrelation(pairs, {n: len(r) for n, r in residuals.items()})
