"""A simulated device of a process's own (the demo, a bench).

The simulated GPUs belong to the machine (``gpus.sim.device``): a process that used the default
device would find it in whatever state another process left it (or created with other
settings), would drive the GPUs an agent on the machine may be running on, and would leave its
own limits behind. :func:`private_device` names a device after its user and process instead,
destroys it at the end (the analogue of a driver reload), and first destroys the devices of
earlier users of the same prefix whose process is gone (killed before they could).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from gridtao.config.paths import sim_device_path
from gridtao.gpu.sim.shared import DeviceFile
from gridtao.transport.instance import pid_alive

__all__ = ["private_device"]


@contextmanager
def private_device(prefix: str) -> Iterator[str]:
    """The name of a fresh device ``<prefix>-<pid>`` (created by its first user)."""
    name = f"{prefix}-{os.getpid()}"
    path = sim_device_path(name)
    for other in path.parent.glob(f"sim-{prefix}-*.gpus"):
        pid = other.name[len(f"sim-{prefix}-"):-len(".gpus")]
        if pid.isdigit() and not pid_alive(int(pid)):
            DeviceFile.destroy(other)
    DeviceFile.destroy(path)  # a leftover of a reused pid: start clean
    try:
        yield name
    finally:
        DeviceFile.destroy(path)
