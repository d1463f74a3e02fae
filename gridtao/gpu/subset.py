"""The GPUs the agent serves when some could not be opened at start.

The safety island, tier 1 and the status work with devices numbered 0..n-1. When GPU 2 of 8 has
fallen off the bus, :class:`ServedGpus` shows the other seven as 0..6 and passes every call on
to the driver's own index (``physical``), so the healthy GPUs are served rather than none; the
status reports the driver's indices and lists the GPUs left out. Thread-safe as the backend it
wraps: it adds no state but the index map.
"""

from __future__ import annotations

from collections.abc import Sequence

from gridtao.gpu.backend import GpuBackend, GpuInfo, PowerLimits

__all__ = ["ServedGpus"]


class ServedGpus:
    """``backend``'s devices ``physical`` (driver indices, ascending) as devices 0..n-1."""

    def __init__(self, backend: GpuBackend, physical: Sequence[int]) -> None:
        if list(physical) != sorted(set(physical)) or not physical:
            raise ValueError(f"physical indices must be ascending and distinct: {physical}")
        self._backend = backend
        self.physical: tuple[int, ...] = tuple(physical)
        infos = {d.index: d for d in backend.devices()}
        self._infos = tuple(GpuInfo(k, infos[i].uuid, infos[i].name)
                            for k, i in enumerate(self.physical))
        # What the agent reads off its backend (simulated, dry_run) passes through.
        self.simulated = bool(getattr(backend, "simulated", False))
        self.dry_run = bool(getattr(backend, "dry_run", False))

    @property
    def inner(self) -> GpuBackend:
        return self._backend

    def devices(self) -> Sequence[GpuInfo]:
        return self._infos

    def instant_power_mw(self, index: int) -> int:
        return self._backend.instant_power_mw(self.physical[index])

    def average_power_mw(self, index: int) -> int:
        return self._backend.average_power_mw(self.physical[index])

    def enforced_limit_mw(self, index: int) -> int:
        return self._backend.enforced_limit_mw(self.physical[index])

    def power_limits(self, index: int) -> PowerLimits:
        return self._backend.power_limits(self.physical[index])

    def energy_mj(self, index: int) -> int:
        return self._backend.energy_mj(self.physical[index])

    def set_limit_mw(self, index: int, limit_mw: int) -> int:
        return self._backend.set_limit_mw(self.physical[index], limit_mw)

    def command_limit_mw(self, index: int, limit_mw: int) -> bool:
        return self._backend.command_limit_mw(self.physical[index], limit_mw)

    def close(self) -> None:
        self._backend.close()
