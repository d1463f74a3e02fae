"""A stand-in for ``nvidia-smi -i N -pl W`` on simulated GPUs (the sequential baseline's unit).

Like nvidia-smi it is a fresh process that loads the NVML library, initialises it, enumerates
the devices, sets one power limit and exits; here NVML is the simulator.
"""

from __future__ import annotations

import argparse
import sys

from gridtao.clock import MonotonicClock
from gridtao.config.agent import SimConfig
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="setlimit")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("-i", "--index", type=int, required=True)
    p.add_argument("-pl", "--power-limit", type=float, required=True, help="watts")
    args = p.parse_args(argv)
    backend = NvmlBackend(SimNvml.from_config(SimConfig(count=args.gpus), MonotonicClock()))
    try:
        enforced = backend.set_limit_mw(args.index, int(args.power_limit * 1000))
    finally:
        backend.close()
    print(f"Power limit for GPU {args.index} was set to {enforced / 1000:.2f} W.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
