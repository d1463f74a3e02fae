"""Keyed noise for a simulated GPU's instant-power samples (:mod:`gridtao.gpu.sim.physics`).

:func:`keyed_gauss` is a standard normal draw (dimensionless; the physics scales it by its
``noise_w``, W) that depends only on a 64-bit key, drawn once per GPU, and the sample's index
``k`` on the refresh grid: no generator state advances, so every replica of one GPU's state in
any process (``shared.py``) draws the same noise for the same sample, in any order, and skipping
unobservable samples changes nothing. Pure functions: any thread.
"""

from __future__ import annotations

import math

__all__ = ["keyed_gauss"]

_M64 = (1 << 64) - 1
_TWO_PI = 2.0 * math.pi


def _mix64(z: int) -> int:
    """SplitMix64's finaliser: a well-spread 64-bit hash of ``z``."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def keyed_gauss(key: int, k: int) -> float:
    """A standard normal draw that depends only on ``(key, k)`` (Box-Muller on two hashes)."""
    a = _mix64(key ^ (2 * k))
    b = _mix64(key ^ (2 * k + 1))
    u1 = ((a >> 11) + 1) * 2.0**-53  # (0, 1]: log is finite
    u2 = (b >> 11) * 2.0**-53
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)
