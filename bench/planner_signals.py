"""Synthetic market signals for the planner bench: hourly day-ahead energy prices, reserve
capacity prices per product kind, and the carbon intensity of consumed electricity.

Shapes, with where each comes from. What is "ours" is a choice made to look plausible for a
Finnish week in early spring, not fitted to data; the bench compares strategies on the same
signals, so what matters is that the shapes differ by hour the way the real ones do.

* **Day-ahead energy price** (EUR/MWh, hourly): cheaper at night, a morning peak around
  08-09 and a higher evening peak around 18-19 local time, a shallow midday dip, weekends about
  20 % lower with a flatter morning, as the Finnish bidding zone's published day-ahead prices
  show (Nord Pool, https://data.nordpoolgroup.com/auction/day-ahead/prices?deliveryArea=FI;
  ENTSO-E Transparency Platform, https://transparency.entsoe.eu/). Ours: the hourly levels
  (:data:`ENERGY_SHAPE`), the daily level (log-normal around 60 EUR/MWh, day-to-day AR(1) 0.6,
  sd 0.3 in log), and a shared hourly "wind" AR(1) (phi 0.9, sd 1) that lowers prices (windy
  nights can reach slightly negative prices, floored at -5 EUR/MWh, as FI prices do).
* **FCR-N** (EUR/MW/h): Fingrid's hourly market (published per hour, marginal pricing:
  https://www.fingrid.fi/en/electricity-market/reserves_and_balancing/reserve-market-information/frequency-controlled-disturbance-reserve/,
  data at https://data.fingrid.fi/en/). Ours: around 20 EUR/MW/h, 40 % higher at night and
  at weekends (when fewer regulating units run), log-normal hour-to-hour noise (sd 0.35).
* **FCR-D upwards** (EUR/MW/h, used for ``fcr-d-up`` and ``fcr-d-up-static``): same market
  pages. Ours: around 8 EUR/MW/h, 50 % higher in the evening peak (17-20), 30 % lower at night,
  noise sd 0.5 (occasional spikes).
* **FFR** (EUR/MW/h): Fingrid procures FFR only in low-inertia hours
  (https://www.fingrid.fi/en/electricity-market/reserves_and_balancing/fast-frequency-reserve/,
  https://developers.fingrid.fi/FFR/business_context): light-load nights and weekends. Ours:
  procured (a price) on 00-06 local with probability 0.7 per night, and 10-16 on weekends;
  NaN (no procurement, so no offer) in every other hour; around 12 EUR/MW/h, noise sd 0.5.
* **Demand response** (EUR/MW/h availability): ours entirely, standing for a capacity-based
  DR programme paid to be available in the weekday evening peak (17-20 local): 1.5 x the
  day-ahead price above 40 EUR/MWh (0 when below), NaN outside those hours.
* **ERCOT FFR**: not a Nordic product: no price (NaN) in every hour.
* **Carbon intensity of consumed electricity** (gCO2/kWh): Fingrid's real-time emission factor
  for electricity consumed in Finland (https://data.fingrid.fi/en/datasets/265) runs at tens of
  g/kWh, higher at demand peaks (imports, peakers, CHP) and lower in windy hours. Ours: 70
  g/kWh x (0.8 + 0.4 x the demand shape :data:`DEMAND_SHAPE`) x exp(-0.3 x wind), clipped to
  [15, 250]; the same wind series as the price, so cheap and clean hours coincide.

Deterministic for a seed; pure numpy; any thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gridtao.tier3.signals import Series, Signals

__all__ = ["DEMAND_SHAPE", "ENERGY_SHAPE", "MarketSignals", "market_signals"]

FloatArray = npt.NDArray[np.float64]

HOUR_S, DAY_S = 3600, 86_400
_MONDAY_S = 3 * DAY_S  # 1970-01-01 was a Thursday

#: Weekday day-ahead price multiplier by local hour (ours, after the FI profile described above).
ENERGY_SHAPE = (
    0.62, 0.58, 0.55, 0.55, 0.57, 0.65, 0.85, 1.15,  # 00-07: night, morning ramp
    1.35, 1.30, 1.15, 1.05, 1.00, 0.98, 1.00, 1.05,  # 08-15: morning peak, midday dip
    1.20, 1.40, 1.50, 1.45, 1.25, 1.05, 0.85, 0.72,  # 16-23: evening peak
)
#: Weekend multiplier on top (flatter morning, lower overall; ours).
_WEEKEND = (
    0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.85, 0.75,
    0.70, 0.72, 0.80, 0.85, 0.85, 0.85, 0.85, 0.85,
    0.85, 0.85, 0.85, 0.85, 0.85, 0.90, 0.95, 0.95,
)
#: Consumption shape (fraction of the daily peak) by local hour, for carbon (ours).
DEMAND_SHAPE = (
    0.70, 0.66, 0.64, 0.63, 0.64, 0.68, 0.77, 0.88,
    0.95, 0.97, 0.97, 0.96, 0.95, 0.94, 0.94, 0.95,
    0.97, 1.00, 1.00, 0.98, 0.94, 0.88, 0.81, 0.75,
)


@dataclass(frozen=True, eq=False)
class MarketSignals:
    """Hourly signals from ``start_s`` (Unix s, a whole hour): ``energy_eur_mwh``,
    ``reserve_eur_mw_h`` (per product kind, NaN where not procured), ``carbon_g_kwh``."""

    start_s: int
    energy_eur_mwh: FloatArray
    reserve_eur_mw_h: Mapping[str, FloatArray]
    carbon_g_kwh: FloatArray

    @property
    def hours(self) -> int:
        return int(self.energy_eur_mwh.size)

    def to_signals(self, issued_at_s: float) -> Signals:
        """The same series as tier 3's :class:`~gridtao.tier3.signals.Signals` (hourly), the
        kinds without any price left out."""
        def series(values: FloatArray) -> Series:
            return Series(self.start_s, HOUR_S, values)

        reserve = {k: series(v) for k, v in self.reserve_eur_mw_h.items()
                   if not np.isnan(v).all()}
        return Signals(issued_at_s, "gridtao.bench.planner_signals (synthetic)",
                       energy_price_eur_per_mwh=series(self.energy_eur_mwh),
                       reserve_price_eur_per_mw_h=reserve,
                       carbon_g_per_kwh=series(self.carbon_g_kwh))

    def window(self, start_s: int, n: int) -> MarketSignals:
        """The ``n`` hours from ``start_s`` (inside the series)."""
        i = (start_s - self.start_s) // HOUR_S
        if (start_s - self.start_s) % HOUR_S or i < 0 or i + n > self.hours:
            raise ValueError(f"{n} hours from {start_s} are not inside the signals")
        s = slice(i, i + n)
        return MarketSignals(start_s, self.energy_eur_mwh[s],
                             {k: v[s] for k, v in self.reserve_eur_mw_h.items()},
                             self.carbon_g_kwh[s])


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> FloatArray:
    """A stationary AR(1) series with marginal sd ``sd``."""
    out = np.empty(n)
    x = float(rng.standard_normal()) * sd
    shocks = rng.standard_normal(n) * sd * np.sqrt(1.0 - phi * phi)
    for i in range(n):
        x = phi * x + float(shocks[i])
        out[i] = x
    return out


def market_signals(start_s: int, hours: int, *, seed: int = 0,
                   tz_offset_s: int = 2 * HOUR_S) -> MarketSignals:
    """``hours`` hourly values of every signal from ``start_s`` (a whole hour, Unix s), local
    time ``tz_offset_s`` east of UTC (EET by default). See the module docstring."""
    if start_s % HOUR_S or hours < 1:
        raise ValueError("start_s must be a whole hour and hours >= 1")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7001]))
    t = start_s + HOUR_S * np.arange(hours, dtype=np.int64)
    local = t + tz_offset_s
    hour = (local % DAY_S) // HOUR_S
    day = local // DAY_S - local[0] // DAY_S
    weekend = ((local + _MONDAY_S) // DAY_S) % 7 >= 5
    days = int(day[-1]) + 1

    level = 60.0 * np.exp(_ar1(rng, days, 0.6, 0.3))[day]
    wind = _ar1(rng, hours, 0.9, 1.0)
    shape = np.asarray(ENERGY_SHAPE)[hour] * np.where(weekend, np.asarray(_WEEKEND)[hour], 1.0)
    energy = level * shape * np.exp(-0.3 * wind) - 15.0 * np.maximum(0.0, wind - 1.2)
    energy = np.maximum(energy, -5.0)

    night = (hour < 6) | (hour >= 22)
    fcr_n = 20.0 * np.where(night | weekend, 1.4, 1.0) * np.exp(rng.normal(0.0, 0.35, hours))
    evening = (hour >= 17) & (hour <= 20)
    fcr_d = 8.0 * np.where(evening, 1.5, np.where(night, 0.7, 1.0)) \
        * np.exp(rng.normal(0.0, 0.5, hours))
    procured_night = rng.random(days) < 0.7
    ffr_hours = ((hour < 6) & procured_night[day]) | (weekend & (hour >= 10) & (hour < 16))
    ffr = np.where(ffr_hours, 12.0 * np.exp(rng.normal(0.0, 0.5, hours)), np.nan)
    dr_hours = evening & ~weekend
    dr = np.where(dr_hours, 1.5 * np.maximum(0.0, energy - 40.0), np.nan)
    carbon = 70.0 * (0.8 + 0.4 * np.asarray(DEMAND_SHAPE)[hour]) * np.exp(-0.3 * wind)
    carbon = np.clip(carbon, 15.0, 250.0)
    reserve = {"ffr": ffr, "ercot-ffr": np.full(hours, np.nan), "fcr-d-up": fcr_d,
               "fcr-d-up-static": fcr_d.copy(), "fcr-n": fcr_n, "dr": dr}
    return MarketSignals(start_s, energy.astype(np.float64), reserve, carbon.astype(np.float64))
