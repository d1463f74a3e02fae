"""How good tier 3's draw forecasts are: pinball loss, coverage, and a held-out evaluation.

Each MTU's actual values come from the same per-minute rows as the history
(:func:`gridtao.tier3.draw.mtu_summary`): its minimum per-minute p10 is what ``p10_w``
forecast, its mean draw what ``p50_w`` and ``p90_w`` forecast. The pinball (quantile) loss of
a forecast ``f`` of quantile ``q`` against an actual ``y`` is ``max(q (y - f), (q - 1) (y - f))``
averaged over MTUs, in W: it is minimised in expectation by the true quantile, so lower is
better and models can be compared on it (docs/planner-inputs.md).

:func:`recent_misses` and :func:`calibrated_margin_w` turn the forecaster's own recent misses
into a margin under ``p10_w`` for bids (split-conformal, per block of the local day). Pure
functions: any thread.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gridtao.tier3.draw import (
    DAY_S,
    HOUR_S,
    MINUTE_S,
    FloatArray,
    Forecast,
    ForecastError,
    IntArray,
    history_rows,
    mtu_summary,
)
from gridtao.tier3.forecast import forecast_draw
from gridtao.tier3.persistence import persistence_forecast

__all__ = ["ForecastScore", "calibrated_margin_w", "evaluate_holdout", "recent_misses", "score"]


@dataclass(frozen=True)
class ForecastScore:
    """How a forecast did over ``n_mtu`` MTUs with enough actual minutes.

    Pinball losses (W; lower is better) score ``p10_w`` against each MTU's minimum per-minute
    p10 and ``p50_w``, ``p90_w`` against its mean draw. ``p10_coverage``: fraction of MTUs whose
    minimum stayed at or above ``p10_w`` (~0.9 when calibrated); ``p90_coverage``: fraction
    whose mean stayed at or below ``p90_w``; ``mae_p50_w``: mean |mean draw - p50|.
    """

    n_mtu: int
    pinball_p10_w: float
    pinball_p50_w: float
    pinball_p90_w: float
    p10_coverage: float
    p90_coverage: float
    mae_p50_w: float

    @property
    def mean_pinball_w(self) -> float:
        return (self.pinball_p10_w + self.pinball_p50_w + self.pinball_p90_w) / 3

    def to_dict(self) -> dict[str, float]:
        """The fields and ``mean_pinball_w``, for JSON."""
        out: dict[str, float] = dataclasses.asdict(self)
        out["mean_pinball_w"] = self.mean_pinball_w
        return out


def _pinball(y: FloatArray, f: FloatArray, q: float) -> float:
    d = y - f
    return float(np.mean(np.maximum(q * d, (q - 1) * d)))


def score(forecast: Forecast, actual_start_s: npt.ArrayLike, actual_it_w: npt.ArrayLike,
          actual_p10_w: npt.ArrayLike | None, *, min_coverage: float = 0.75) -> ForecastScore:
    """Score ``forecast`` against actual per-minute rows (the history's shape and units)."""
    t, it, low, _ = history_rows(actual_start_s, actual_it_w, actual_p10_w, np.inf, np.inf)
    if t.size == 0:
        raise ForecastError("no actual minutes to score against")
    st, mean, mins = mtu_summary(t, it, low, forecast.mtu_s, min_coverage)
    inside = (st >= forecast.start_s) & (st < forecast.end_s)
    if not inside.any():
        raise ForecastError("no MTU of the forecast has enough actual minutes to score")
    i = (st[inside] - forecast.start_s) // forecast.mtu_s
    mean, mins = mean[inside], mins[inside]
    f10, f50, f90 = forecast.p10_w[i], forecast.p50_w[i], forecast.p90_w[i]
    return ForecastScore(int(i.size), _pinball(mins, f10, 0.1), _pinball(mean, f50, 0.5),
                         _pinball(mean, f90, 0.9), float(np.mean(mins >= f10)),
                         float(np.mean(mean <= f90)), float(np.mean(np.abs(mean - f50))))


def _pool(scores: list[ForecastScore]) -> dict[str, float]:
    n = sum(s.n_mtu for s in scores)
    fields = [f.name for f in dataclasses.fields(ForecastScore) if f.name != "n_mtu"]
    out = {k: sum(getattr(s, k) * s.n_mtu for s in scores) / n for k in fields}
    out["mean_pinball_w"] = (out["pinball_p10_w"] + out["pinball_p50_w"]
                             + out["pinball_p90_w"]) / 3
    out["n_mtu"] = n
    return out


def evaluate_holdout(history_start_s: npt.ArrayLike, history_it_w: npt.ArrayLike,
                     history_p10_w: npt.ArrayLike | None, *, mtu_s: int = HOUR_S,
                     days_held_out: int = 2, lead_s: int = 0, weeks: int = 4,
                     tz_offset_s: int = 0) -> dict[str, Any]:
    """Score the model and both persistence baselines on the last ``days_held_out`` whole days.

    Each held-out day is forecast at its start minus ``lead_s`` from the rows before that only,
    and scored against its own rows. Returns a JSON-ready dict: per day, then pooled over the
    days (``model``, ``persistence`` with spread, ``persistence_naive``), and
    ``skill_vs_persistence`` = 1 - model / persistence mean pinball loss (> 0: the model wins).
    """
    t = np.asarray(history_start_s).astype(np.int64)
    if t.size == 0 or days_held_out < 1:
        raise ForecastError("need history and days_held_out >= 1")
    end = (int(t[-1]) + MINUTE_S + tz_offset_s) // DAY_S * DAY_S - tz_offset_s
    days: list[dict[str, Any]] = []
    pooled: dict[str, list[ForecastScore]] = {"model": [], "persistence": [],
                                              "persistence_naive": []}
    for d in range(days_held_out, 0, -1):
        day0 = end - d * DAY_S
        sel = (t >= day0) & (t < day0 + DAY_S)
        a_t, a_it = t[sel], np.asarray(history_it_w)[sel]
        a_p10 = None if history_p10_w is None else np.asarray(history_p10_w)[sel]
        kw: dict[str, Any] = {"start_s": day0, "mtu_s": mtu_s, "horizon": DAY_S // mtu_s,
                              "now_s": day0 - lead_s}
        entry: dict[str, Any] = {"start_s": day0}
        try:
            made = {"model": forecast_draw(history_start_s, history_it_w, history_p10_w,
                                           weeks=weeks, tz_offset_s=tz_offset_s, **kw),
                    "persistence": persistence_forecast(history_start_s, history_it_w,
                                                        history_p10_w, **kw),
                    "persistence_naive": persistence_forecast(
                        history_start_s, history_it_w, history_p10_w, spread=False, **kw)}
            scored = {k: score(f, a_t, a_it, a_p10) for k, f in made.items()}
        except ForecastError as e:
            days.append({**entry, "error": str(e)})
            continue
        entry["method"] = made["model"].method
        for k, s in scored.items():
            entry[k] = s.to_dict()
            pooled[k].append(s)
        days.append(entry)
    if not pooled["model"]:
        raise ForecastError(f"no held-out day could be scored: {days[-1].get('error')}")
    out: dict[str, Any] = {"mtu_s": mtu_s, "days_held_out": days_held_out, "lead_s": lead_s,
                           "days": days}
    out.update({k: _pool(v) for k, v in pooled.items()})
    out["skill_vs_persistence"] = 1 - (out["model"]["mean_pinball_w"]
                                       / max(out["persistence"]["mean_pinball_w"], 1e-9))
    return out


def recent_misses(history_start_s: npt.ArrayLike, history_it_w: npt.ArrayLike,
                  history_p10_w: npt.ArrayLike | None, *, now_s: float, start_s: int,
                  mtu_s: int, horizon: int, days: int = 14, floor_w: float = 0.0,
                  weeks: int = 4, tz_offset_s: int = 0, min_coverage: float = 0.75
                  ) -> tuple[IntArray, FloatArray]:
    """The forecaster's own recent misses, where a bid would have counted on its ``p10_w``.

    For each of the ``days`` days before ``now_s``: the forecast :func:`forecast_draw` would
    have made ``k`` days earlier (at ``now_s - k`` days for ``horizon`` MTUs from ``start_s -
    k`` days, from the rows before then only), and, per MTU of it that ended by ``now_s`` with
    enough minutes and whose ``p10_w`` was above ``floor_w``, how far ``p10_w`` overshot the
    MTU's actual lowest draw (W; > 0: it promised too much). Returns (each MTU's start_s, its
    overshoot), oldest day first; a day whose forecast cannot be made is skipped.
    """
    t, it, low, _ = history_rows(history_start_s, history_it_w, history_p10_w, now_s,
                                 float(weeks * 7 * DAY_S + (days + 1) * DAY_S))
    st, _, mins = mtu_summary(t, it, low, mtu_s, min_coverage)
    starts: list[IntArray] = []
    misses: list[FloatArray] = []
    for k in range(days, 0, -1):
        try:
            f = forecast_draw(t, it, low, start_s=start_s - k * DAY_S, mtu_s=mtu_s,
                              horizon=horizon, now_s=now_s - k * DAY_S, weeks=weeks,
                              tz_offset_s=tz_offset_s, min_coverage=min_coverage)
        except ForecastError:
            continue
        inside = (st >= f.start_s) & (st < f.end_s) & (st + mtu_s <= now_s)
        i = (st[inside] - f.start_s) // mtu_s
        used = f.p10_w[i] > floor_w
        starts.append(st[inside][used])
        misses.append(f.p10_w[i][used] - mins[inside][used])
    if not starts:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(starts), np.concatenate(misses)


def calibrated_margin_w(miss_start_s: npt.ArrayLike, overshoot_w: npt.ArrayLike,
                        grid_start_s: npt.ArrayLike, *, quantile: float, block_h: int = 4,
                        tz_offset_s: int = 0) -> FloatArray:
    """Per MTU of ``grid_start_s``: how far to lower ``p10_w`` so that it would have covered
    ``quantile`` of the recent misses (:func:`recent_misses`) in its block of ``block_h`` hours
    of the local day (``tz_offset_s`` east of UTC; 24: one margin for the whole day).

    Split-conformal (Vovk et al. 2005; per block: "Mondrian"): of a block's ``n`` overshoots,
    the ``ceil((n + 1) quantile)``-th smallest, the largest when that is past ``n``; never
    below 0. Steady hours, which missed by little, get a small margin and bursty ones a large
    one. A block without misses takes the quantile of all of them; no misses at all, 0. Under
    exchangeable misses a fresh MTU is covered with probability at least ``quantile`` (up to
    ``n / (n + 1)``): no margin learnt from a finite past promises zero misses.
    """
    if not 0.0 < quantile <= 1.0:
        raise ForecastError(f"quantile must be in (0, 1], got {quantile}")
    if block_h < 1 or 24 % block_h:
        raise ForecastError(f"block_h must divide 24, got {block_h}")
    t = np.asarray(miss_start_s, dtype=np.int64)
    over = np.asarray(overshoot_w, dtype=np.float64)
    grid = np.asarray(grid_start_s, dtype=np.int64)
    if t.shape != over.shape:
        raise ForecastError("miss_start_s and overshoot_w must be of one length")

    def conformal(x: FloatArray) -> float:
        k = min(math.ceil((x.size + 1) * quantile), x.size)
        return max(0.0, float(np.sort(x)[k - 1]))

    if over.size == 0:
        return np.zeros(grid.shape)

    def block(tt: IntArray) -> IntArray:
        out: IntArray = ((tt + tz_offset_s) % DAY_S) // (block_h * HOUR_S)
        return out

    pooled = conformal(over)
    per = {int(b): conformal(over[block(t) == b]) for b in np.unique(block(t))}
    return np.array([per.get(int(b), pooled) for b in block(grid)], dtype=np.float64)
