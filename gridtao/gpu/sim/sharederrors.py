"""The errors of the machine-wide simulated device (:mod:`gridtao.gpu.sim.shared`), apart so that
both the device and its file layout (:mod:`gridtao.gpu.sim.sharedlayout`) can raise them.

Every message says why the device cannot be used and what to do; :class:`DeviceMismatch` also
carries the configuration key and the two values. No state, no threads.
"""

from __future__ import annotations

from typing import Any

from gridtao.errors import GridtaoError

__all__ = ["DeviceGone", "DeviceMismatch", "DeviceMissing", "SimDeviceError"]


class SimDeviceError(GridtaoError):
    """A simulated device that cannot be opened; the message says why and what to do."""


class DeviceMismatch(SimDeviceError):
    """The device exists with other physics than this configuration's. ``key`` is the
    configuration key (``gpus.sim.count``...), ``device_value`` and ``config_value`` the two."""

    def __init__(self, message: str, *, key: str, device_value: Any, config_value: Any) -> None:
        super().__init__(message)
        self.key = key
        self.device_value = device_value
        self.config_value = config_value


class DeviceMissing(SimDeviceError):
    """There is no device at the path, and the caller asked not to create one."""


class DeviceGone(SimDeviceError):
    """The device was destroyed while this process held it (a driver reload, for NVML)."""
