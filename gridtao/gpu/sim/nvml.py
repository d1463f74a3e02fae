"""Simulated GPUs behind a pynvml-compatible facade.

:class:`SimNvml` implements the subset of the ``pynvml`` module that ``gpu/nvml.py`` calls, with
the same function names, argument order and units (mW, mJ), opaque handles, and the real
``pynvml.NVMLError`` subclasses (``NVMLError_Uninitialized`` before ``nvmlInit``,
``NVMLError_InvalidArgument`` for an out-of-range limit, ...), so the production NVML backend runs
unchanged against it. Constants (``NVML_*``, ``NVMLError*``, ``c_nvml*``) are copied from
``pynvml`` onto the class.

Physics lives in ``physics.py``, demand profiles in ``workloads.py``, and the GPUs themselves
(in this process or in the machine-wide device) in ``devices.py``. Every call advances
the physics lazily to ``clock.now()``. A call lasts at least its configured latency
(``read_latency_ms`` / ``set_latency_ms``): reads report the state at the call's start, a new
limit takes effect when the set call returns. Latency is ``clock.sleep`` outside any lock, so
parallel calls on different devices overlap in real time (``MonotonicClock``); a ``VirtualClock``
instead advances once per sleeping caller. In real time only the part of the latency the call's
own work has not used is slept, and a leftover under 50 µs not at all (see ``SimNvml._last``).

Where the GPUs live: by default (``SimNvml(clock, config)``) inside this object, for tests in
virtual time; with ``device_path`` (``SimNvml.open_device``) in a machine-wide device file that
every process opening it shares (``shared.py``): one limit, one draw, one energy counter, which
outlive the process that set them. Faults and call counts always belong to the one process.

Fault injection (``inject_fault``) for tests and benches:
``lost`` every call on the device raises ``NVMLError_GpuIsLost``; ``no_permission`` set raises
``NVMLError_NoPermission``; ``not_supported`` field 186 answers ``NVML_ERROR_NOT_SUPPORTED`` in its
own ``nvmlReturn`` and set raises ``NVMLError_NotSupported``; ``slow`` every call sleeps
``delay_s`` first. ``calls`` bounds how many affected calls a fault lasts (None: until cleared).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pynvml

from gridtao.clock import Clock, VirtualClock
from gridtao.config.agent import SimConfig, SimWorkload
from gridtao.gpu.sim.devices import (
    Fault,
    LocalGpu,
    build_gpus,
    config_of,
    load_configured_trace,
    nvml_error,
)
from gridtao.gpu.sim.gpumodels import PROFILES, GpuProfile
from gridtao.gpu.sim.physics import WorkTotals
from gridtao.gpu.sim.shared import DeviceFile, DeviceMissing

FaultKind = Literal["lost", "no_permission", "not_supported", "slow"]
FAULT_KINDS: tuple[FaultKind, ...] = ("lost", "no_permission", "not_supported", "slow")

_MIN_REAL_SLEEP_S = 50e-6  # Linux's default timer slack
_SET = "nvmlDeviceSetPowerManagementLimit"
_FIELD_CALL = "nvmlDeviceGetFieldValues"


@dataclass(frozen=True)
class SimHandle:
    """Opaque device handle, valid only for the :class:`SimNvml` that issued it."""

    index: int
    owner: int


# pynvml's structures override __setattr__/__getattribute__ in Python (str<->bytes), which
# dominates a field read; the numeric members need only ctypes' own descriptors.
_set = ctypes.Structure.__setattr__
_get = object.__getattribute__


class SimNvml:
    """A pynvml-compatible module object simulating ``config.count`` GPUs of one profile;
    :attr:`workloads` says what each runs (``config.workloads``, else ``config.workload``).

    Thread-safe: each device has its own lock, held only while its physics advances.
    """

    #: Read by the NVML backend: the agent reports every result as simulated.
    SIMULATED = True

    def __init__(self, clock: Clock, config: SimConfig | None = None, *,
                 device_path: str | Path | None = None, create_device: bool = True) -> None:
        cfg = config if config is not None else SimConfig()
        if device_path is not None and isinstance(clock, VirtualClock):
            raise ValueError("a machine-wide simulated device runs on the machine's monotonic "
                             "clock, not a virtual one")
        self.config = cfg
        self.clock = clock
        self.profile: GpuProfile = PROFILES[cfg.profile]
        self._set_latency_s = cfg.set_latency_ms / 1000.0
        self._read_latency_s = cfg.read_latency_ms / 1000.0
        self._min_sleep_s = 0.0 if isinstance(clock, VirtualClock) else _MIN_REAL_SLEEP_S
        self._init_lock = threading.Lock()
        self._init_count = 0
        self._id = id(self)  # a handle's owner: every call checks it
        self._global_calls: dict[str, int] = {}
        self.workloads: tuple[SimWorkload, ...] = (
            cfg.workloads or (SimWorkload(cfg.workload),) * cfg.count)
        traced = any(w.kind == "trace" for w in self.workloads)
        trace_data = load_configured_trace(cfg) if traced else None
        gpus = build_gpus(cfg, clock, self.profile, self.workloads, trace_data,
                          device_path=device_path, create=create_device)
        self.device: DeviceFile | None = gpus.device
        # Fixed once, so one sample always carries the same timestamp.
        self._wall_offset_s = gpus.wall_offset_s
        self._devices: tuple[LocalGpu, ...] = gpus.gpus

    @classmethod
    def from_config(cls, config: SimConfig, clock: Clock, *,
                    device_path: str | Path | None = None) -> SimNvml:
        """Build from configuration, with ``config.faults`` injected; on the machine-wide
        device at ``device_path`` when given (see :func:`gridtao.config.paths.sim_device_path`).
        Raises ``ConfigError`` for an unusable trace, ``SimDeviceError`` for an unusable
        device."""
        sim = cls(clock, config, device_path=device_path)
        for fault in config.faults:
            for index in range(sim.count) if fault.gpu is None else (fault.gpu,):
                sim.inject_fault(index, fault.kind, delay_s=fault.delay_s, calls=fault.calls)
        return sim

    @classmethod
    def open_existing(cls, device_path: str | Path, clock: Clock) -> SimNvml | None:
        """The machine-wide device at ``device_path`` with the settings it was created with
        (as ``nvidia-smi`` finds the GPUs without a configuration); None when there is none.
        Never creates one. Raises ``SimDeviceError`` for an unusable device."""
        info = DeviceFile.peek(device_path)
        if info is None:
            return None
        try:
            return cls(clock, config_of(info.params), device_path=device_path,
                       create_device=False)
        except DeviceMissing:  # destroyed since the peek
            return None

    # -- test and bench oracles (no latency, no faults, not counted) ------------------------

    @property
    def count(self) -> int:
        return len(self._devices)

    def true_power_mw(self, index: int) -> float:
        """The physics' true draw now, mW."""
        with self._devices[index].hold() as physics:
            physics.advance(self.clock.now())
            return physics.draw_w() * 1000.0

    def demand_w(self, index: int) -> float:
        """The workload's (or override's) demand now, W."""
        with self._devices[index].hold() as physics:
            physics.advance(self.clock.now())
            return physics.demand_w

    def work_j(self, index: int) -> WorkTotals:
        """GPU ``index``'s work so far (served, arrived, waiting), full-speed J: the physics'
        counters (``physics.py``; ``throughput.py`` turns them into tokens or samples)."""
        with self._devices[index].hold() as physics:
            physics.advance(self.clock.now())
            return physics.work()

    def set_demand_w(self, index: int, watts: float | None) -> None:
        """Override GPU ``index``'s demand with ``watts`` (None: back to its workload)."""
        if watts is not None and watts < 0:
            raise ValueError("demand must be >= 0 W")
        with self._devices[index].hold() as physics:
            physics.set_override(self.clock.now(), watts)

    def inject_fault(
        self, index: int, kind: FaultKind, *, delay_s: float = 0.5, calls: int | None = None
    ) -> None:
        """Make GPU ``index`` misbehave (see module docstring) for ``calls`` affected calls."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r} (known: {', '.join(FAULT_KINDS)})")
        if calls is not None and calls < 1:
            raise ValueError("calls must be >= 1 or None")
        dev = self._devices[index]
        with dev.lock:
            dev.faults[kind] = Fault(calls, delay_s)

    def clear_faults(self, index: int | None = None) -> None:
        """Remove injected faults from GPU ``index`` (None: all GPUs)."""
        for dev in self._devices if index is None else (self._devices[index],):
            with dev.lock:
                dev.faults.clear()

    def call_count(self, name: str, index: int | None = None) -> int:
        """How many times NVML function ``name`` was called (on device ``index``, or in all)."""
        if index is not None:
            return self._devices[index].calls.get(name, 0)
        with self._init_lock:
            total = self._global_calls.get(name, 0)
        return total + sum(d.calls.get(name, 0) for d in self._devices)

    # -- internals --------------------------------------------------------------------------

    def _count_global(self, name: str) -> None:
        with self._init_lock:
            self._global_calls[name] = self._global_calls.get(name, 0) + 1

    def _check_init(self) -> None:
        if self._init_count <= 0:
            raise nvml_error(pynvml.NVML_ERROR_UNINITIALIZED)

    def _take_fault(self, dev: LocalGpu, kind: str) -> Fault | None:
        """Consume one call of fault ``kind`` if active. Caller holds ``dev.lock``."""
        fault = dev.faults.get(kind)
        if fault is None:
            return None
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                del dev.faults[kind]
        return fault

    def _enter(self, handle: object, name: str) -> LocalGpu:
        """Prologue of a device call: checks, accounting, and the ``lost``/``slow`` faults."""
        self._check_init()
        if not isinstance(handle, SimHandle) or handle.owner != self._id:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        dev = self._devices[handle.index]
        delay_s = 0.0
        with dev.lock:
            dev.calls[name] = dev.calls.get(name, 0) + 1
            if dev.faults:
                if self._take_fault(dev, "lost") is not None:
                    raise nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
                slow = self._take_fault(dev, "slow")
                if slow is not None:
                    delay_s = slow.delay_s
        if delay_s > 0:
            self.clock.sleep(delay_s)
        return dev

    def _last(self, t_start: float, latency_s: float) -> None:
        """Make a call that started at ``t_start`` last at least ``latency_s``.

        Only the part the call's own work has not used is slept. In virtual time that is all of
        it. In real time a leftover under ``_MIN_REAL_SLEEP_S`` is not slept: ``time.sleep``
        would overshoot it several times over (timer slack) and spend more CPU on the context
        switch than the simulated call itself."""
        if latency_s > 0:
            remaining = t_start + latency_s - self.clock.now()
            if remaining > self._min_sleep_s:
                self.clock.sleep(remaining)

    def _read(
        self, handle: object, name: str, quantity: Literal["limit", "energy", "usage"]
    ) -> float:
        """A read call: ``quantity`` of the physics at the call's start, in W (J for energy)."""
        dev = self._enter(handle, name)
        t_start = self.clock.now()
        with dev.hold() as physics:
            if quantity == "limit":
                # What the last write set, whenever that was: no time to step through (a
                # read-back follows every write, on every GPU).
                value = physics.limit_w
            else:
                physics.advance(t_start)
                if quantity == "energy":
                    value = physics.energy_j
                elif quantity == "usage" and self.profile.usage_is_average:
                    value = physics.average_w()
                else:
                    value = physics.sample_w
        self._last(t_start, self._read_latency_s)
        return value

    def _static_read(self, handle: object, name: str) -> LocalGpu:
        dev = self._enter(handle, name)
        self._last(self.clock.now(), self._read_latency_s)
        return dev

    # -- the pynvml API subset ----------------------------------------------------------------

    def nvmlInit(self) -> None:
        with self._init_lock:
            self._init_count += 1
            self._global_calls["nvmlInit"] = self._global_calls.get("nvmlInit", 0) + 1

    def nvmlShutdown(self) -> None:
        with self._init_lock:
            self._global_calls["nvmlShutdown"] = self._global_calls.get("nvmlShutdown", 0) + 1
            if self._init_count <= 0:
                raise nvml_error(pynvml.NVML_ERROR_UNINITIALIZED)
            self._init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_init()
        self._count_global("nvmlSystemGetDriverVersion")
        return "gridtao-sim"

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        self._count_global("nvmlDeviceGetCount")
        return len(self._devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimHandle:
        self._check_init()
        if not isinstance(index, int) or not 0 <= index < len(self._devices):
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        handle = SimHandle(index, self._id)
        self._enter(handle, "nvmlDeviceGetHandleByIndex")
        return handle

    def nvmlDeviceGetName(self, handle: object) -> str:
        return self._static_read(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        return self._static_read(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: object) -> list[int]:
        self._static_read(handle, "nvmlDeviceGetPowerManagementLimitConstraints")
        return [round(self.profile.min_w * 1000), round(self.profile.max_w * 1000)]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: object) -> int:
        self._static_read(handle, "nvmlDeviceGetPowerManagementDefaultLimit")
        return round(self.profile.default_w * 1000)

    def nvmlDeviceGetPowerManagementLimit(self, handle: object) -> int:
        return round(self._read(handle, "nvmlDeviceGetPowerManagementLimit", "limit") * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object) -> int:
        return round(self._read(handle, "nvmlDeviceGetEnforcedPowerLimit", "limit") * 1000)

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        """mW: the ~1 s average on profiles where NVML reports that, else the instant sample."""
        return round(self._read(handle, "nvmlDeviceGetPowerUsage", "usage") * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        energy_j = self._read(handle, "nvmlDeviceGetTotalEnergyConsumption", "energy")
        return int(energy_j * 1000)

    def nvmlDeviceGetFieldValues(
        self, handle: object, fieldIds: Sequence[int | tuple[int, int]]
    ) -> Any:
        """A ``pynvml.c_nvmlFieldValue_t`` array; fields 186 (instant) and 185 (average) in mW
        as unsigned ints, every other field answers NOT_SUPPORTED in its own ``nvmlReturn``."""
        dev = self._enter(handle, _FIELD_CALL)
        t_start = self.clock.now()
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        ids = [fid[0] if isinstance(fid, tuple) else fid for fid in fieldIds]
        instant_ok = True
        if dev.faults and pynvml.NVML_FI_DEV_POWER_INSTANT in ids:
            with dev.lock:
                instant_ok = self._take_fault(dev, "not_supported") is None
        with dev.hold() as physics:
            physics.advance(t_start)
            sample_mw = round(physics.sample_w * 1000)
            average_mw = (
                round(physics.average_w() * 1000)
                if pynvml.NVML_FI_DEV_POWER_AVERAGE in ids else 0
            )
            stamp_us = round((physics.sample_t_s + self._wall_offset_s) * 1e6)
        for i, fid in enumerate(fieldIds):
            v = values[i]
            if isinstance(fid, tuple):
                _set(v, "scopeId", fid[1])
            _set(v, "fieldId", ids[i])
            _set(v, "timestamp", stamp_us)
            _set(v, "valueType", pynvml.NVML_VALUE_TYPE_UNSIGNED_INT)
            if ids[i] == pynvml.NVML_FI_DEV_POWER_INSTANT and instant_ok:
                _set(_get(v, "value"), "uiVal", sample_mw)
            elif ids[i] == pynvml.NVML_FI_DEV_POWER_AVERAGE:
                _set(_get(v, "value"), "uiVal", average_mw)
            else:
                _set(v, "nvmlReturn", pynvml.NVML_ERROR_NOT_SUPPORTED)
        self._last(t_start, self._read_latency_s)
        return values

    def nvmlDeviceSetPowerManagementLimit(self, handle: object, limit: int) -> None:
        """Set the limit (mW). Out of ``[min, max]`` raises ``NVMLError_InvalidArgument``."""
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise TypeError(f"int expected instead of {type(limit).__name__}")  # as ctypes.c_uint
        dev = self._enter(handle, _SET)
        t_start = self.clock.now()
        with dev.lock:
            if dev.faults:
                if self._take_fault(dev, "no_permission") is not None:
                    raise nvml_error(pynvml.NVML_ERROR_NO_PERMISSION)
                if self._take_fault(dev, "not_supported") is not None:
                    raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not self.profile.min_w * 1000 <= limit <= self.profile.max_w * 1000:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        # The new limit takes effect when the driver call returns.
        self._last(t_start, self._set_latency_s)
        with dev.hold(limit_set=True) as physics:
            physics.set_limit(self.clock.now(), limit / 1000.0)


# Constants and error classes come from the real module, so `sim.NVML_FI_DEV_POWER_INSTANT` and
# `except sim.NVMLError_GpuIsLost` behave exactly as with pynvml. Set on the class rather than via
# __getattr__ so that type checkers still flag misspelt method names on a SimNvml.
for _name in dir(pynvml):
    if _name.startswith(("NVML_", "NVMLError", "c_nvml")):
        setattr(SimNvml, _name, getattr(pynvml, _name))
del _name
