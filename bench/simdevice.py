"""A simulated device of a bench's own.

The simulated GPUs belong to the machine (``gpus.sim.device``): a bench that used the default
device would find it in whatever state another process left it (or created with other
settings), and would leave its own limits behind. Each bench run takes a device named after the
bench and its process instead, and destroys it at the end (the analogue of a driver reload).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from gridtao.config.paths import sim_device_path
from gridtao.gpu.sim.shared import DeviceFile

__all__ = ["private_device"]


@contextmanager
def private_device(tag: str) -> Iterator[str]:
    """The name of a fresh device for bench ``tag`` (created by its first user)."""
    name = f"bench-{tag}-{os.getpid()}"
    DeviceFile.destroy(sim_device_path(name))  # a leftover of a reused pid: start clean
    try:
        yield name
    finally:
        DeviceFile.destroy(sim_device_path(name))
