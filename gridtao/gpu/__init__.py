"""The GPU boundary: the only package that imports ``pynvml``.

``open_backend(cfg)`` gives an :class:`~gridtao.gpu.nvml.NvmlBackend` over simulated GPUs
(``gpus.backend: sim``) or the real driver (``nvml``). The heavier modules are imported on first
use, so ``import gridtao.gpu.backend`` (what the safety island needs) stays light.
"""

from __future__ import annotations

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
    "open_backend",
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


def open_backend(
    cfg: GpusConfig, *, clock: Clock | None = None, nvml_module: NvmlApi | None = None
) -> NvmlBackend:
    """Open the configured GPUs.

    ``sim``: ``SimNvml`` built from ``cfg.sim`` on ``clock`` (default: the real clock).
    ``nvml``: ``nvml_module`` if given, else the real ``pynvml`` after checking it comes from
    nvidia-ml-py. Raises ``GpuUnavailable`` with one actionable line when no driver is present,
    other ``GpuError`` subclasses for driver failures, ``ConfigError`` for a bad sim trace.
    """
    from gridtao.gpu.nvml import NvmlBackend, check_nvml_distribution

    if cfg.backend == "sim":
        from gridtao.gpu.sim.nvml import SimNvml

        sim = SimNvml.from_config(cfg.sim, clock if clock is not None else MonotonicClock())
        return NvmlBackend(sim, dry_run=cfg.dry_run)
    if nvml_module is None:
        check_nvml_distribution()
        import pynvml

        nvml_module = pynvml
    return NvmlBackend(nvml_module, dry_run=cfg.dry_run)
