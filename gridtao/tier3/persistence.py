"""Tier 3's baseline draw forecast, persistence: what the model (:mod:`gridtao.tier3.forecast`)
must beat to be worth its complexity (:func:`gridtao.tier3.scores.evaluate_holdout` scores both).

Each MTU is forecast as the same MTU on the latest earlier day with data, optionally widened by
the day-over-day change seen over the last day. Same history rows and :class:`Forecast` (W of
node IT draw, unix s) as the model (:mod:`gridtao.tier3.draw`); its ``method`` is
``"persistence"`` or ``"persistence+spread"``. Pure function: any thread.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gridtao.tier3.draw import (
    DAY_S,
    MIN_RESIDUALS,
    MINUTE_S,
    Forecast,
    ForecastError,
    history_rows,
    monotone_forecast,
    mtu_grid,
    mtu_summary,
)

__all__ = ["persistence_forecast"]


def persistence_forecast(history_start_s: npt.ArrayLike, history_it_w: npt.ArrayLike,
                         history_p10_w: npt.ArrayLike | None, *, start_s: int, mtu_s: int,
                         horizon: int, now_s: float | None = None, spread: bool = True,
                         min_coverage: float = 0.75) -> Forecast:
    """The baseline: each MTU as the same MTU on the latest earlier day with data (up to 7).

    ``spread=False``: that MTU's mean draw as all three quantiles. ``spread=True``: ``p10_w``
    from that MTU's minimum and ``p90_w`` from its mean, each plus the 10th / 90th percentile of
    the day-over-day change over the last day of history (when it has 12 such MTUs). An MTU
    with no earlier day takes the history's median.
    """
    grid = mtu_grid(start_s, mtu_s, horizon)
    t, it, low, now = history_rows(history_start_s, history_it_w, history_p10_w, now_s, 8 * DAY_S)
    if t.size == 0 or t[-1] + MINUTE_S - t[0] < DAY_S:
        raise ForecastError("not enough history for persistence: need 24 h")
    st, mean, mins = mtu_summary(t, it, low, mtu_s, min_coverage)
    if st.size == 0:
        raise ForecastError("not enough history for persistence: no complete MTU")
    p50, p10 = np.full(horizon, np.median(mean)), np.full(horizon, np.median(mins))
    found = np.zeros(horizon, dtype=bool)
    first_day = np.ceil((grid + mtu_s - now) / DAY_S).clip(min=1).astype(np.int64)
    for back in range(7):
        src = grid - (first_day + back) * DAY_S
        i = np.searchsorted(st, src).clip(max=st.size - 1)
        hit = ~found & (st[i] == src)
        p50[hit], p10[hit] = mean[i[hit]], mins[i[hit]]
        found |= hit
    p90 = p50.copy()
    if not spread:
        return monotone_forecast(start_s, mtu_s, p50.copy(), p50, p90, "persistence")
    last = st >= now - DAY_S
    j = np.searchsorted(st, st[last] - DAY_S).clip(max=st.size - 1)
    ok = st[j] == st[last] - DAY_S
    if ok.sum() >= MIN_RESIDUALS:
        p10 = p10 + np.quantile(mins[last][ok] - mins[j[ok]], 0.1)
        p90 = p90 + np.quantile(mean[last][ok] - mean[j[ok]], 0.9)
    return monotone_forecast(start_s, mtu_s, p10, p50, p90, "persistence+spread")
