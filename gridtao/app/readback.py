"""What the GPUs hold now, read back off the control threads: each GPU's enforced limit (into
the island's record, so status and metrics never show a planned limit, and a change by another
process shows) and its energy counter.

The controller loop runs :meth:`ReadBack.read` in a worker thread about twice a second, so a
slow or hung driver call delays only these readings, never tier 1 or a trigger (a read holds a
GPU's write lock only for that one GPU's call).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from gridtao.gpu.backend import GpuBackend, GpuError
from gridtao.safety.island import SafetyIsland

__all__ = ["ReadBack"]


class ReadBack:
    """Reads for ``indices`` of ``backend``; :attr:`energy_mj` from any thread."""

    def __init__(self, backend: GpuBackend, island: SafetyIsland,
                 indices: Sequence[int]) -> None:
        self._backend = backend
        self._island = island
        self._indices = tuple(indices)
        self._lock = threading.Lock()
        self._energy_mj: tuple[int | None, ...] = (None,) * len(self._indices)

    @property
    def energy_mj(self) -> tuple[int | None, ...]:
        """Each GPU's energy counter as last read (mJ since the driver loaded; None: not read
        yet, or no counter, as on GPUs before Volta)."""
        with self._lock:
            return self._energy_mj

    def read(self) -> None:
        """One round of read-backs (blocking: run it off the event loop)."""
        self._island.refresh_enforced()
        energy: list[int | None] = []
        for index in self._indices:
            try:
                energy.append(self._backend.energy_mj(index))
            except GpuError:
                energy.append(None)
        with self._lock:
            self._energy_mj = tuple(energy)
