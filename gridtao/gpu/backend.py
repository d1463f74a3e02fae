"""The GPU boundary: a small typed interface with units in every name.

Power is in milliwatts (``_mw``) and energy in millijoules (``_mj``) at this boundary, exactly as
NVML reports them, so nothing is rounded twice. Callers convert to watts at the edges (CLI, wire
messages, metrics).

Every backend raises only the exceptions defined here; NVML's own errors are translated at the
boundary (``raise GpuLost(...) from nvml_error``) so that no caller ever imports ``pynvml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gridtao.errors import GridtaoError


@dataclass(frozen=True)
class GpuInfo:
    """Identity of one device as the backend enumerates it."""

    index: int
    uuid: str
    name: str


@dataclass(frozen=True)
class PowerLimits:
    """Static power-limit facts of one device, in milliwatts.

    Invariant: ``min_mw <= default_mw <= max_mw``. gridtao never commands a limit outside
    ``[min_mw, default_mw]``: never above default, never below minimum (docs/architecture.md).
    """

    min_mw: int
    max_mw: int
    default_mw: int


class GpuError(GridtaoError):
    """Base of every error raised by a GPU backend."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class GpuUnavailable(GpuError):
    """No usable driver or library (e.g. NVML not installed, driver not loaded)."""


class GpuLost(GpuError):
    """The device fell off the bus or otherwise stopped answering (NVML_ERROR_GPU_IS_LOST)."""


class GpuPermissionDenied(GpuError):
    """The caller lacks the privilege for the operation (root / CAP_SYS_ADMIN to set limits)."""


class GpuNotSupported(GpuError):
    """The device or driver does not support the operation."""


class GpuTimeout(GpuError):
    """The call did not complete within its deadline."""


class GpuInvalidArgument(GpuError):
    """A value outside what the device accepts (e.g. a limit beyond its constraints)."""


class GpuDriverError(GpuError):
    """Any other driver error; the message carries the driver's code and text."""


@runtime_checkable
class GpuBackend(Protocol):
    """What gridtao needs from GPUs. Implementations: ``NvmlBackend`` (real or simulated NVML).

    All methods take the device ``index`` as listed by :meth:`devices`. Implementations must be
    safe to call from several threads at once (the safety island writes GPUs in parallel).
    """

    def devices(self) -> Sequence[GpuInfo]:
        """All devices, ordered by index."""
        ...

    def instant_power_mw(self, index: int) -> int:
        """Most recent instantaneous power sample (refreshes about every 20 ms), mW."""
        ...

    def average_power_mw(self, index: int) -> int:
        """Power averaged over the last second (what ``nvmlDeviceGetPowerUsage`` gives on
        Ampere and newer), mW."""
        ...

    def enforced_limit_mw(self, index: int) -> int:
        """The power limit the device is enforcing now, mW."""
        ...

    def power_limits(self, index: int) -> PowerLimits:
        """Minimum, maximum and default power limit, mW (cached: they do not change)."""
        ...

    def energy_mj(self, index: int) -> int:
        """Energy consumed since the driver loaded, mJ (monotonic)."""
        ...

    def set_limit_mw(self, index: int, limit_mw: int) -> int:
        """Command a power limit and return the enforced limit read back, mW.

        Skips the driver call when the last commanded limit already equals ``limit_mw``.
        In dry-run mode logs the write, skips it, and returns the unchanged enforced limit.
        """
        ...

    def command_limit_mw(self, index: int, limit_mw: int) -> bool:
        """The driver call of :meth:`set_limit_mw` alone, without the read-back; mW.

        True if the call was made (the new limit is in force when it returns), False if it was
        skipped: the GPU already enforces ``limit_mw`` as last commanded, or dry-run mode.
        Lets a writer stamp "commanded" when the driver returns and read back afterwards.
        """
        ...

    def close(self) -> None:
        """Release the driver. Idempotent."""
        ...
