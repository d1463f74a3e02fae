"""NVML's energy counter (``nvmlDeviceGetTotalEnergyConsumption``): an unsigned 64-bit count of
millijoules since the driver loaded. What an increase between two readings is, for everything
that turns the counter into energy (the minute history, the per-event ledger, node power)."""

from __future__ import annotations

__all__ = ["COUNTER_MODULUS", "MAX_GPU_W", "counter_increase_mj"]

#: The counter wraps at 2^64 mJ.
COUNTER_MODULUS = 1 << 64
#: More than any GPU draws (W): the bound that tells a counter's wrap from its reset.
MAX_GPU_W = 10_000.0


def counter_increase_mj(before: int, after: int, dt_s: float) -> int | None:
    """An energy counter's increase (mJ) from ``before`` to ``after`` read ``dt_s`` apart:
    ``after - before`` when it did not go back; the increase through :data:`COUNTER_MODULUS`
    when it went back across a 64-bit wrap (an increase of at most :data:`MAX_GPU_W` over
    ``max(dt_s, 1)`` s); None for any other decrease, a reset (the driver reloaded)."""
    if after >= before:
        return after - before
    wrapped = after + COUNTER_MODULUS - before
    if 0 < wrapped <= MAX_GPU_W * 1000.0 * max(dt_s, 1.0):
        return wrapped
    return None
