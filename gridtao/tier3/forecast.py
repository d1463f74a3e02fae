"""Tier 3's model of the node's natural IT draw per market time unit (MTU).

:func:`forecast_draw` makes a :class:`Forecast` (:mod:`gridtao.tier3.draw`: ``p10_w`` of each
MTU's *lowest* draw, ``p50_w`` and ``p90_w`` of its *mean* draw, W) from per-minute history
rows; its baseline is :mod:`gridtao.tier3.persistence`, its scores :mod:`gridtao.tier3.scores`.

The model (:func:`forecast_draw`), one sentence per step:

1. Only history from before ``now_s`` is used, at most the last ``weeks`` weeks.
2. Each MTU slot of the history becomes two numbers: the mean of its minute means and the minimum
   of its minute p10s; a slot missing more than ``1 - min_coverage`` of its minutes is left out
   (the gap could hide its dip).
3. Profile: slots are grouped by hour of the day, by hour of the day and day type (weekday or
   weekend: once a whole weekend was seen) or by hour of the week (once half its hours were seen
   on two days and its leave-one-day-out medians erred less than the day type's on the
   history's own days); a group's level is the median of its slots' means, its floor the median
   of their minimums.
4. Spread, per hour group: each slot's leave-one-day-out residual (how far it fell from its
   group's median over the *other* days: an honest out-of-sample error); the forecast adds the
   empirical quantiles of its own group's residuals (q10 of the minimum's for ``p10_w``, q50
   and q90 of the mean's), shrunk toward those of all groups while the group has fewer than 12,
   so no distribution is assumed and a steady hour gets a narrow spread, a bursty one a wide one.
5. Recent level: the last ``recent_s`` of minutes' mean deviation from the profile is carried
   forward fading as rho ** (lead / mtu_s), rho being the residuals' lag-one autocorrelation in
   the same history (clipped to [0, 0.99]): a job that persists keeps its level, noise fades.
   ``p10_w`` takes it only when it is negative: a job that lifts the draw can end in any minute.
6. ``p10 <= p50 <= p90`` and ``p10 >= 0`` are enforced.

Not enough history (less than 24 h, or fewer than half of the profile's hours seen on two days:
about 36 h) is a :class:`ForecastError`. Quantiles of *per-minute* values are not used for the
low quantile: the minute p10's 10th percentile lies above the MTU's minimum in almost every MTU
(for independent minutes all 60 would have to stay above it: 0.9 ** 60), covering ~0 %.

Times are unix seconds; hours of the week start Monday 00:00 at ``tz_offset_s`` east of UTC (a
fixed offset: daylight-saving changes are not followed). Pure functions: any thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gridtao.tier3.draw import (
    DAY_S,
    HOUR_S,
    MIN_RESIDUALS,
    MINUTE_S,
    WEEK_S,
    FloatArray,
    Forecast,
    ForecastError,
    IntArray,
    history_rows,
    monotone_forecast,
    mtu_grid,
    mtu_summary,
)
from gridtao.tier3.persistence import persistence_forecast

# The draw data and the baseline lived here before this module was split: importers may keep
# importing them from here.
__all__ = ["DAY_S", "HOUR_S", "MINUTE_S", "Forecast", "ForecastError", "forecast_draw",
           "history_rows", "mtu_summary", "persistence_forecast"]

_MONDAY_S = 3 * DAY_S  # 1970-01-01 was a Thursday


#: The profiles (the ``method`` of a forecast) and their number of hour groups.
PROFILES = {"hour-of-week": 168, "hour-of-day-type": 48, "hour-of-day": 24}


def _bins(t: IntArray, tz_offset_s: int, kind: str) -> IntArray:
    """Hour group of each time: hour of the day (0-23), of the day by day type (weekdays
    0-23, weekends 24-47) or of the week (Monday 00:00 is 0), local at ``tz_offset_s``."""
    local = t + tz_offset_s
    hod = (local % DAY_S) // HOUR_S
    if kind == "hour-of-day":
        return hod
    dow = ((local + _MONDAY_S) // DAY_S) % 7  # Monday 0
    if kind == "hour-of-week":
        out: IntArray = dow * 24 + hod
        return out
    out = hod + 24 * (dow >= 5)
    return out


@dataclass(frozen=True)
class _Profile:
    kind: str
    level: FloatArray  # per hour group: median slot mean (NaN: never seen)
    floor: FloatArray  # per hour group: median slot minimum
    res_mean: FloatArray  # per slot: leave-one-day-out residual (NaN: group seen on one day)
    res_low: FloatArray
    twice: npt.NDArray[np.bool_]  # per hour group: seen on two or more days

    @property
    def repeated(self) -> int:
        """Hour groups seen on two or more days."""
        return int(self.twice.sum())

    @property
    def usable(self) -> bool:
        """Half its hour groups seen on two days (half of each day type's, for the day-type
        profile: a whole weekend), so their spread is measured; and enough residuals."""
        parts = self.twice.reshape(2, 24) if self.kind == "hour-of-day-type" else [self.twice]
        return (all(2 * int(p.sum()) >= p.size for p in parts)
                and int(np.sum(np.isfinite(self.res_mean))) >= MIN_RESIDUALS)


def _profile(st: IntArray, mean: FloatArray, low: FloatArray, tz_offset_s: int,
             kind: str) -> _Profile:
    b, day = _bins(st, tz_offset_s, kind), (st + tz_offset_s) // DAY_S
    level, floor = np.full(PROFILES[kind], np.nan), np.full(PROFILES[kind], np.nan)
    res_m, res_l = np.full(st.shape, np.nan), np.full(st.shape, np.nan)
    twice = np.zeros(PROFILES[kind], dtype=bool)
    for k in np.unique(b):
        idx = np.flatnonzero(b == k)
        level[k], floor[k] = np.median(mean[idx]), np.median(low[idx])
        other = day[idx][:, None] != day[idx][None, :]  # row j: slots of other days than j's
        rows = other.any(axis=1)
        if not rows.any():
            continue
        twice[k] = True
        cnt = other[rows].sum(axis=1)
        r = np.arange(cnt.size)
        for src, dst in ((mean, res_m), (low, res_l)):
            # each row's median over the other days' slots (NaNs sort last)
            m = np.sort(np.where(other[rows], src[idx][None, :], np.nan), axis=1)
            med = (m[r, (cnt - 1) // 2] + m[r, cnt // 2]) / 2
            dst[idx[rows]] = src[idx[rows]] - med
    return _Profile(kind, level, floor, res_m, res_l, twice)


def _lookup(prof: _Profile, fallback: _Profile, field: str, overall: float, t: IntArray,
            tz_offset_s: int) -> FloatArray:
    out = getattr(prof, field)[_bins(t, tz_offset_s, prof.kind)]
    miss = np.isnan(out)
    out[miss] = getattr(fallback, field)[_bins(t[miss], tz_offset_s, fallback.kind)]
    return np.where(np.isnan(out), overall, out)


def _quantiles_by_key(values: FloatArray, keys: IntArray, n_keys: int, q: float
                      ) -> tuple[FloatArray, IntArray]:
    """Per key in ``range(n_keys)``: the ``q``-quantile of its values and how many it has (NaN
    for a key without values). Weibull's plotting positions (the k-th smallest of n stands at
    k / (n + 1), interpolated linearly; numpy's ``method="weibull"``): a fresh value falls
    below it with probability ``q`` for any n, where under numpy's default it would fall below
    ``(1 - 2 q) / (n + 1)`` more often (a 10th percentile of 20 residuals covering 86 %, not
    90 %)."""
    order = np.lexsort((values, keys))
    v, k = values[order], keys[order]
    n = np.bincount(k, minlength=n_keys)
    first = np.concatenate([[0], np.cumsum(n)[:-1]])
    pos = first + np.clip((n + 1) * q - 1.0, 0.0, np.maximum(n - 1, 0))
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, first + np.maximum(n - 1, 0))
    out = np.full(n_keys, np.nan)
    has = n > 0
    frac = pos - lo
    out[has] = v[lo[has]] * (1.0 - frac[has]) + v[hi[has]] * frac[has]
    return out, n


def _group_quantiles(res: FloatArray, keys: IntArray, n_keys: int, q: float) -> FloatArray:
    """Per key: the ``q``-quantile of the finite residuals with that key, shrunk toward the
    quantile of all of them while the key has fewer than :data:`MIN_RESIDUALS`: weight
    ``n / MIN_RESIDUALS`` on its own (n: its residuals), the rest on the pooled one."""
    ok = np.isfinite(res)
    res, keys = res[ok], keys[ok]
    pooled = float(np.quantile(res, q, method="weibull"))
    group, n = _quantiles_by_key(res, keys, n_keys, q)
    w = np.minimum(1.0, n / MIN_RESIDUALS)
    out: FloatArray = np.where(n > 0, w * np.nan_to_num(group) + (1.0 - w) * pooled, pooled)
    return out


def _lag1(st: IntArray, r: FloatArray, mtu_s: int) -> float:
    """Lag-one autocorrelation of consecutive slots' residuals, clipped to [0, 0.99]."""
    ok = np.isfinite(r)
    st, r = st[ok], r[ok]
    pair = np.flatnonzero(np.diff(st) == mtu_s)
    a, b = r[pair], r[pair + 1]
    den = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    if pair.size < MIN_RESIDUALS or den == 0.0:
        return 0.0
    return float(np.clip(np.sum(a * b) / den, 0.0, 0.99))


def forecast_draw(history_start_s: npt.ArrayLike, history_it_w: npt.ArrayLike,
                  history_p10_w: npt.ArrayLike | None, *, start_s: int, mtu_s: int, horizon: int,
                  now_s: float | None = None, weeks: int = 4, recent_s: int = HOUR_S,
                  tz_offset_s: int = 0, min_coverage: float = 0.75) -> Forecast:
    """Forecast ``horizon`` MTUs from ``start_s`` (see the module docstring for the model).

    History: per-minute rows, ``history_start_s`` strictly increasing multiples of 60 (gaps
    allowed, NaN values are gaps), ``history_it_w`` the minute's mean draw and ``history_p10_w``
    its 10th percentile of 1-s draw (None: the minute mean stands in, and within-minute dips go
    unseen). ``now_s`` (default: the end of the last row) is when the forecast is made; rows
    after it are ignored. ``weeks``: how much history the profile uses; ``recent_s``: the window
    of the recent level (0: none); ``tz_offset_s``: local time's offset east of UTC, for the
    hours of the day and week; ``min_coverage``: the fraction of an MTU's minutes it needs to
    count. ForecastError when the history is too short or malformed.
    """
    grid = mtu_grid(start_s, mtu_s, horizon)
    t, it, low, now = history_rows(history_start_s, history_it_w, history_p10_w, now_s,
                                   weeks * WEEK_S)
    span = float(t[-1] + MINUTE_S - t[0]) if t.size else 0.0
    if span < DAY_S:
        raise ForecastError(f"not enough history: {span / HOUR_S:.1f} h before now, need 24 h")
    st, mean, mins = mtu_summary(t, it, low, mtu_s, min_coverage)
    profs = {k: _profile(st, mean, mins, tz_offset_s, k) for k in PROFILES
             if k != "hour-of-week" or span >= WEEK_S}
    daily = profs["hour-of-day"]
    if not daily.usable:
        raise ForecastError(f"not enough history: {daily.repeated} of 24 hours of the day seen "
                            "on two days, need 12 (about 36 h of history)")
    prof = _choose(profs)
    overall_level, overall_floor = float(np.median(mean)), float(np.median(mins))

    def level(tt: IntArray) -> FloatArray:
        return _lookup(prof, daily, "level", overall_level, tt, tz_offset_s)

    recent = t >= now - recent_s
    shift = np.zeros(horizon)
    if recent.any():
        dev = float(np.mean(it[recent] - level(t[recent])))
        anchor = float(np.mean(t[recent])) + MINUTE_S / 2
        lead = np.maximum((grid + mtu_s / 2 - anchor) / mtu_s, 0.0)
        shift = dev * _lag1(st, prof.res_mean, mtu_s) ** lead
    # The spread of the profile's own hour group (weekday 14:00, Saturday 03:00...).
    keys, n_keys, g = _bins(st, tz_offset_s, prof.kind), PROFILES[prof.kind], \
        _bins(grid, tz_offset_s, prof.kind)
    q10 = _group_quantiles(prof.res_low, keys, n_keys, 0.1)[g]
    q50 = _group_quantiles(prof.res_mean, keys, n_keys, 0.5)[g]
    q90 = _group_quantiles(prof.res_mean, keys, n_keys, 0.9)[g]
    lv = level(grid) + shift
    # The lowest draw takes the recent level only when it is below the profile: a job that
    # lifts it can end in any minute of the MTU.
    fl = _lookup(prof, daily, "floor", overall_floor, grid, tz_offset_s) + np.minimum(shift, 0.0)
    return monotone_forecast(start_s, mtu_s, fl + q10, lv + q50, lv + q90, prof.kind)


def _choose(profs: dict[str, _Profile]) -> _Profile:
    """The day-type profile once usable, the week's instead where its leave-one-day-out
    medians erred less on the slots both measured; the hour of the day before that."""
    prof = profs["hour-of-day"]
    day_type = profs["hour-of-day-type"]
    if not day_type.usable:
        return prof
    week = profs.get("hour-of-week")
    if week is None or not week.usable:
        return day_type
    both = (np.isfinite(week.res_mean) & np.isfinite(day_type.res_mean)
            & np.isfinite(week.res_low) & np.isfinite(day_type.res_low))
    if not both.any():
        return day_type

    def error(p: _Profile) -> float:
        return float(np.mean(np.abs(p.res_mean[both])) + np.mean(np.abs(p.res_low[both])))

    return week if error(week) < error(day_type) else day_type
