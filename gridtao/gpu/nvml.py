"""The NVML backend: :class:`NvmlBackend` implements ``GpuBackend`` over a pynvml-compatible
module (the real ``pynvml`` from nvidia-ml-py, or ``gridtao.gpu.sim.nvml.SimNvml``).

* Instant power comes from field ``NVML_FI_DEV_POWER_INSTANT`` (186), checking the field's own
  ``nvmlReturn``; a device that does not support it falls back, permanently, to
  ``nvmlDeviceGetPowerUsage`` (a 1 s average on Ampere and newer).
* Limits are written with ``nvmlDeviceSetPowerManagementLimit`` only: nvidia-ml-py 13's ``_v2``
  variant ignores the driver's return code. Every write is range-checked first and read back
  with ``nvmlDeviceGetEnforcedPowerLimit``.
* Every ``NVMLError`` leaves as a ``gridtao.gpu.backend`` exception raised ``from`` it, naming
  the device index and the operation.
* Thread-safe without a global lock: reads go straight to NVML (thread-safe, and ctypes drops
  the GIL), writes take only their own device's lock, so writers on different GPUs overlap.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import pynvml

from gridtao.gpu.backend import (
    GpuDriverError,
    GpuError,
    GpuInfo,
    GpuInvalidArgument,
    GpuLost,
    GpuNotSupported,
    GpuPermissionDenied,
    GpuTimeout,
    GpuUnavailable,
    PowerLimits,
)

log = logging.getLogger("gridtao.gpu")

DRY_RUN_LOG_PERIOD_S = 1.0

FIX_DISTRIBUTION = "pip uninstall pynvml && pip install nvidia-ml-py"


class NvmlApi(Protocol):
    """The subset of the ``pynvml`` module this backend calls (mW, mJ; opaque handles)."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any, /) -> str: ...
    def nvmlDeviceGetUUID(self, handle: Any, /) -> str: ...
    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: Any, /) -> list[int]: ...
    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: Sequence[int], /) -> Any: ...
    def nvmlDeviceSetPowerManagementLimit(self, handle: Any, limit: int, /) -> None: ...


_CODE_TO_ERROR: dict[int, type[GpuError]] = {
    pynvml.NVML_ERROR_GPU_IS_LOST: GpuLost,
    pynvml.NVML_ERROR_NO_PERMISSION: GpuPermissionDenied,
    pynvml.NVML_ERROR_NOT_SUPPORTED: GpuNotSupported,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: GpuNotSupported,
    pynvml.NVML_ERROR_TIMEOUT: GpuTimeout,
    pynvml.NVML_ERROR_INVALID_ARGUMENT: GpuInvalidArgument,
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: GpuUnavailable,
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: GpuUnavailable,
}

_NO_DRIVER = (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
_INSTANT_UNSUPPORTED = (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

_VALUE_MEMBER = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


def translate_nvml_error(error: pynvml.NVMLError, index: int | None, operation: str) -> GpuError:
    """The ``gridtao.gpu.backend`` exception for ``error`` (raise it ``from error``)."""
    code = int(getattr(error, "value", pynvml.NVML_ERROR_UNKNOWN))
    cls = _CODE_TO_ERROR.get(code, GpuDriverError)
    where = "NVML" if index is None else f"GPU {index}"
    return cls(f"{where}: {operation} failed: {error} (NVML error {code})", index=index)


def _field_value(field: Any) -> float:
    member = _VALUE_MEMBER.get(int(field.valueType))
    if member is None:
        raise GpuDriverError(f"NVML field {field.fieldId}: unknown value type {field.valueType}")
    return float(getattr(field.value, member))


class _Device:
    __slots__ = ("dry_logged_at", "handle", "info", "instant_supported", "last_commanded_mw",
                 "limits", "lock")

    def __init__(self, handle: Any, info: GpuInfo, limits: PowerLimits) -> None:
        self.handle = handle
        self.info = info
        self.limits = limits
        self.lock = threading.Lock()
        self.instant_supported = True
        self.last_commanded_mw: int | None = None
        self.dry_logged_at = float("-inf")  # monotonic s of the last INFO dry-run line


class NvmlBackend:
    """``GpuBackend`` over ``nvml`` (see module docstring). Initialises NVML and caches each
    device's handle, identity and limits; :meth:`close` shuts NVML down once.

    ``dry_run``: :meth:`set_limit_mw` validates and logs the write it would make, never makes it,
    and returns the unchanged enforced limit.
    """

    def __init__(self, nvml: NvmlApi, *, dry_run: bool = False) -> None:
        self._nvml = nvml
        self.dry_run = dry_run
        #: True when ``nvml`` is the simulator (it says so), not the NVIDIA driver.
        self.simulated: bool = bool(getattr(nvml, "SIMULATED", False))
        self._close_lock = threading.Lock()
        self._closed = False
        try:
            nvml.nvmlInit()
        except pynvml.NVMLError as e:
            if e.value in _NO_DRIVER:
                raise GpuUnavailable(
                    f"no NVIDIA driver found (NVML: {e}): use --backend sim"
                    " (or gpus.backend: sim) to run on simulated GPUs"
                ) from e
            raise translate_nvml_error(e, None, "nvmlInit") from e
        try:
            self.driver_version: str = str(
                self._call(None, "read the driver version", nvml.nvmlSystemGetDriverVersion)
            )
            count = self._call(None, "count devices", nvml.nvmlDeviceGetCount)
            self._devices: dict[int, _Device] = {}
            #: GPUs that could not be opened (fallen off the bus, a driver error): index ->
            #: the error. The others are served; every call on one of these raises its error.
            self.unavailable: dict[int, GpuError] = {}
            for i in range(count):
                try:
                    self._devices[i] = self._open_device(i)
                except GpuError as e:
                    self.unavailable[i] = e
            if count and not self._devices:
                raise self.unavailable[0]
        except BaseException:
            # Report the enumeration failure, not a secondary shutdown error.
            with contextlib.suppress(pynvml.NVMLError):
                nvml.nvmlShutdown()
            raise
        self._infos = tuple(d.info for d in self._devices.values())

    def _open_device(self, index: int) -> _Device:
        nvml = self._nvml
        handle = self._call(index, "get handle", nvml.nvmlDeviceGetHandleByIndex, index)
        name = self._call(index, "read name", nvml.nvmlDeviceGetName, handle)
        uuid = self._call(index, "read UUID", nvml.nvmlDeviceGetUUID, handle)
        lo, hi = self._call(
            index, "read limit constraints", nvml.nvmlDeviceGetPowerManagementLimitConstraints,
            handle,
        )
        default = self._call(
            index, "read default limit", nvml.nvmlDeviceGetPowerManagementDefaultLimit, handle
        )
        limits = PowerLimits(min_mw=int(lo), max_mw=int(hi), default_mw=int(default))
        return _Device(handle, GpuInfo(index=index, uuid=str(uuid), name=str(name)), limits)

    @staticmethod
    def _call(index: int | None, operation: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except pynvml.NVMLError as e:
            raise translate_nvml_error(e, index, operation) from e

    def _device(self, index: int) -> _Device:
        if self._closed:
            raise GpuUnavailable("NVML backend is closed", index=index)
        dev = self._devices.get(index)
        if dev is None:
            error = self.unavailable.get(index)
            if error is not None:
                raise type(error)(str(error), index=index)
            raise GpuInvalidArgument(
                f"GPU {index}: no such device (have {len(self._devices)})", index=index
            )
        return dev

    def reopenable(self) -> list[int]:
        """Of the GPUs that could not be opened, those that can be now (each is opened and
        let go: the agent serves the GPUs it started with, so it says so, for a restart)."""
        back = []
        for index in list(self.unavailable):
            try:
                self._open_device(index)
            except GpuError:
                continue
            back.append(index)
        return back

    # -- GpuBackend ------------------------------------------------------------------------

    def devices(self) -> Sequence[GpuInfo]:
        return self._infos

    def instant_power_mw(self, index: int) -> int:
        dev = self._device(index)
        if dev.instant_supported:
            try:
                fields = self._nvml.nvmlDeviceGetFieldValues(
                    dev.handle, [pynvml.NVML_FI_DEV_POWER_INSTANT]
                )
            except pynvml.NVMLError as e:
                if e.value not in _INSTANT_UNSUPPORTED:
                    raise translate_nvml_error(e, index, "read instant power") from e
                self._instant_unsupported(dev, e)
            else:
                field = fields[0]
                ret = int(field.nvmlReturn)
                if ret == pynvml.NVML_SUCCESS:
                    return round(_field_value(field))
                err = pynvml.NVMLError(ret)
                if ret not in _INSTANT_UNSUPPORTED:
                    raise translate_nvml_error(err, index, "read instant power") from err
                self._instant_unsupported(dev, err)
        return int(self._call(index, "read power", self._nvml.nvmlDeviceGetPowerUsage, dev.handle))

    @staticmethod
    def _instant_unsupported(dev: _Device, error: pynvml.NVMLError) -> None:
        dev.instant_supported = False
        log.warning(
            "GPU %d: instant power field unsupported (%s); using nvmlDeviceGetPowerUsage,"
            " which may be a 1 s average", dev.info.index, error,
        )

    def average_power_mw(self, index: int) -> int:
        dev = self._device(index)
        return int(self._call(index, "read power", self._nvml.nvmlDeviceGetPowerUsage, dev.handle))

    def enforced_limit_mw(self, index: int) -> int:
        dev = self._device(index)
        return int(self._call(
            index, "read enforced limit", self._nvml.nvmlDeviceGetEnforcedPowerLimit, dev.handle
        ))

    def power_limits(self, index: int) -> PowerLimits:
        return self._device(index).limits

    def energy_mj(self, index: int) -> int:
        dev = self._device(index)
        return int(self._call(
            index, "read energy", self._nvml.nvmlDeviceGetTotalEnergyConsumption, dev.handle
        ))

    def set_limit_mw(self, index: int, limit_mw: int) -> int:
        dev = self._device(index)
        with dev.lock:  # command and read-back as one step per GPU
            self._command(index, dev, limit_mw)
            return self.enforced_limit_mw(index)

    def command_limit_mw(self, index: int, limit_mw: int) -> bool:
        dev = self._device(index)
        with dev.lock:
            return self._command(index, dev, limit_mw)

    def _command(self, index: int, dev: _Device, limit_mw: int) -> bool:
        """The driver call of a limit write (caller holds ``dev.lock``); False if skipped."""
        lim = dev.limits
        if isinstance(limit_mw, bool) or not isinstance(limit_mw, int):
            raise GpuInvalidArgument(
                f"GPU {index}: limit must be an integer of mW, got {limit_mw!r}", index=index
            )
        if not lim.min_mw <= limit_mw <= lim.max_mw:
            raise GpuInvalidArgument(
                f"GPU {index}: limit {limit_mw / 1000:.1f} W outside the device's"
                f" [{lim.min_mw / 1000:.1f}, {lim.max_mw / 1000:.1f}] W",
                index=index,
            )
        if self.dry_run:
            # The control loop runs open in a dry run (nothing it plans takes effect), so it
            # may re-plan every step: one INFO line per GPU per second, the rest at DEBUG.
            now = time.monotonic()
            if now - dev.dry_logged_at >= DRY_RUN_LOG_PERIOD_S:
                dev.dry_logged_at = now
                log.info("dry-run: would set GPU %d limit %.1f W", index, limit_mw / 1000)
            else:
                log.debug("dry-run: would set GPU %d limit %.1f W", index, limit_mw / 1000)
            return False
        if dev.last_commanded_mw == limit_mw and self.enforced_limit_mw(index) == limit_mw:
            return False
        self._call(index, f"set power limit to {limit_mw / 1000:.1f} W",
                   self._nvml.nvmlDeviceSetPowerManagementLimit, dev.handle, limit_mw)
        dev.last_commanded_mw = limit_mw
        return True

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except pynvml.NVMLError as e:
            raise translate_nvml_error(e, None, "nvmlShutdown") from e

    def __enter__(self) -> NvmlBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- distribution check ----------------------------------------------------------------------


def _distribution_files(name: str) -> Iterable[str]:
    dist = importlib.metadata.distribution(name)
    return [str(dist.locate_file(f)) for f in dist.files or ()]


def _major(version: str) -> int | None:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def check_nvml_distribution(
    *,
    module_file: str | None = None,
    version_of: Callable[[str], str] = importlib.metadata.version,
    files_of: Callable[[str], Iterable[str]] = _distribution_files,
) -> None:
    """Refuse the deprecated ``pynvml`` PyPI distribution.

    Raises ``GpuUnavailable`` (telling the user to run ``pip uninstall pynvml && pip install
    nvidia-ml-py``) when a ``pynvml`` distribution older than 12 is installed (it ships its own,
    outdated ``pynvml`` module), or when the importable ``pynvml`` module file is not one of
    nvidia-ml-py's files. ``module_file`` defaults to the imported ``pynvml.__file__``;
    ``version_of`` and ``files_of`` (``importlib.metadata`` lookups that raise
    ``PackageNotFoundError``) are injectable for tests.
    """
    try:
        old = version_of("pynvml")
    except importlib.metadata.PackageNotFoundError:
        old = None
    if old is not None:
        major = _major(old)
        if major is None or major < 12:
            raise GpuUnavailable(
                f"the deprecated 'pynvml' {old} distribution is installed and shadows NVIDIA's"
                f" bindings: run `{FIX_DISTRIBUTION}`"
            )
    if module_file is None:
        module_file = str(pynvml.__file__)
    try:
        owned = {os.path.realpath(p) for p in files_of("nvidia-ml-py")}
    except importlib.metadata.PackageNotFoundError:
        raise GpuUnavailable(
            f"nvidia-ml-py is not installed (the pynvml module at {module_file} comes from"
            f" elsewhere): run `{FIX_DISTRIBUTION}`"
        ) from None
    if os.path.realpath(module_file) not in owned:
        raise GpuUnavailable(
            f"the pynvml module at {module_file} is not from nvidia-ml-py: run `{FIX_DISTRIBUTION}`"
        )
