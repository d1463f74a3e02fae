"""The planner bench's week (``gridtao bench planner``; the module docstring of
:mod:`gridtao.bench.planner` says what it holds and why): the synthetic node's minutes from
``HISTORY_DAYS`` before the simulated days to their end, the market signals, each day's
forecast made at its gate from the history up to then, the forecaster's recent misses and the
margin learnt from them, and the forecaster scored against day-over-day persistence. A site of
several nodes (``--nodes``) draws the sum of as many independent synthetic nodes."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from gridtao.bench.planner_signals import market_signals
from gridtao.bench.plannerday import (
    CALIBRATION_DAYS,
    DAY_S,
    GPUS_PER_NODE,
    HISTORY_DAYS,
    HOUR_S,
    IDLE_W,
    LEAD_S,
    NODE,
    TDP_W,
    TZ_OFFSET_S,
    WEEK_START_S,
    BenchNode,
    Day,
    job_hours,
)
from gridtao.gpu.sim.daily import DailyShape
from gridtao.history.synth import JobModel, SyntheticNode, draw_with, synthetic_node
from gridtao.site.pooling import pooled_quantiles
from gridtao.tier3 import Forecast, forecast_draw, persistence_forecast, score
from gridtao.tier3.scores import calibrated_margin_w

FloatArray = npt.NDArray[np.float64]


def node_seed(seed: int, i: int) -> int:
    """The synthetic history's seed of the site's node ``i``: ``seed`` itself for node 0 (a
    one-node site is the bench's node), a stream spawned from ``(seed, i)`` for the others."""
    return seed if i == 0 else int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


def pooled(mean: FloatArray, p10: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The site's draw per minute from its nodes' (rows: nodes): the summed mean, and a p10
    whose spread below it combines the nodes' as independent normals (the root of the summed
    squares of each node's ``mean - p10``, synth's 1.2816 sd), clipped as synth clips a
    node's. One node: its own."""
    if len(mean) == 1:
        return mean[0], p10[0]
    total = mean.sum(axis=0)
    spread = np.sqrt(np.sum((mean - p10) ** 2, axis=0))
    low = 0.95 * len(mean) * GPUS_PER_NODE * IDLE_W
    return total, np.clip(total - spread, low, total)


class Week:
    """The site's minutes from ``HISTORY_DAYS`` before the week to its end, and the signals.
    ``hours``: the training jobs' length range (:func:`job_hours`; None: synth's); ``lead_s``:
    how long before a day starts it is planned (s); ``node``: the site (its nodes each draw an
    independent synthetic history, :func:`node_seed`, summed by :func:`pooled`)."""

    def __init__(self, days: int, seed: int, hours: tuple[float, float] | None = None,
                 lead_s: int = LEAD_S, node: BenchNode = NODE) -> None:
        self.lead_s = lead_s
        self.node = node
        first = WEEK_START_S - HISTORY_DAYS * DAY_S
        n = round((HISTORY_DAYS + days) * 1440)
        mean, p10 = np.empty((node.nodes, n)), np.empty((node.nodes, n))
        parts: list[SyntheticNode] = []
        with job_hours(hours):
            self.job_model = JobModel.current()
            for i in range(node.nodes):
                parts.append(synthetic_node(first, HISTORY_DAYS + days, gpus=GPUS_PER_NODE,
                                            tdp_w=TDP_W, idle_w=IDLE_W, seed=node_seed(seed, i),
                                            shape=DailyShape.default(offset_s=TZ_OFFSET_S)))
                mean[i], p10[i] = draw_with(parts[i], parts[i].jobs, 0, n)
        #: Each node's jobs and inference draw (what :mod:`gridtao.bench.plannerinformed` samples).
        self.parts = tuple(parts)
        self.t = parts[0].starts
        self.node_mean, self.node_p10 = mean, p10
        self.mean, self.p10 = pooled(mean, p10)
        self.signals = market_signals(WEEK_START_S, days * 24, seed=seed,
                                      tz_offset_s=TZ_OFFSET_S)
        self._forecasts: dict[int, Forecast] = {}
        self._node_forecasts: dict[int, list[Forecast]] = {}

    def day(self, d: int) -> Day:
        start = WEEK_START_S + d * DAY_S
        sel = (self.t >= start) & (self.t < start + DAY_S)
        return Day(start, self.mean[sel], self.p10[sel], self.signals.window(start, 24),
                   self.node)

    def forecast(self, day_start: int) -> Forecast:
        """The day's forecast, made ``lead_s`` before it from the history up to then only
        (cached)."""
        if day_start not in self._forecasts:
            made = day_start - self.lead_s
            before = self.t < made
            self._forecasts[day_start] = forecast_draw(
                self.t[before], self.mean[before], self.p10[before], start_s=day_start,
                mtu_s=HOUR_S, horizon=24, now_s=made, tz_offset_s=TZ_OFFSET_S)
        return self._forecasts[day_start]

    def site_forecast(self, day_start: int, rho: float) -> Forecast:
        """The day's forecast as the site coordinator makes it from its nodes' plans: each
        node's own forecast (from its own history, made ``lead_s`` before the day; cached), combined
        per hour with the correlation ``rho`` (:func:`gridtao.site.pooling.pooled_quantiles`;
        1: the nodes' quantiles summed, 0: independent)."""
        if day_start not in self._node_forecasts:
            made = day_start - self.lead_s
            before = self.t < made
            self._node_forecasts[day_start] = [
                forecast_draw(self.t[before], self.node_mean[i][before],
                              self.node_p10[i][before], start_s=day_start, mtu_s=HOUR_S,
                              horizon=24, now_s=made, tz_offset_s=TZ_OFFSET_S)
                for i in range(self.node.nodes)]
        own = self._node_forecasts[day_start]
        hours = [pooled_quantiles([{"p10_w": float(f.p10_w[k]), "p50_w": float(f.p50_w[k]),
                                    "p90_w": float(f.p90_w[k])} for f in own], rho)
                 for k in range(24)]
        p10, p50, p90 = (np.array([h[q] for h in hours]) for q in ("p10_w", "p50_w", "p90_w"))
        return Forecast(day_start, HOUR_S, p10, p50, p90, method=f"nodes pooled, rho {rho:g}")

    def node_day(self, day_start: int) -> tuple[FloatArray, list[Forecast]]:
        """Each node's minute means of the day (nodes x 1440) and its own forecast for it
        (:meth:`site_forecast` makes and caches them)."""
        self.site_forecast(day_start, 1.0)
        sel = (self.t >= day_start) & (self.t < day_start + DAY_S)
        return self.node_mean[:, sel], self._node_forecasts[day_start]

    def misses(self, day_start: int) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """How far the forecast p10 overshot each MTU's actual lowest minute (W, > 0: the
        forecast promised too much), over the ``CALIBRATION_DAYS`` days before ``day_start``,
        in the MTUs where it was above the floor (the only ones a plan offers in) and that had
        ended when ``day_start``'s plan is made: what
        :func:`gridtao.tier3.scores.recent_misses` gives the planner, from cached forecasts.
        Returns (MTU start_s, overshoot)."""
        starts: list[npt.NDArray[np.int64]] = []
        out: list[FloatArray] = []
        made = day_start - self.lead_s
        for b in range(CALIBRATION_DAYS, 0, -1):
            start = day_start - b * DAY_S
            p10 = self.forecast(start).p10_w
            sel = (self.t >= start) & (self.t < start + DAY_S)
            actual = self.p10[sel].reshape(24, 60).min(axis=1)
            ended = start + HOUR_S * (np.arange(24) + 1) <= made
            used = (p10 > self.node.floor_w) & ended
            starts.append(start + HOUR_S * np.flatnonzero(used).astype(np.int64))
            out.append(p10[used] - actual[used])
        return np.concatenate(starts), np.concatenate(out)

    def margin(self, day_start: int, quantile: float, block_h: int) -> FloatArray:
        """The day's learnt margin under the p10 per hour (W)."""
        t, miss = self.misses(day_start)
        grid = day_start + HOUR_S * np.arange(24, dtype=np.int64)
        return calibrated_margin_w(t, miss, grid, quantile=quantile, block_h=block_h,
                                   tz_offset_s=TZ_OFFSET_S)

    def forecast_scores(self, days: int) -> dict[str, Any]:
        """The forecaster against day-over-day persistence on the week's days, pooled."""
        pooled: dict[str, list[dict[str, float]]] = {"model": [], "persistence": []}
        for d in range(days):
            start = WEEK_START_S + d * DAY_S
            before = self.t < start - self.lead_s
            sel = (self.t >= start) & (self.t < start + DAY_S)
            hist = (self.t[before], self.mean[before], self.p10[before])
            kw: dict[str, Any] = {"start_s": start, "mtu_s": HOUR_S, "horizon": 24,
                                  "now_s": start - self.lead_s}
            made = {"model": forecast_draw(*hist, tz_offset_s=TZ_OFFSET_S, **kw),
                    "persistence": persistence_forecast(*hist, **kw)}
            for name, f in made.items():
                pooled[name].append(
                    score(f, self.t[sel], self.mean[sel], self.p10[sel]).to_dict())
        out: dict[str, Any] = {}
        for name, rows in pooled.items():
            n = sum(r["n_mtu"] for r in rows)
            out[name] = {k: sum(r[k] * r["n_mtu"] for r in rows) / n
                         for k in rows[0] if k != "n_mtu"} | {"n_mtu": n}
        out["skill_vs_persistence"] = 1.0 - (out["model"]["mean_pinball_w"]
                                             / max(out["persistence"]["mean_pinball_w"], 1e-9))
        return out
