"""Configuration of the GPUs (``gpus:``): which backend drives them and, for the simulated ones
(``gpus.sim``, gridtao/gpu/sim/), their count, profile, workloads, timings and faults
(re-exported by :mod:`gridtao.config.agent`; ranges live next to each field in ``metadata``).

Times in milliseconds (``*_ms``) or seconds (``*_s``), power in watts, hours for the daily shape.
The dataclasses are frozen, so a configuration is shared between threads as it is; each key is
checked on its own as it is read (gridtao/config/schema.py), the rules spanning several keys
(the trace file, the daily levels, one workload per GPU, the device's name, the faults' GPUs)
in gridtao/config/rules.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gridtao.config.schema import rng

__all__ = ["GpusConfig", "SimConfig", "SimFault", "SimWorkload"]


@dataclass(frozen=True)
class SimFault:
    """A fault the simulated GPUs show from the start (``SimNvml.inject_fault``): ``kind`` on GPU
    ``gpu`` (None: every GPU), ``delay_s`` per call for ``slow``, for ``calls`` affected calls
    (None: until cleared). For tests and drills of the agent's error paths."""

    kind: Literal["lost", "no_permission", "not_supported", "slow"]
    gpu: int | None = field(default=None, metadata=rng(0, 63))
    delay_s: float = field(default=0.5, metadata=rng(0, 3600))
    calls: int | None = field(default=None, metadata=rng(1, None))


@dataclass(frozen=True)
class SimWorkload:
    """One simulated GPU's workload (``gpus.sim.workloads``): ``kind`` as ``gpus.sim.workload``;
    ``load`` scales an inference GPU's demand above idle (1: as ``inference``; other kinds: 1)."""

    kind: Literal["training", "inference", "idle", "trace"]
    load: float = field(default=1.0, metadata=rng(0.01, 1))


@dataclass(frozen=True)
class SimConfig:
    """Simulated GPUs (see gridtao/gpu/sim.py). Times in milliseconds, power in watts."""

    count: int = field(default=8, metadata=rng(1, 64))
    profile: Literal["h100-sxm", "a100-sxm", "v100-sxm2"] = "h100-sxm"
    workload: Literal["training", "inference", "idle", "trace"] = "training"
    trace_csv: str | None = None
    cap_down_ms: float = field(default=20.0, metadata=rng(0.1, 60_000))
    cap_up_ms: float = field(default=250.0, metadata=rng(0.1, 60_000))
    refresh_ms: float = field(default=20.0, metadata=rng(1, 1000))
    noise_w: float = field(default=3.0, metadata=rng(0, 100))
    set_latency_ms: float = field(default=0.2, metadata=rng(0, 10_000))
    read_latency_ms: float = field(default=0.02, metadata=rng(0, 10_000))
    seed: int = 0
    faults: tuple[SimFault, ...] = ()
    # "default": inference follows a day's shape (low at night, peak in the afternoon, lower
    # at weekends; gridtao/gpu/sim/daily.py) on the machine's wall clock; "custom": the 24
    # hourly levels of `daily_levels` (0..1, hour 0 first); "none": flat. With a shape, the
    # weekend's factor and the local time's offset east of UTC (hours) are
    # `daily_weekend_factor` and `daily_tz_offset_h`.
    daily_shape: Literal["none", "default", "custom"] = "none"
    daily_levels: tuple[float, ...] = ()
    daily_weekend_factor: float = field(default=0.6, metadata=rng(0.0, 1.0))
    daily_tz_offset_h: float = field(default=0.0, metadata=rng(-12.0, 14.0))
    # The machine-wide device these GPUs belong to (gridtao/gpu/sim/shared.py): every process
    # naming it shares them, as processes on one server share its GPUs, and limits outlive the
    # process that set them. null: GPUs private to the process (tests in virtual time).
    device: str | None = "default"
    # One workload per GPU (a mixed node), overriding `workload`; empty: all run `workload`.
    workloads: tuple[SimWorkload, ...] = ()
    # The training GPUs run one synchronous data-parallel job: one step schedule for all of
    # them, so their communication dips land together (the all-reduce) and the node swings by
    # the sum of theirs. false: each GPU its own job, steps out of phase (the node's swing
    # averages out).
    training_in_step: bool = False


@dataclass(frozen=True)
class GpusConfig:
    # auto: the NVIDIA driver when installed, else the simulator (loudly, reported as simulated)
    backend: Literal["auto", "sim", "nvml"] = "auto"
    dry_run: bool = False
    # Refuse to start when no GPU accepts power-limit writes (else: start, say so, refuse cuts).
    require_actuation: bool = False
    sim: SimConfig = field(default_factory=SimConfig)
