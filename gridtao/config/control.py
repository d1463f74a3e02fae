"""Configuration of the node's control (re-exported by :mod:`gridtao.config.agent`; ranges live
next to each field in ``metadata``): the safety island's frequency triggers and limits
(``safety:``, gridtao/safety/) and the fast control loop (``control:``, gridtao/control/).

Times in seconds, frequencies in hertz, power in watts, fractions of 0..1. The dataclasses are
frozen, so a configuration is shared between threads as it is; each key is checked on its own
as it is read (gridtao/config/schema.py), the rules spanning several keys (the triggers'
levels and depths) in gridtao/config/rules.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gridtao.config.schema import rng

__all__ = ["ControlConfig", "FrequencyTrigger", "SafetyConfig"]


@dataclass(frozen=True)
class FrequencyTrigger:
    """Arm a cut when grid frequency falls to ``hz`` or below.

    ``reduction_fraction`` of the node's IT draw just before the trigger is shed; the cut is held
    at least ``min_hold_s`` and until frequency has stayed above ``hz + hysteresis_hz`` for
    ``recovery_s``; then it ramps out at the island's release rate.
    """

    hz: float = field(default=49.7, metadata=rng(45.0, 65.0))
    reduction_fraction: float = field(default=0.3, metadata=rng(0.0, 1.0))
    min_hold_s: float = field(default=5.0, metadata=rng(0, 86_400))
    recovery_s: float = field(default=1.0, metadata=rng(0, 86_400))
    hysteresis_hz: float = field(default=0.02, metadata=rng(0, 1))


@dataclass(frozen=True)
class SafetyConfig:
    triggers: tuple[FrequencyTrigger, ...] = (
        FrequencyTrigger(hz=49.7, reduction_fraction=0.1),
        FrequencyTrigger(hz=49.6, reduction_fraction=0.2),
        FrequencyTrigger(hz=49.5, reduction_fraction=0.3),
    )
    release_rate_per_s: float = field(default=0.2, metadata=rng(0.001, 100))
    rearm_period_s: float = field(default=0.5, metadata=rng(0.01, 1.0))
    watchdog_timeout_s: float = field(default=3.0, metadata=rng(0.05, 3600))
    safe_state: Literal["default", "hold", "minimum"] = "default"
    max_event_s: float = field(default=3600.0, metadata=rng(1, 86_400 * 7))
    # A frequency feed silent for longer is taken as nominal: activations end by their rules.
    frequency_stale_s: float = field(default=5.0, metadata=rng(0.1, 3600))
    # A sample whose t is further than this from the node's clock is refused, signed or not:
    # a wrong meter clock, a replay, or samples queued while this process was paused (an FFR
    # level must act within 0.7-1.3 s of the dip, so a dip seen seconds late is history).
    frequency_max_skew_s: float = field(default=2.0, metadata=rng(0.01, 3600))


@dataclass(frozen=True)
class ControlConfig:
    fast_hz: float = field(default=100.0, metadata=rng(1, 1000))
    band_fraction: float = field(default=0.05, metadata=rng(0.001, 0.5))
    headroom_w: float = field(default=15.0, metadata=rng(0, 200))
    integral_gain: float = field(default=0.3, metadata=rng(0, 10))
    max_raise_w_per_s: float = field(default=2000.0, metadata=rng(1, 100_000))
    # Caps are cut from each GPU's draw smoothed over this time constant (0: the instant
    # reading): training swings by hundreds of watts within a second, and a cut computed from
    # one 10 ms reading taken in a dip (or a peak) misses its target by as much.
    basis_tau_s: float = field(default=0.5, metadata=rng(0, 60))
    # How tier 1 splits a node cut between GPUs: "proportional" (equal levels within each
    # GPU's range) or "work-aware" (equal work lost per watt: GPUs whose work suffers least
    # from a lower limit are cut first; gridtao/control/tier1/workaware.py, docs/work.md).
    allocation: Literal["proportional", "work-aware"] = "proportional"
