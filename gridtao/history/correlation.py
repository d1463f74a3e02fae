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
   (at least ``MIN_HOURS``); the site's figure is the mean over the pairs.

Anything else the nodes share (a holiday, a common job) stays in the residuals and counts as
moving together: the estimate errs high, the safe side (a correlation claimed above the true one
is a margin). The residuals of one hour and the next are themselves related (jobs last hours), so
a month of history measures a correlation to about +-0.1.

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


@dataclass(frozen=True)
class SiteCorrelation:
    """Every pair's correlation; ``mean_rho`` their mean over the pairs that had enough hours
    (None: no pair had); ``suggested`` that mean clipped to [0, 1] and rounded *up* to 0.05,
    the value to configure."""

    pairs: tuple[PairCorrelation, ...]
    hours: Mapping[str, int]  # per node, hours that counted

    @property
    def mean_rho(self) -> float | None:
        found = [p.rho for p in self.pairs if p.rho is not None]
        return float(np.mean(found)) if found else None

    @property
    def suggested(self) -> float | None:
        rho = self.mean_rho
        if rho is None:
            return None
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


def draw_correlation(histories: Mapping[str, Sequence[MinuteRow]], *,
                     tz_offset_s: int = 0) -> SiteCorrelation:
    """The site's figure from each node's minutes (node -> rows; module docstring)."""
    residuals = {n: hourly_residuals(rows, tz_offset_s=tz_offset_s)
                 for n, rows in histories.items()}
    pairs = []
    for a, b in combinations(sorted(residuals), 2):
        common = sorted(set(residuals[a]) & set(residuals[b]))
        rho = None
        if len(common) >= MIN_HOURS:
            rho = _pearson(np.array([residuals[a][h] for h in common]),
                           np.array([residuals[b][h] for h in common]))
        pairs.append(PairCorrelation(a, b, len(common), rho))
    return SiteCorrelation(tuple(pairs), {n: len(r) for n, r in residuals.items()})
