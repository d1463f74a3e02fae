"""The simulated GPUs behind :class:`~gridtao.gpu.sim.nvml.SimNvml`: each GPU as one process
sees it (its physics, name, UUID, and this process's faults and call counts), in this process
(:class:`LocalGpu`) or in a machine-wide device file every process shares (:class:`SharedGpu`,
``shared.py``), and how a configuration builds them.

Threads: a GPU's ``lock`` guards its faults and call counts, and :meth:`LocalGpu.hold` hands its
physics to one thread at a time (a shared GPU's also locks its record in the file).
"""

from __future__ import annotations

import dataclasses
import random
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml

from gridtao.clock import Clock
from gridtao.config.agent import ConfigError, SimConfig, SimWorkload, config_from_mapping
from gridtao.gpu.sim.daily import DailyShape, configured_shape
from gridtao.gpu.sim.gpumodels import GpuProfile
from gridtao.gpu.sim.physics import GpuPhysics
from gridtao.gpu.sim.shared import DeviceFile, DeviceGone, SimDeviceError
from gridtao.gpu.sim.throughput import QUEUED_WORKLOADS, model_for
from gridtao.gpu.sim.workloads import Resumable, Trace, TraceError, load_trace, make_workload

__all__ = ["DEVICE_PARAMS", "Fault", "Gpus", "LocalGpu", "SharedGpu", "build_gpus", "config_of",
           "device_params", "load_configured_trace", "nvml_error", "shape_of"]


@dataclass
class Fault:
    """An injected fault: how many more affected calls it lasts (None: until cleared), and
    how long each sleeps first (``slow``)."""

    remaining: int | None
    delay_s: float


#: The settings that make a device's physics: processes sharing one device must agree on them.
#: Latencies and faults are each process's own (they model its calls, not the GPUs).
#: ``workloads`` is recorded only when set, so devices made before it existed still open.
DEVICE_PARAMS = ("count", "profile", "workload", "trace_csv", "cap_down_ms", "cap_up_ms",
                 "refresh_ms", "noise_w", "seed", "daily_shape", "workloads", "daily_levels",
                 "daily_weekend_factor", "daily_tz_offset_h", "training_in_step")
#: Recorded only when they differ from these, so devices made before they existed still open.
_RECORDED_IF_SET = {"workloads": (), "daily_levels": (), "daily_weekend_factor": 0.6,
                    "daily_tz_offset_h": 0.0, "training_in_step": False}


def device_params(cfg: SimConfig) -> dict[str, Any]:
    """``cfg``'s :data:`DEVICE_PARAMS` as the device header stores them (JSON values)."""
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k in DEVICE_PARAMS}
    for key, unset in _RECORDED_IF_SET.items():
        if getattr(cfg, key) == unset:
            del params[key]
    if "workloads" in params:
        params["workloads"] = [dict(w) for w in params["workloads"]]
    if "daily_levels" in params:
        params["daily_levels"] = list(params["daily_levels"])
    return params


def config_of(params: dict[str, Any]) -> SimConfig:
    """The :class:`SimConfig` a device header's parameters describe; :class:`SimDeviceError`
    when they describe none (a damaged or foreign header)."""
    try:  # checked as a configuration's gpus.sim is: types, ranges, known keys
        return config_from_mapping({"gpus": {"backend": "sim", "sim": dict(params)}},
                                   source="the device's settings").gpus.sim
    except ConfigError as e:
        raise SimDeviceError(f"{e}: destroy the device (gridtao sim destroy) and start "
                             "again") from None


def shape_of(cfg: SimConfig, load: float) -> DailyShape | None:
    """The inference demand shape of a GPU at ``load``: the day's shape (``daily_shape``)
    scaled by it, a flat ``load``, or None (unshaped) at full load without a day's shape."""
    day = configured_shape(cfg)
    if day is not None:
        if load == 1.0:
            return day
        return dataclasses.replace(day, hourly=tuple(h * load for h in day.hourly))
    return None if load == 1.0 else DailyShape.flat(load)


class LocalGpu:
    """One GPU as this process sees it. ``lock`` guards ``faults`` and ``calls``;
    :meth:`hold` gives the physics, advanced by the caller, to one thread at a time."""

    __slots__ = ("calls", "faults", "lock", "name", "physics", "uuid")

    def __init__(self, physics: GpuPhysics, name: str, uuid_str: str) -> None:
        self.lock = threading.Lock()
        self.physics = physics
        self.name = name
        self.uuid = uuid_str
        self.faults: dict[str, Fault] = {}
        self.calls: dict[str, int] = {}

    def hold(self, *, limit_set: bool = False) -> AbstractContextManager[GpuPhysics]:
        """The physics, for one thread. ``limit_set``: the caller writes the limit."""
        return _Held(self.lock, self.physics)


class _Held:
    """A :class:`LocalGpu`'s physics under its lock. A plain class rather than a generator:
    every simulated driver call takes it once, and the benches run thousands of GPUs."""

    __slots__ = ("_lock", "_physics")

    def __init__(self, lock: threading.Lock, physics: GpuPhysics) -> None:
        self._lock = lock
        self._physics = physics

    def __enter__(self) -> GpuPhysics:
        self._lock.acquire()
        return self._physics

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class SharedGpu(LocalGpu):
    """A GPU of a machine-wide device: :meth:`hold` locks its record in the file, loads what
    other processes stored since this one last did, and stores the state back after use."""

    __slots__ = ("_seen", "_seen_workload", "_workload", "file", "index")

    def __init__(self, physics: GpuPhysics, name: str, uuid_str: str, file: DeviceFile,
                 index: int) -> None:
        super().__init__(physics, name, uuid_str)
        workload = physics.workload
        if not isinstance(workload, Resumable):
            raise TypeError("a shared GPU needs a resumable workload")
        self._workload: Resumable = workload
        self.file = file
        self.index = index
        self._seen = -1  # the record version this replica holds (none yet)
        self._seen_workload = -1

    @contextmanager
    def hold(self, *, limit_set: bool = False) -> Iterator[GpuPhysics]:
        physics, file, index, workload = self.physics, self.file, self.index, self._workload
        with self.lock:
            file.lock(index)
            try:
                try:
                    file.check_alive()
                except DeviceGone:
                    raise nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST) from None
                if file.version(index) != self._seen:
                    record = file.read(index)
                    fresh_workload = record.workload_version != self._seen_workload
                    DeviceFile.load(record, physics, workload if fresh_workload else None)
                    self._seen_workload = record.workload_version
                segment_end = physics.segment_end_s
                yield physics
                moved = physics.segment_end_s != segment_end
                self._seen = file.store(index, physics, workload=workload if moved else None,
                                        limit_set=limit_set)
                if moved:
                    self._seen_workload = file.workload_version(index)
            finally:
                file.unlock(index)


def load_configured_trace(cfg: SimConfig) -> Trace:
    """The trace a ``trace`` workload replays (``gpus.sim.trace_csv``); :class:`ConfigError`
    naming the key for a missing or unreadable one (the agent and ``check-config`` alike)."""
    key = "gpus.sim.trace_csv"
    if cfg.trace_csv is None:
        raise ConfigError(f"{key}: the trace workload needs a CSV file (t_s,watts[,...])")
    try:
        return load_trace(cfg.trace_csv)
    except OSError as e:
        raise ConfigError(f"{key}: {cfg.trace_csv}: cannot read: {e.strerror or e}") from None
    except TraceError as e:
        raise ConfigError(f"{key}: {cfg.trace_csv}: {e}") from None


def nvml_error(code: int) -> pynvml.NVMLError:
    """The ``pynvml.NVMLError`` subclass the real module raises for ``code``."""
    return pynvml.NVMLError(code)


@dataclass(frozen=True)
class Gpus:
    """What :func:`build_gpus` made: the GPUs, the machine-wide device they live in (None:
    in this process), and the offset from the clock's monotonic seconds to Unix seconds."""

    gpus: tuple[LocalGpu, ...]
    device: DeviceFile | None
    wall_offset_s: float


def build_gpus(cfg: SimConfig, clock: Clock, profile: GpuProfile,
               workloads: Sequence[SimWorkload], trace_data: Trace | None, *,
               device_path: str | Path | None, create: bool) -> Gpus:
    """``cfg.count`` GPUs of ``profile``, GPU ``i`` running ``workloads[i]``, each with its own
    generators (seeded by ``cfg.seed`` and its index, so every process draws the same; with
    ``cfg.training_in_step`` the training GPUs' workloads share one seed, so they step
    together); in the machine-wide device at ``device_path`` when given (created when missing
    if ``create``)."""
    t0 = clock.now()
    wall_offset_s = clock.wall() - t0
    gpus: list[LocalGpu] = []
    for i in range(cfg.count):
        rng = random.Random(f"gridtao-sim:{cfg.seed}:{i}")
        workload = make_workload(
            workloads[i].kind,
            tdp_w=profile.tdp_w,
            rng=random.Random(f"gridtao-sim-workload:{cfg.seed}:job"
                              if cfg.training_in_step and workloads[i].kind == "training"
                              else f"gridtao-sim-workload:{cfg.seed}:{i}"),
            index=i,
            trace_data=trace_data,
            shape=shape_of(cfg, workloads[i].load),
            start_wall_s=clock.wall(),
        )
        physics = GpuPhysics(
            t0_s=t0,
            limit_w=profile.default_w,
            workload=workload,
            cap_down_s=cfg.cap_down_ms / 1000.0,
            cap_up_s=cfg.cap_up_ms / 1000.0,
            refresh_s=cfg.refresh_ms / 1000.0,
            noise_w=cfg.noise_w,
            rng=rng,
            energy_offset_j=rng.uniform(1e4, 1e6),
            exponent=model_for(workloads[i].kind).exponent,
            queued=workloads[i].kind in QUEUED_WORKLOADS,
            busy_w=profile.max_w,
        )
        uuid_str = "GPU-" + str(uuid.UUID(int=rng.getrandbits(128), version=4))
        gpus.append(LocalGpu(physics, profile.name, uuid_str))
    if device_path is None:
        return Gpus(tuple(gpus), None, wall_offset_s)
    # Every machine's GPUs have UUIDs of their own: named devices (two simulated nodes on one
    # machine) must not share them, whatever their seed. The same name gives the same UUIDs
    # in every process that opens it.
    name = Path(device_path).name
    for i, g in enumerate(gpus):
        g.uuid = "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"gridtao-sim:{name}:{cfg.seed}:{i}"))
    device = DeviceFile.open(
        device_path, params=device_params(cfg), replicas=[g.physics for g in gpus],
        t0_s=t0, wall_offset_s=wall_offset_s, create=create)
    shared: tuple[LocalGpu, ...] = tuple(SharedGpu(g.physics, g.name, g.uuid, device, i)
                                         for i, g in enumerate(gpus))
    return Gpus(shared, device, device.info.wall_offset_s)
