"""Tier 3's draw data: the per-minute history a draw forecast is made from, and the per-MTU
:class:`Forecast` it is made into (by :mod:`gridtao.tier3.forecast`, the model, and
:mod:`gridtao.tier3.persistence`, its baseline; scored by :mod:`gridtao.tier3.scores`).

A reserve bid is deliverable only if the natural IT draw minus the floor covers it at every
instant of the market time unit (MTU), so a :class:`Forecast` gives per MTU (watts of node IT
draw):

- ``p10_w``: 10th percentile of the MTU's *lowest* draw, the minimum over its minutes of the
  per-minute 10th percentile of 1-s draw: what a bid can count on in 9 MTUs out of 10;
- ``p50_w``, ``p90_w``: median and 90th percentile of the MTU's *mean* draw (energy).

History is per-minute rows: each minute's start (unix s, a multiple of 60), its mean IT draw
and its 10th percentile of 1-s draw (W). :func:`history_rows` validates and windows them,
:func:`mtu_summary` turns them into one (mean, minimum) pair per MTU; :func:`mtu_grid` and
:func:`monotone_forecast` are every forecaster's first and last step.

Units: W and unix s. Invariants: a :class:`Forecast`'s arrays are read-only, finite, of one
length, with ``0 <= p10_w <= p50_w <= p90_w``. An immutable value and pure functions: any thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gridtao.errors import GridtaoError

__all__ = ["DAY_S", "HOUR_S", "MINUTE_S", "MIN_RESIDUALS", "WEEK_S", "FloatArray", "Forecast",
           "ForecastError", "IntArray", "history_rows", "monotone_forecast", "mtu_grid",
           "mtu_summary"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MINUTE_S, HOUR_S, DAY_S = 60, 3600, 86_400
WEEK_S = 7 * DAY_S
MIN_RESIDUALS = 12  # below this an empirical 10th percentile is a guess


class ForecastError(GridtaoError, ValueError):
    """A forecast or score that cannot be made (too little history, bad arrays): says why."""


def _ro(a: npt.ArrayLike) -> FloatArray:
    out = np.array(a, dtype=np.float64)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Forecast:
    """Per-MTU quantiles of node IT draw, W; MTU ``i`` is ``[start_s + i*mtu_s, + mtu_s)``.

    ``start_s`` is a multiple of ``mtu_s``; the arrays are read-only, finite, of the horizon's
    length, with ``0 <= p10_w <= p50_w <= p90_w``. ``method`` names the model that made it.
    """

    start_s: int
    mtu_s: int
    p10_w: FloatArray
    p50_w: FloatArray
    p90_w: FloatArray
    method: str = "given"

    def __post_init__(self) -> None:
        if self.mtu_s <= 0 or self.start_s % self.mtu_s:
            raise ForecastError(f"start_s {self.start_s} is not a multiple of mtu_s {self.mtu_s}")
        p10, p50, p90 = (_ro(a) for a in (self.p10_w, self.p50_w, self.p90_w))
        if p10.ndim != 1 or not p10.shape == p50.shape == p90.shape or p10.size == 0:
            raise ForecastError("p10_w, p50_w and p90_w must be 1-D, non-empty, of one length")
        if not np.all(np.isfinite(np.stack([p10, p50, p90]))):
            raise ForecastError("forecast quantiles must be finite")
        if np.any(p10 < 0) or np.any(p10 > p50) or np.any(p50 > p90):
            raise ForecastError("forecast quantiles must satisfy 0 <= p10 <= p50 <= p90")
        for name, a in (("p10_w", p10), ("p50_w", p50), ("p90_w", p90)):
            object.__setattr__(self, name, a)

    @property
    def horizon(self) -> int:
        return int(self.p50_w.shape[0])

    @property
    def end_s(self) -> int:
        return self.start_s + self.horizon * self.mtu_s

    def times_s(self) -> IntArray:
        """Each MTU's start, unix s."""
        return self.start_s + self.mtu_s * np.arange(self.horizon, dtype=np.int64)

    def index(self, t_s: float) -> int:
        """The MTU that contains ``t_s``; ForecastError outside the horizon."""
        if not self.start_s <= t_s < self.end_s:
            raise ForecastError(f"{t_s} is outside the forecast [{self.start_s}, {self.end_s})")
        return int((t_s - self.start_s) // self.mtu_s)

    def at(self, t_s: float) -> tuple[float, float, float]:
        """(p10_w, p50_w, p90_w) of the MTU that contains ``t_s``."""
        i = self.index(t_s)
        return float(self.p10_w[i]), float(self.p50_w[i]), float(self.p90_w[i])

    def window(self, start_s: int, n: int) -> Forecast:
        """The ``n`` MTUs from the one containing ``start_s`` (all inside the horizon)."""
        i = self.index(start_s)
        if n < 1 or i + n > self.horizon:
            raise ForecastError(f"{n} MTUs from {start_s} run past the forecast's end {self.end_s}")
        s = slice(i, i + n)
        return Forecast(self.start_s + i * self.mtu_s, self.mtu_s, self.p10_w[s], self.p50_w[s],
                        self.p90_w[s], self.method)

    def to_dict(self) -> dict[str, Any]:
        return {"start_s": self.start_s, "mtu_s": self.mtu_s, "method": self.method,
                "p10_w": self.p10_w.tolist(), "p50_w": self.p50_w.tolist(),
                "p90_w": self.p90_w.tolist()}


def history_rows(start_s: npt.ArrayLike, it_w: npt.ArrayLike, p10_w: npt.ArrayLike | None,
                 now_s: float | None, keep_s: float) -> tuple[IntArray, FloatArray, FloatArray,
                                                              float]:
    """Validated per-minute rows that ended by ``now_s`` and started within ``keep_s`` of it.

    Returns (start_s, it_w, p10_w, now_s); rows with a NaN are gaps and dropped; ``p10_w`` None
    is the minute mean; ``now_s`` None is the end of the last row. ForecastError on bad arrays.
    """
    t = np.asarray(start_s)
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise ForecastError("history start_s must be integers (unix s)")
    t = t.astype(np.int64)
    it = np.asarray(it_w, dtype=np.float64)
    low = it if p10_w is None else np.asarray(p10_w, dtype=np.float64)
    if t.ndim != 1 or it.shape != t.shape or low.shape != t.shape:
        raise ForecastError("history arrays must be 1-D and of one length")
    if np.any(t % MINUTE_S) or np.any(np.diff(t) <= 0):
        raise ForecastError("history start_s must be strictly increasing multiples of 60 s")
    if now_s is None:
        if t.size == 0:
            raise ForecastError("not enough history: none")
        now_s = float(t[-1] + MINUTE_S)
    oldest = now_s - keep_s if np.isfinite(keep_s) else -np.inf
    keep = (t + MINUTE_S <= now_s) & (t >= oldest) & np.isfinite(it) & np.isfinite(low)
    return t[keep], it[keep], low[keep], float(now_s)


def mtu_summary(t: IntArray, it: FloatArray, low: FloatArray, mtu_s: int,
                min_coverage: float) -> tuple[IntArray, FloatArray, FloatArray]:
    """Per MTU with at least ``min_coverage`` of its minutes: (start_s, mean of the minute
    means, minimum of the minute p10s), from :func:`history_rows`' output."""
    uniq, inv, count = np.unique(t // mtu_s, return_inverse=True, return_counts=True)
    mean = np.bincount(inv, weights=it, minlength=uniq.size) / np.maximum(count, 1)
    mins = np.full(uniq.shape, np.inf)
    np.minimum.at(mins, inv, low)
    ok = count >= min_coverage * (mtu_s // MINUTE_S)
    return uniq[ok] * mtu_s, mean[ok], mins[ok]


def mtu_grid(start_s: int, mtu_s: int, horizon: int) -> IntArray:
    """The starts (unix s) of the ``horizon`` MTUs a forecast from ``start_s`` covers;
    ForecastError unless ``mtu_s`` is whole minutes dividing an hour and ``start_s`` is
    aligned to it."""
    if mtu_s < MINUTE_S or mtu_s % MINUTE_S or HOUR_S % mtu_s:
        raise ForecastError(f"mtu_s must be a multiple of 60 that divides 3600, got {mtu_s}")
    if start_s % mtu_s or horizon < 1:
        raise ForecastError(f"need start_s aligned to mtu_s and horizon >= 1, got {start_s}, "
                            f"{horizon}")
    return start_s + mtu_s * np.arange(horizon, dtype=np.int64)


def monotone_forecast(start_s: int, mtu_s: int, p10: FloatArray, p50: FloatArray,
                      p90: FloatArray, method: str) -> Forecast:
    """The :class:`Forecast` of these quantiles with ``0 <= p10 <= p50 <= p90`` enforced (each
    raised to the one below it)."""
    p10 = np.maximum(p10, 0.0)
    p50 = np.maximum(p50, p10)
    return Forecast(start_s, mtu_s, p10, p50, np.maximum(p90, p50), method)
