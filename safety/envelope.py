"""Hard per-GPU power bounds and the arithmetic that splits a node target into per-GPU caps.

Every limit this module returns lies in ``[min_mw, default_mw]`` of its GPU: never above the
default limit even where the device's maximum is higher, never below its minimum. All power is
in milliwatts; results are integers because NVML takes integer milliwatts.

Rounding is always down (``floor``), so a set of caps never sums above the total it was asked
for; the shortfall is under one milliwatt per GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .ports import Limits


@dataclass(frozen=True)
class _Bounds:
    """A GPU's bounds inside a derived envelope (mW); satisfies :class:`~.ports.Limits`."""

    min_mw: int
    max_mw: int
    default_mw: int


class Envelope:
    """The ``[min_mw, default_mw]`` bounds of every GPU on the node, indexed like the backend."""

    def __init__(self, limits: Sequence[Limits]) -> None:
        if not limits:
            raise ValueError("an envelope needs at least one GPU")
        for i, lim in enumerate(limits):
            if not 0 <= lim.min_mw <= lim.default_mw:
                raise ValueError(
                    f"GPU {i}: need 0 <= min_mw <= default_mw, got {lim.min_mw}, {lim.default_mw}"
                )
        self._min: tuple[int, ...] = tuple(lim.min_mw for lim in limits)
        self._default: tuple[int, ...] = tuple(lim.default_mw for lim in limits)
        self._min_total = sum(self._min)
        self._default_total = sum(self._default)

    @property
    def count(self) -> int:
        return len(self._min)

    @property
    def min_mw(self) -> tuple[int, ...]:
        """Per-GPU lower bound, mW."""
        return self._min

    @property
    def default_mw(self) -> tuple[int, ...]:
        """Per-GPU upper bound (the device's default limit), mW."""
        return self._default

    @property
    def min_total_mw(self) -> int:
        """Sum of the per-GPU minimums: no set of caps can total less, mW."""
        return self._min_total

    @property
    def default_total_mw(self) -> int:
        """Sum of the per-GPU defaults: no set of caps may total more, mW."""
        return self._default_total

    def with_floors(self, floors_mw: Sequence[float]) -> Envelope:
        """This envelope with each minimum raised to its GPU's floor (clipped into
        ``[min_mw, default_mw]``): splitting a cut inside it leaves every GPU at least its floor
        while every cap stays within this envelope."""
        self._check_len(floors_mw, "floors")
        if any(math.isnan(f) for f in floors_mw):
            raise ValueError("floors must be numbers")
        return Envelope([
            _Bounds(min(hi, max(lo, math.floor(f))), hi, hi)
            for f, lo, hi in zip(floors_mw, self._min, self._default, strict=True)
        ])

    def clamp_mw(self, index: int, mw: float) -> int:
        """``mw`` rounded down and clamped into ``[min_mw, default_mw]`` of GPU ``index``."""
        if math.isnan(mw):
            raise ValueError(f"GPU {index}: limit is not a number")
        lo, hi = self._min[index], self._default[index]
        if mw <= lo:
            return lo
        if mw >= hi:
            return hi
        return math.floor(mw)

    def clamp_all(self, mws: Sequence[float]) -> list[int]:
        """:meth:`clamp_mw` for every GPU; ``mws`` must have one entry per GPU."""
        self._check_len(mws, "limits")
        return [self.clamp_mw(i, mw) for i, mw in enumerate(mws)]

    def cut_caps_mw(self, draw_mw: Sequence[float], node_target_mw: float) -> list[int]:
        """Per-GPU caps summing to ``node_target_mw`` as closely as the bounds allow.

        The basis is each GPU's measured draw clamped into its bounds. Below the basis total the
        reduction is taken from each GPU in proportion to its draw above its minimum, so every GPU
        reaches its floor at the same moment: the target at which that happens is the sum of the
        minimums, and below it every GPU sits at its minimum. Above the basis total (a node cap
        above current draw) the extra room is given in proportion to each GPU's headroom under its
        default, up to all defaults.

        Invariants: every cap in ``[min_mw, default_mw]``; ``sum(caps)`` equals
        ``clamp(node_target_mw, min_total_mw, default_total_mw)`` rounded down, short by under
        1 mW per GPU; each cap is non-decreasing in ``node_target_mw`` for a fixed draw.
        """
        self._check_len(draw_mw, "draw")
        if math.isnan(node_target_mw) or any(math.isnan(d) for d in draw_mw):
            raise ValueError("draw and node target must be numbers")
        basis = [
            _clip(float(d), lo, hi)
            for d, lo, hi in zip(draw_mw, self._min, self._default, strict=True)
        ]
        basis_total = math.fsum(basis)
        target = _clip(node_target_mw, self._min_total, self._default_total)
        values: list[float]
        if target <= basis_total:
            room = [b - lo for b, lo in zip(basis, self._min, strict=True)]
            room_total = math.fsum(room)
            share = 0.0 if room_total <= 0 else _clip((target - self._min_total) / room_total, 0, 1)
            # min() keeps float rounding from lifting a cap above its basis, which keeps the caps
            # monotone across the switch to the raise branch below.
            values = [
                min(b, lo + r * share) for b, lo, r in zip(basis, self._min, room, strict=True)
            ]
        else:
            head = [hi - b for b, hi in zip(basis, self._default, strict=True)]
            head_total = math.fsum(head)  # > 0: basis_total < target <= default_total
            share = _clip((target - basis_total) / head_total, 0, 1)
            values = [b + h * share for b, h in zip(basis, head, strict=True)]
        return [self.clamp_mw(i, v) for i, v in enumerate(values)]

    def fit_under_mw(self, limits_mw: Sequence[int], ceiling_total_mw: float) -> list[int]:
        """Clamp ``limits_mw`` into the bounds, then scale them down (never up) to total at most
        ``ceiling_total_mw``, keeping each at or above its minimum.

        The part of each limit above its minimum shrinks by one common factor, so tier 1's
        relative split between GPUs survives. A ceiling below the sum of minimums gives every
        GPU its minimum (the most the hardware can cut).
        """
        clamped = self.clamp_all(limits_mw)
        total = sum(clamped)
        if total <= ceiling_total_mw:
            return clamped
        if ceiling_total_mw <= self._min_total:
            return list(self._min)
        factor = (ceiling_total_mw - self._min_total) / (total - self._min_total)
        return [
            self.clamp_mw(i, lo + (c - lo) * factor)
            for i, (c, lo) in enumerate(zip(clamped, self._min, strict=True))
        ]

    def _check_len(self, values: Sequence[float], what: str) -> None:
        if len(values) != len(self._min):
            raise ValueError(f"{what}: expected {len(self._min)} values, got {len(values)}")


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x
