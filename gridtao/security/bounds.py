"""Rate and bound limits: how often messages are handled and how much and how often a remote
party may cut this node (config ``limits``, docs/security.md).

Invariant kept for remote dispatches (a signed, well-formed dispatch is still untrusted input):
every accepted ``shed`` or ``cap`` asks for a node target no lower than the *floor*,
``min_node_fraction`` x the GPUs' summed default limits, and events combine by taking the most
restrictive target, so however many dispatches arrive the island's node target stays at or above
the floor. A flood cannot keep cutting either: at most one cut per ``min_event_interval_s``, at
most ``max_events_in_flight`` at once, each at most ``max_event_duration_s`` long.

Times are monotonic seconds from the injected clock; power in mW.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

from gridtao.config.agent import LimitsConfig
from gridtao.wire import messages as wire

# Reason labels for gridtao_limit_rejections_total{reason}.
RATE: Final = "rate_limit"
MAX_REDUCTION: Final = "max_reduction"
FLOOR: Final = "floor"
DURATION: Final = "max_duration"
INTERVAL: Final = "min_interval"
IN_FLIGHT: Final = "in_flight"
LIMIT_LABELS: Final = (RATE, MAX_REDUCTION, FLOOR, DURATION, INTERVAL, IN_FLIGHT)

# A shed reduced to stop at the floor still has to cut something worth an event.
MIN_USEFUL_FRACTION: Final = 1e-3


class TokenBucket:
    """``rate_per_s`` tokens per second up to ``burst``; one token per message. Starts full."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if not (rate_per_s > 0 and burst >= 1):
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None

    def take(self, now_s: float) -> bool:
        """Spend one token at monotonic time ``now_s``; False (nothing spent) if none is left."""
        last = self._last
        if last is not None and now_s > last:
            self._tokens = min(self._burst, self._tokens + (now_s - last) * self._rate)
        if last is None or now_s > last:
            self._last = now_s
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Rejection(NamedTuple):
    label: str  # one of LIMIT_LABELS
    reason: str  # the sentence for the ack


class Admitted(NamedTuple):
    """An accepted cut: ``fraction`` is the shed fraction to apply (None for cap/release), lower
    than asked when the floor stopped it; ``note`` then says so in the ack."""

    fraction: float | None
    note: str | None


class DispatchBounds:
    """Checks a parsed dispatch against ``limits`` before the island acts on it.

    ``default_total_mw`` is the sum of the GPUs' default limits; ``draw_total_mw()`` returns the
    draw a shed is cut from (the island's
    :meth:`~gridtao.safety.island.SafetyIsland.basis_total_mw`; no NVML call).
    """

    def __init__(
        self, limits: LimitsConfig, *, default_total_mw: float,
        draw_total_mw: Callable[[], float], island_max_event_s: float | None = None,
    ) -> None:
        self._cfg = limits
        # The safety island releases every event after this (safety.max_event_s): a shed or
        # cap asked for longer is refused, not accepted and then ended early.
        self._island_max_event_s = island_max_event_s
        self._default_total_mw = default_total_mw
        self.floor_mw = limits.min_node_fraction * default_total_mw
        self._draw_total_mw = draw_total_mw
        self._last_cut_at: float | None = None

    def check(
        self, msg: wire.AnyDispatch, *, now_s: float, in_flight: int
    ) -> Rejection | Admitted:
        """Reject, or admit (call :meth:`accepted` once the island has acted)."""
        if isinstance(msg, wire.ReleaseDispatch):
            return Admitted(None, None)  # ending a cut only ever gives power back
        cfg = self._cfg
        if msg.duration_s > cfg.max_event_duration_s:
            return Rejection(DURATION, f"duration_s {msg.duration_s:g} s exceeds the node's "
                             f"limit of {cfg.max_event_duration_s:g} s")
        island_max = self._island_max_event_s
        if (island_max is not None and not isinstance(msg, wire.DrDispatch)
                and msg.duration_s > island_max):
            return Rejection(DURATION, f"duration_s {msg.duration_s:g} s exceeds the "
                             f"{island_max:g} s the safety island holds any event "
                             "(safety.max_event_s)")
        if in_flight >= cfg.max_events_in_flight:
            return Rejection(IN_FLIGHT, f"{in_flight} events already active (limit "
                             f"{cfg.max_events_in_flight})")
        if self._last_cut_at is not None:
            since = now_s - self._last_cut_at
            if since < cfg.min_event_interval_s:
                return Rejection(INTERVAL, f"last cut accepted {since:.3f} s ago; the node takes "
                                 f"at most one per {cfg.min_event_interval_s:g} s")
        if isinstance(msg, wire.CapDispatch):
            if msg.node_w * 1000.0 < self.floor_mw:
                return Rejection(FLOOR, f"node_w {msg.node_w:g} W is below the node's floor "
                                 f"{self.floor_mw / 1000:.0f} W ({self._floor_words()})")
            return Admitted(None, None)
        if msg.fraction is not None and msg.fraction > cfg.max_reduction_fraction:
            return Rejection(MAX_REDUCTION, f"fraction {msg.fraction:g} exceeds the node's "
                             f"max_reduction_fraction {cfg.max_reduction_fraction:g}")
        if isinstance(msg, wire.DrDispatch):
            return self._check_scheduled(msg)
        draw = self._draw_total_mw()
        if draw * (1.0 - msg.fraction) >= self.floor_mw:
            return Admitted(msg.fraction, None)
        # The aggregator cannot know the node's draw this instant: cut down to the floor only.
        allowed = 1.0 - self.floor_mw / draw if draw > 0 else 0.0
        if allowed < MIN_USEFUL_FRACTION:
            return Rejection(FLOOR, f"node draw {draw / 1000:.0f} W is already at the floor "
                             f"{self.floor_mw / 1000:.0f} W ({self._floor_words()})")
        return Admitted(allowed, f"shed limited to {allowed:.3f} (asked {msg.fraction:g}) "
                        f"by the node's floor {self.floor_mw / 1000:.0f} W")

    def accepted(self, msg: wire.AnyDispatch, *, now_s: float) -> None:
        if not isinstance(msg, wire.ReleaseDispatch):
            self._last_cut_at = now_s

    def _check_scheduled(self, msg: wire.DrDispatch) -> Rejection | Admitted:
        """A demand-response event is planned ahead, so it is refused, never trimmed, when its
        level would take the node below the floor at today's draw."""
        draw = self._draw_total_mw()
        if msg.reduction_w is not None:
            target = draw - msg.reduction_w * 1000.0
            asked = f"reduction_w {msg.reduction_w:g} W"
        else:
            target = draw * (1.0 - (msg.fraction or 0.0))
            asked = f"fraction {msg.fraction:g}"
        if target < self.floor_mw:
            return Rejection(FLOOR, f"{asked} would take the node from {draw / 1000:.0f} W below "
                             f"its floor {self.floor_mw / 1000:.0f} W ({self._floor_words()})")
        return Admitted(None, None)

    def _floor_words(self) -> str:
        return (f"limits.min_node_fraction {self._cfg.min_node_fraction:g} of the default "
                f"{self._default_total_mw / 1000:.0f} W")
