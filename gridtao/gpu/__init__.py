"""The GPU boundary: the only package that imports ``pynvml``.

``open_backend(cfg)`` gives an :class:`~gridtao.gpu.nvml.NvmlBackend` over simulated GPUs
(``gpus.backend: sim``), the real driver (``nvml``), or, by default (``auto``), the real driver
when one is installed and the simulator otherwise, saying so loudly (the backend's ``simulated``
is then True, and the agent says so in its status, acks and metrics). The environment variable
``GRIDTAO_NO_NVML=1`` keeps ``auto`` off the real driver (test rigs and CI on GPU machines).
The heavier modules are imported on first use, so ``import gridtao.gpu.backend`` stays light.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from gridtao.clock import Clock, MonotonicClock
from gridtao.gpu.backend import (
    GpuBackend,
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

#: ``GRIDTAO_NO_NVML=1``: ``gpus.backend: auto`` never opens the real driver in this process.
NO_NVML_ENV = "GRIDTAO_NO_NVML"

if TYPE_CHECKING:
    from gridtao.config.agent import GpusConfig
    from gridtao.gpu.nvml import NvmlApi, NvmlBackend, check_nvml_distribution
    from gridtao.gpu.sim.nvml import SimNvml

__all__ = [
    "GpuBackend",
    "GpuDriverError",
    "GpuError",
    "GpuInfo",
    "GpuInvalidArgument",
    "GpuLost",
    "GpuNotSupported",
    "GpuPermissionDenied",
    "GpuTimeout",
    "GpuUnavailable",
    "NvmlApi",
    "NvmlBackend",
    "PowerLimits",
    "SimNvml",
    "check_nvml_distribution",
    "driver_present",
    "open_backend",
    "open_configured",
]

_LAZY = {
    "NvmlApi": "gridtao.gpu.nvml",
    "NvmlBackend": "gridtao.gpu.nvml",
    "check_nvml_distribution": "gridtao.gpu.nvml",
    "SimNvml": "gridtao.gpu.sim.nvml",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def driver_present() -> bool:
    """Whether ``gpus.backend: auto`` would find the NVIDIA driver's library (it is loaded,
    not initialised: no GPU is opened). ``GRIDTAO_NO_NVML=1`` says there is none."""
    if os.environ.get(NO_NVML_ENV) == "1":
        return False
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def open_backend(
    cfg: GpusConfig, *, clock: Clock | None = None, nvml_module: NvmlApi | None = None
) -> NvmlBackend:
    """Open the configured GPUs.

    ``sim``: ``SimNvml`` built from ``cfg.sim`` on ``clock`` (default: the real clock), on the
    machine-wide device ``cfg.sim.device`` (in the run directory) unless that is None.
    ``nvml``: ``nvml_module`` if given, else the real ``pynvml`` after checking it comes from
    nvidia-ml-py. Raises ``GpuUnavailable`` with one actionable line when no driver is present,
    other ``GpuError`` subclasses for driver failures, ``ConfigError`` for a bad sim trace,
    ``SimDeviceError`` for a simulated device that cannot be used (``DeviceMismatch``: one
    created with other settings).
    """
    from gridtao.gpu.nvml import NvmlBackend, check_nvml_distribution

    if cfg.backend == "sim" or (cfg.backend == "auto" and os.environ.get(NO_NVML_ENV) == "1"):
        return _simulated(cfg, clock)
    if nvml_module is None:
        check_nvml_distribution()
        import pynvml

        nvml_module = pynvml
    try:
        return NvmlBackend(nvml_module, dry_run=cfg.dry_run)
    except GpuUnavailable as e:
        if cfg.backend != "auto":
            raise
        log.debug("the driver could not be opened: %s", e)
        simulated = _simulated(cfg, clock)  # said once they are there: an error says itself
        log.warning("NO NVIDIA DRIVER on this machine: running on %d SIMULATED GPUs "
                    "(gpus.backend: auto); set gpus.backend: nvml to refuse to start without one",
                    cfg.sim.count)
        return simulated


def open_configured(cfg: GpusConfig, *, source: str, clock: Clock | None = None) -> NvmlBackend:
    """:func:`open_backend` for the ``gpus`` section of the configuration file ``source``: a
    bad key of it (a trace file the simulator cannot read) is a ``ConfigError`` naming that
    file first, as every configuration error does. ``SimDeviceError`` passes unchanged."""
    from gridtao.config.agent import ConfigError

    try:
        return open_backend(cfg, clock=clock)
    except ConfigError as e:
        if str(e).startswith(source):
            raise
        raise ConfigError(f"{source}: {e}") from None


def _simulated(cfg: GpusConfig, clock: Clock | None) -> NvmlBackend:
    from gridtao.config.paths import sim_device_path
    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.gpu.sim.nvml import SimNvml

    device = None if cfg.sim.device is None else sim_device_path(cfg.sim.device)
    sim = SimNvml.from_config(cfg.sim, clock if clock is not None else MonotonicClock(),
                              device_path=device)
    return NvmlBackend(sim, dry_run=cfg.dry_run)
