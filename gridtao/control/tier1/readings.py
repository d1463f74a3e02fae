"""Tier 1's per-GPU power readings: the instant draws, their read faults, and the cut basis.

:class:`DrawReadings` reads every GPU's instant power once a step for
:class:`~gridtao.control.tier1.loop.FastLoop`, keeps a GPU whose read fails at its last reading
(counting and logging the error once per kind), reads a GPU too slow for the loop off the loop
instead (:class:`~gridtao.control.tier1.stragglers.Stragglers`), reads an enforced limit with a
fallback, and smooths the draws into the basis the safety island cuts from.

Invariants: a read error never propagates; :attr:`DrawReadings.draw_mw` is one list for the
reader's life, refreshed in place, so the loop may keep it (no copy a step); until a GPU has
been read it is taken to draw its limit (:meth:`DrawReadings.seed`), never to be idle.

Threads: tier 1's thread only (the straggler probes have their own, inside ``Stragglers``).
Power is in mW; times are seconds of the injected clock.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from gridtao.clock import Clock
from gridtao.control.tier1.stragglers import Stragglers
from gridtao.gpu.backend import GpuBackend, GpuError
from gridtao.telemetry.metrics import Metrics

__all__ = ["DrawReadings"]

# The loop's logger: these lines are tier 1's (as in stragglers.py).
log = logging.getLogger("gridtao.control.tier1.loop")


class DrawReadings:
    """Instant power readings of the GPUs at ``indices`` (position ``i`` is GPU
    ``indices[i]``); a read slower than ``slow_s`` quarantines that GPU (stragglers.py)."""

    def __init__(
        self,
        backend: GpuBackend,
        indices: list[int],
        *,
        clock: Clock,
        metrics: Metrics | None,
        slow_s: float,
    ) -> None:
        self._backend = backend
        self._indices = indices
        self._clock = clock
        self._metrics = metrics
        n = len(indices)
        self._error_kind: list[str | None] = [None] * n
        self._stragglers = Stragglers(
            lambda i: backend.instant_power_mw(self._indices[i]), n, clock=clock, slow_s=slow_s,
        )
        #: Last instant reading of each GPU, mW (refreshed in place by :meth:`read`).
        self.draw_mw: list[float] = []
        self._basis_mw: list[float] | None = None

    def seed(self, limits_mw: Sequence[int]) -> list[float]:
        """Until a GPU has been read, assume it draws its limit: an unreadable GPU then counts
        as fully loaded in the island's cap basis, never as idle. Returns :attr:`draw_mw`."""
        self.draw_mw[:] = [float(lim) for lim in limits_mw]
        return self.draw_mw

    @property
    def faults(self) -> tuple[str | None, ...]:
        """Per GPU: the error kind of its failing power reads (e.g. ``"GpuLost"``),
        ``"GpuSlow"`` while a read too slow for the loop keeps it quarantined (read off the
        loop, stragglers.py), else None."""
        return tuple(kind or ("GpuSlow" if self._stragglers.quarantined(i) else None)
                     for i, kind in enumerate(self._error_kind))

    def read_limit(self, index: int, fallback_mw: int) -> int:
        try:
            return self._backend.enforced_limit_mw(self._indices[index])
        except GpuError as e:
            log.warning("GPU %d: enforced limit unreadable (%s); assuming default", index, e)
            return fallback_mw

    def read(self) -> list[bool]:
        """Refresh ``draw_mw``; returns which GPUs failed (they keep their last reading; a
        quarantined slow GPU counts as failed and takes its probe's reading)."""
        failed = [False] * len(self._indices)
        for i, index in enumerate(self._indices):
            if self._stragglers.quarantined(i):
                latest = self._stragglers.take_latest_mw(i)
                if latest is not None:
                    self.draw_mw[i] = latest
                failed[i] = True
                continue
            t0 = self._clock.now()
            try:
                self.draw_mw[i] = float(self._backend.instant_power_mw(index))
            except GpuError as e:
                self._stragglers.observe(i, self._clock.now() - t0)
                failed[i] = True
                kind = type(e).__name__
                if self._metrics is not None:
                    self._metrics.count_gpu_error(index, kind)
                if self._error_kind[i] != kind:
                    log.warning("GPU %d: power read failed (%s); keeping last reading", index, e)
                    self._error_kind[i] = kind
                continue
            self._stragglers.observe(i, self._clock.now() - t0)
            if self._error_kind[i] is not None:
                log.info("GPU %d: power readable again", index)
                self._error_kind[i] = None
        return failed

    def smoothed_basis(self, dt: float, tau: float) -> list[float]:
        """Per-GPU draw through a first-order filter (``control.basis_tau_s``: ``tau``), mW:
        the basis the island cuts from. Seeded with the first reading."""
        if self._basis_mw is None or tau <= 0:
            self._basis_mw = list(self.draw_mw)
            return self._basis_mw
        alpha = 1.0 - math.exp(-dt / tau)
        basis = self._basis_mw
        for i, draw in enumerate(self.draw_mw):
            basis[i] += alpha * (draw - basis[i])
        return basis

    def close(self) -> None:
        """Stop the straggler probes."""
        self._stragglers.close()
