"""Proportional products: a reduction that follows frequency through a droop.

:class:`FcrDUp` (dynamic FCR-D upwards) and :class:`FcrN` (both directions around a baseline)
read a running median (:class:`_Median`) of the last samples. The product contract, timing and
sources: :mod:`gridtao.products.base`.
"""

from __future__ import annotations

import collections
import statistics

from gridtao.config.agent import ProductKind
from gridtao.products.base import (
    FCR_D_ACTIVATION_S,
    FCR_D_FULL_HZ,
    FCR_D_START_HZ,
    FCR_N_HIGH_HZ,
    FCR_N_LOW_HZ,
    ProductState,
    ProductStatus,
)


class _Median:
    def __init__(self, size: int) -> None:
        self._window: collections.deque[float] = collections.deque(maxlen=size)

    def add(self, hz: float) -> float:
        self._window.append(hz)
        return statistics.median(self._window)


class FcrDUp:
    """FCR-D upwards, dynamic: 0 at 49.9 Hz, linear to full capacity at 49.5 Hz."""

    kind: ProductKind = "fcr-d-up"

    def __init__(self, name: str, capacity_w: float, *, median_samples: int = 3) -> None:
        if not capacity_w > 0:
            raise ValueError("capacity_w must be > 0")
        self.name, self.capacity_w = name, capacity_w
        self.full_activation_s = FCR_D_ACTIVATION_S
        self._median = _Median(median_samples)
        self._required_w = 0.0
        self._since_s: float | None = None

    def required_reduction_w(self, f_hz: float | None, now_s: float) -> float:
        if f_hz is not None:
            hz = self._median.add(f_hz)
            share = (FCR_D_START_HZ - hz) / (FCR_D_START_HZ - FCR_D_FULL_HZ)
            self._required_w = self.capacity_w * max(0.0, min(1.0, share))
            if self._required_w > 0 and self._since_s is None:
                self._since_s = now_s
            elif self._required_w == 0:
                self._since_s = None
        return self._required_w

    def status(self) -> ProductStatus:
        state: ProductState = "active" if self._required_w > 0 else "idle"
        since = self._since_s
        return ProductStatus(self.name, self.kind, state, self.capacity_w, self._required_w,
                             since, None if since is None else since + self.full_activation_s)


class FcrN:
    """FCR-N: linear 49.9-50.1 Hz, both ways around the baseline (negative = draw more)."""

    kind: ProductKind = "fcr-n"

    def __init__(self, name: str, capacity_w: float, *, median_samples: int = 3) -> None:
        if not capacity_w > 0:
            raise ValueError("capacity_w must be > 0")
        self.name, self.capacity_w = name, capacity_w
        self._median = _Median(median_samples)
        self._required_w = 0.0

    def required_reduction_w(self, f_hz: float | None, now_s: float) -> float:
        if f_hz is not None:
            hz = self._median.add(f_hz)
            mid, half = (FCR_N_LOW_HZ + FCR_N_HIGH_HZ) / 2, (FCR_N_HIGH_HZ - FCR_N_LOW_HZ) / 2
            self._required_w = self.capacity_w * max(-1.0, min(1.0, (mid - hz) / half))
        return self._required_w

    def status(self) -> ProductStatus:
        return ProductStatus(self.name, self.kind, "active", self.capacity_w, self._required_w)
