"""The daily shape of a node's inference load: how busy the online services are at each hour.

A :class:`DailyShape` maps Unix seconds to a load multiplier in ``[0, 1]``: 24 hourly levels
(hour ``h`` is the level at ``h:30`` local time; between hour midpoints the level is linear, and
it wraps round midnight), times ``weekend_factor`` on Saturdays and Sundays. ``offset_s`` is added
to Unix seconds before the hour is looked up: the site's UTC offset (``3600`` for CET in winter),
or any shift that puts a simulated clock at the time of day a test wants.

The default levels are gridtao's own: a plausible office-hours service, lowest around 04:00
(0.2), rising through the morning to its peak at 14:00-15:00 (1.0), and at 0.6 of the weekday
level at weekends. They are not measurements; use them for the simulator, the synthetic history
and tests, never as a forecast.

Used by the simulator (``workloads.shaped``: inference demand above idle follows it) and by the
synthetic history (``gridtao.history.synth``). Immutable, so safe to share between threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gridtao.config.agent import SimConfig

__all__ = ["DailyShape", "configured_shape", "shape_of"]

_DAY_S = 86_400
_HOUR_S = 3_600
#: 1970-01-01 was a Thursday: (days since the epoch + 3) % 7 counts Monday as 0.
_EPOCH_WEEKDAY = 3

_DEFAULT_HOURLY = (
    0.35, 0.30, 0.25, 0.22, 0.20, 0.22, 0.30, 0.42,  # 00-07: night, early morning
    0.55, 0.68, 0.78, 0.85, 0.90, 0.95, 1.00, 1.00,  # 08-15: ramp to the afternoon peak
    0.97, 0.90, 0.80, 0.70, 0.60, 0.52, 0.45, 0.40,  # 16-23: evening decline
)


@dataclass(frozen=True)
class DailyShape:
    """Load multiplier by local time of day and day of week.

    ``hourly``: 24 levels in ``[0, 1]``, hour 0 first. ``weekend_factor`` in ``[0, 1]``: the
    multiplier on Saturdays and Sundays (local). ``offset_s``: seconds added to Unix time to get
    the shape's local time (finite). Raises ``ValueError`` for anything else.
    """

    hourly: tuple[float, ...]
    weekend_factor: float = 0.6
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        if len(self.hourly) != 24:
            raise ValueError(f"hourly needs 24 levels, got {len(self.hourly)}")
        if not all(math.isfinite(h) and 0.0 <= h <= 1.0 for h in self.hourly):
            raise ValueError("hourly levels must be in [0, 1]")
        if not (math.isfinite(self.weekend_factor) and 0.0 <= self.weekend_factor <= 1.0):
            raise ValueError(f"weekend_factor must be in [0, 1], got {self.weekend_factor}")
        if not math.isfinite(self.offset_s):
            raise ValueError("offset_s must be finite")

    @classmethod
    def default(cls, *, offset_s: float = 0.0) -> DailyShape:
        """gridtao's default office-hours shape (see the module docstring)."""
        return cls(_DEFAULT_HOURLY, 0.6, offset_s)

    @classmethod
    def flat(cls, level: float = 1.0) -> DailyShape:
        """The same level at every hour of every day."""
        return cls((level,) * 24, 1.0, 0.0)

    def at(self, t_s: float) -> float:
        """The multiplier at Unix time ``t_s`` (seconds), in ``[0, 1]``."""
        return float(self.at_array(np.asarray([t_s], dtype=np.float64))[0])

    def at_array(self, t_s: npt.NDArray[np.floating] | npt.NDArray[np.integer]
                 ) -> npt.NDArray[np.float64]:
        """:meth:`at` for an array of Unix times (seconds); same shape, float64."""
        local = np.asarray(t_s, dtype=np.float64) + self.offset_s
        # Hour h's level sits at h:30; interpolate between neighbouring midpoints, wrapping.
        pos = np.mod(local, _DAY_S) / _HOUR_S - 0.5
        lo = np.floor(pos)
        frac = pos - lo
        levels = np.asarray(self.hourly, dtype=np.float64)
        i0 = np.mod(lo, 24).astype(np.int64)
        i1 = np.mod(i0 + 1, 24)
        level = levels[i0] * (1.0 - frac) + levels[i1] * frac
        weekday = np.mod(np.floor(local / _DAY_S) + _EPOCH_WEEKDAY, 7)
        factor = np.where(weekday >= 5, self.weekend_factor, 1.0)
        out: npt.NDArray[np.float64] = np.clip(level * factor, 0.0, 1.0)
        return out

    def is_weekend(self, t_s: float) -> bool:
        """Whether Unix time ``t_s`` falls on a Saturday or Sunday in the shape's local time."""
        return (math.floor((t_s + self.offset_s) / _DAY_S) + _EPOCH_WEEKDAY) % 7 >= 5


def shape_of(daily_shape: str, *, levels: tuple[float, ...] = (), weekend_factor: float = 0.6,
             tz_offset_h: float = 0.0) -> DailyShape | None:
    """The shape ``gpus.sim.daily_shape`` names: ``default`` (gridtao's, module docstring),
    ``custom`` (``levels``), or None for ``none``; with the weekend's factor and the local
    time's offset east of UTC (hours). Raises ``ValueError`` for an unknown name or bad
    levels."""
    if daily_shape == "none":
        return None
    hourly: tuple[float, ...]
    if daily_shape == "default":
        hourly = _DEFAULT_HOURLY
    elif daily_shape == "custom":
        hourly = tuple(levels)
    else:
        raise ValueError(f"unknown daily shape {daily_shape!r}")
    return DailyShape(hourly, weekend_factor, tz_offset_h * _HOUR_S)


def configured_shape(sim: SimConfig, daily_shape: str | None = None) -> DailyShape | None:
    """:func:`shape_of` with ``gpus.sim``'s keys (``daily_shape`` overrides its name)."""
    return shape_of(sim.daily_shape if daily_shape is None else daily_shape,
                    levels=sim.daily_levels, weekend_factor=sim.daily_weekend_factor,
                    tz_offset_h=sim.daily_tz_offset_h)
