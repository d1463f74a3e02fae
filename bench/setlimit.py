"""A stand-in for ``nvidia-smi -i N -pl W`` on simulated GPUs (the sequential baseline's unit).

Like nvidia-smi it is a fresh process that loads the NVML library, initialises it, enumerates
the devices, sets one power limit and exits; here NVML is the machine's simulated device
(``--device NAME``), opened with the settings it was created with, as nvidia-smi needs no
configuration to find the GPUs.
"""

from __future__ import annotations

import argparse
import sys

from gridtao.clock import MonotonicClock
from gridtao.config.paths import sim_device_path
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="setlimit")
    p.add_argument("--device", default="default", help="the simulated device's name")
    p.add_argument("-i", "--index", type=int, required=True)
    p.add_argument("-pl", "--power-limit", type=float, required=True, help="watts")
    args = p.parse_args(argv)
    path = sim_device_path(args.device)
    sim = SimNvml.open_existing(path, MonotonicClock())
    if sim is None:
        print(f"No simulated device at {path}.", file=sys.stderr)
        return 2
    backend = NvmlBackend(sim)
    try:
        enforced = backend.set_limit_mw(args.index, int(args.power_limit * 1000))
    finally:
        backend.close()
    print(f"Power limit for GPU {args.index} was set to {enforced / 1000:.2f} W.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
