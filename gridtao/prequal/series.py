"""Sampled series, as the compliance rules measure them: interpolation, window means,
centred means, first band crossings and least-squares slopes.

Pure functions of their arguments: times in seconds, sorted ascending; values in any unit
(the rules pass watts). No state, no threads.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["CONFIRM_S", "SMOOTH_S", "first_crossing", "interp", "slope_per_s", "smoothed",
           "window_mean", "window_means"]

CONFIRM_S = 0.2  # a band crossing must hold this long to count
SMOOTH_S = 1.0  # centred mean for steady-state, hold and over-delivery checks


def interp(t_s: Sequence[float], x: Sequence[float], at_s: float) -> float:
    """Linear interpolation of ``x`` at ``at_s`` (clamped to the ends)."""
    k = bisect.bisect_left(t_s, at_s)
    if k <= 0:
        return x[0]
    if k >= len(t_s):
        return x[-1]
    t0, t1 = t_s[k - 1], t_s[k]
    return x[k - 1] + (x[k] - x[k - 1]) * (at_s - t0) / (t1 - t0) if t1 > t0 else x[k]


def window_mean(t_s: Sequence[float], x: Sequence[float], a_s: float, b_s: float) -> float:
    """Mean of the samples with ``a_s <= t < b_s`` (NaN if none)."""
    lo, hi = bisect.bisect_left(t_s, a_s), bisect.bisect_left(t_s, b_s)
    return math.fsum(x[lo:hi]) / (hi - lo) if hi > lo else math.nan


def smoothed(t_s: Sequence[float], x: Sequence[float], width_s: float = SMOOTH_S) -> list[float]:
    """Centred moving mean of width ``width_s`` at every sample."""
    cum = [0.0]
    for v in x:
        cum.append(cum[-1] + v)
    out = []
    for t in t_s:
        lo = bisect.bisect_left(t_s, t - width_s / 2)
        hi = bisect.bisect_right(t_s, t + width_s / 2)
        out.append((cum[hi] - cum[lo]) / (hi - lo))
    return out


def first_crossing(
    t_s: Sequence[float], x: Sequence[float], level: float, *, start_s: float, end_s: float,
    above: bool = True, confirm_s: float = CONFIRM_S,
) -> float | None:
    """First time in [start_s, end_s] at which ``x`` goes to or past ``level`` (upwards if
    ``above``) and stays there ``confirm_s``; interpolated between samples. None if never."""

    def inside(v: float) -> bool:
        return v >= level if above else v <= level

    k = bisect.bisect_left(t_s, start_s)
    while k < len(t_s) and t_s[k] <= end_s:
        if inside(x[k]):
            j = k
            while j < len(t_s) and t_s[j] <= t_s[k] + confirm_s and inside(x[j]):
                j += 1
            if j >= len(t_s) or t_s[j] > t_s[k] + confirm_s:
                if k == 0 or t_s[k - 1] < start_s or x[k] == x[k - 1]:
                    return max(start_s, t_s[k])
                frac = (level - x[k - 1]) / (x[k] - x[k - 1])
                return max(start_s, t_s[k - 1] + frac * (t_s[k] - t_s[k - 1]))
            k = j
        else:
            k += 1
    return None


def slope_per_s(t_s: Sequence[float], x: Sequence[float], a_s: float, b_s: float) -> float:
    """Least-squares slope of ``x`` over [a_s, b_s] (units of x per second)."""
    lo, hi = bisect.bisect_left(t_s, a_s), bisect.bisect_right(t_s, b_s)
    ts, xs = t_s[lo:hi], x[lo:hi]
    if len(ts) < 2:
        return math.nan
    tm, xm = math.fsum(ts) / len(ts), math.fsum(xs) / len(xs)
    den = math.fsum((t - tm) ** 2 for t in ts)
    return math.fsum((t - tm) * (v - xm) for t, v in zip(ts, xs, strict=True)) / den


def window_means(t_s: Sequence[float], x: Sequence[float], width_s: float = SMOOTH_S
                 ) -> list[float]:
    """The mean of ``x`` (linearly interpolated between samples) over exactly
    [t - width_s / 2, t + width_s / 2] at every sample (clamped to the trace's ends): unlike
    :func:`smoothed`, no jitter from how many samples fall inside the window."""
    cum = [0.0]
    for k in range(1, len(t_s)):
        cum.append(cum[-1] + (t_s[k] - t_s[k - 1]) * (x[k] + x[k - 1]) / 2)

    def integral(at: float) -> float:
        at = min(max(at, t_s[0]), t_s[-1])
        k = max(1, bisect.bisect_left(t_s, at))
        t0 = t_s[k - 1]
        v = interp(t_s, x, at)
        return cum[k - 1] + (at - t0) * (x[k - 1] + v) / 2

    out = []
    for t in t_s:
        a, b = max(t_s[0], t - width_s / 2), min(t_s[-1], t + width_s / 2)
        out.append((integral(b) - integral(a)) / (b - a) if b > a else interp(t_s, x, t))
    return out
