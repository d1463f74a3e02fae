"""Simulated GPU models' static facts (:class:`GpuProfile`), by key (:data:`PROFILES`).

What a simulated GPU is, apart from its state (``physics.py``): its name, its power-limit range
and default (W: ``devices.py`` builds each GPU at its default limit and sizes its workload by
it, the NVML facade ``nvml.py`` enforces the range) and which reading
``nvmlDeviceGetPowerUsage`` gives. Immutable values: any thread.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "GpuProfile"]


@dataclass(frozen=True)
class GpuProfile:
    """Static facts of a simulated GPU model. ``usage_is_average``: whether
    ``nvmlDeviceGetPowerUsage`` reports the 1 s average (Ampere except GA100, and newer) rather
    than the instant sample (GA100, Volta)."""

    key: str
    name: str
    min_w: float
    max_w: float
    default_w: float
    usage_is_average: bool

    @property
    def tdp_w(self) -> float:
        return self.default_w


PROFILES: dict[str, GpuProfile] = {
    "h100-sxm": GpuProfile("h100-sxm", "NVIDIA H100 80GB HBM3", 200.0, 700.0, 700.0, True),
    "a100-sxm": GpuProfile("a100-sxm", "NVIDIA A100-SXM4-80GB", 100.0, 400.0, 400.0, False),
    "v100-sxm2": GpuProfile("v100-sxm2", "Tesla V100-SXM2-32GB", 100.0, 300.0, 300.0, False),
}
