"""The safety island's armed levels: per trigger key, caps precomputed from a draw basis.

A trigger must only write caps, never compute them, so each level (a frequency threshold, a
step product) keeps its caps ready, recomputed whenever the basis moves (tier 1 at least once a
second, tier 2's reference, new priority floors). Pure bookkeeping over an
:class:`~gridtao.safety.envelope.Envelope`; not thread-safe: the island calls it under its own lock.
Power in mW.
"""

from __future__ import annotations

import math

from .envelope import Envelope
from .latch import ArmedLevel


def check_fraction(x: float) -> None:
    """A node-target fraction must lie in [0, 1]."""
    if not (math.isfinite(x) and 0.0 <= x <= 1.0):
        raise ValueError(f"fraction must be in [0, 1], got {x!r}")


class ArmedTable:
    """Armed levels by key. ``envelope`` is the one cuts are split in (priority floors)."""

    def __init__(self, envelope: Envelope) -> None:
        self._envelope = envelope
        self._levels: dict[str, ArmedLevel] = {}

    def arm(self, key: str, draw: tuple[float, ...], node_target_fraction: float) -> None:
        """Level ``key``: node target = draw total x fraction."""
        check_fraction(node_target_fraction)
        self._levels[key] = self._level(draw, node_target_fraction)

    def arm_reduction(
        self, key: str, draw: tuple[float, ...], reduction_mw: float, *,
        reference_mw: float | None = None, release_mw_per_s: float | None = None,
    ) -> None:
        """Level ``key``: node target = ``reference_mw`` (default: the draw total) -
        ``reduction_mw``; its release ramp ``release_mw_per_s`` (default: the island's rate)."""
        for name, value in (("reduction", reduction_mw), ("reference", reference_mw),
                            ("release rate", release_mw_per_s)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 mW, got {value!r}")
        if release_mw_per_s == 0:
            raise ValueError("release rate must be > 0 mW/s")
        self._levels[key] = self._level(draw, 1.0, reduction_mw, reference_mw, release_mw_per_s)

    def disarm(self, key: str) -> bool:
        return self._levels.pop(key, None) is not None

    def get(self, key: str) -> ArmedLevel | None:
        return self._levels.get(key)

    def rearm(self, draw: tuple[float, ...], envelope: Envelope | None = None) -> None:
        """Recompute every level from ``draw`` (and, if given, a new cut envelope).

        A level is a function of its basis, its own terms and the envelope only, so with no new
        envelope a level already armed on this very basis is left as it is: an event's start
        re-arms on the draw it froze, which is the draw the levels were last armed on."""
        if envelope is not None:
            self._envelope = envelope
        for key, lv in self._levels.items():
            if envelope is None and lv.draw_mw == draw:
                continue
            self._levels[key] = self._level(draw, lv.node_target_fraction, lv.reduction_mw,
                                            lv.reference_mw, lv.release_mw_per_s)

    def _level(
        self, draw: tuple[float, ...], fraction: float, reduction_mw: float = 0.0,
        reference_mw: float | None = None, release_mw_per_s: float | None = None,
    ) -> ArmedLevel:
        baseline = math.fsum(draw) if reference_mw is None else reference_mw
        requested = baseline * fraction - reduction_mw
        # Never aim below the floor: the caps cannot go lower, and a target they cannot reach
        # would never be reported reached. The shortfall is the activation's to report.
        target = max(requested, float(self._envelope.min_total_mw))
        caps = tuple(self._envelope.cut_caps_mw(draw, target))
        return ArmedLevel(fraction, draw, baseline, target, caps, reduction_mw, reference_mw,
                          release_mw_per_s, requested_target_mw=requested)
