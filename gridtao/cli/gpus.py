"""``gridtao gpus``: every GPU's power, limits and energy, like ``nvidia-smi`` (reads only).

The simulated GPUs are the machine's (``gpus.sim.device``), so from another shell this shows
what a running agent does to them. ``--sim-device NAME`` shows the simulated device ``NAME``
with the settings it was made with (never creating one: ``gridtao demo`` runs on a device of its
own). ``--watch S`` prints the table again every S seconds (like ``nvidia-smi -l``) until
interrupted or ``--count N`` tables were printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridtao.cli.argtypes import number, whole
from gridtao.config.agent import Config, ConfigError, GpusConfig
from gridtao.gpu.backend import GpuBackend

if TYPE_CHECKING:
    from gridtao.gpu.nvml import NvmlBackend

EXIT_OK = 0


GPU_KEYS = (
    "index", "uuid", "name", "power_w", "avg_power_w", "limit_w", "default_w", "min_w", "max_w",
    "energy_j", "simulated",
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "nvml", "sim"), help="override gpus.backend")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument(
        "--dry-run", action="store_true", help="open the backend in dry-run mode (reads only)"
    )
    p.add_argument("--watch", type=number(0.05, 3600, "s"), metavar="S", default=None,
                   help="print the table again every S seconds until interrupted")
    p.add_argument("--count", type=whole(1), metavar="N", default=None,
                   help="with --watch: stop after N tables")
    p.add_argument("--sim-device", metavar="NAME", default=None,
                   help="show the existing simulated device NAME (as made; e.g. a running "
                        "demo's) instead of the configured GPUs")


def gpu_rows(backend: GpuBackend) -> list[dict[str, Any]]:
    """One dict per GPU with the keys of :data:`GPU_KEYS`; power in W, energy in J."""
    rows = []
    for info in backend.devices():
        i = info.index
        lim = backend.power_limits(i)
        rows.append({
            "index": i,
            "uuid": info.uuid,
            "name": info.name,
            "power_w": backend.instant_power_mw(i) / 1000,
            "avg_power_w": backend.average_power_mw(i) / 1000,
            "limit_w": backend.enforced_limit_mw(i) / 1000,
            "default_w": lim.default_mw / 1000,
            "min_w": lim.min_mw / 1000,
            "max_w": lim.max_mw / 1000,
            "energy_j": backend.energy_mj(i) / 1000,
            # In the JSON too, not only on stderr: never mistaken for the machine's own GPUs.
            "simulated": bool(getattr(backend, "simulated", False)),
        })
    return rows


def format_gpu_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ("GPU", "name", "uuid", "power W", "1s avg W", "limit W", "default W", "min W",
              "max W", "energy J")
    lines = [
        (
            str(r["index"]), r["name"], r["uuid"][:12], f"{r['power_w']:.1f}",
            f"{r['avg_power_w']:.1f}", f"{r['limit_w']:.1f}", f"{r['default_w']:.1f}",
            f"{r['min_w']:.1f}", f"{r['max_w']:.1f}", f"{r['energy_j']:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *lines, strict=True)]
    left = {1, 2}
    out = []
    for cells in (header, *lines):
        padded = (
            c.ljust(w) if k in left else c.rjust(w)
            for k, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        out.append("  ".join(padded).rstrip())
    return "\n".join(out)


def _existing_device(name: str, *, dry_run: bool) -> NvmlBackend | None:
    """The simulated device ``name`` as it was made, or None when there is none. ConfigError
    for a name that cannot name a device."""
    from gridtao.clock import MonotonicClock
    from gridtao.config.agent import ConfigError, sim_device_problem
    from gridtao.config.paths import sim_device_path
    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.gpu.sim.nvml import SimNvml

    problem = sim_device_problem(name)
    if problem is not None:
        raise ConfigError(f"--sim-device: {problem}")
    sim = SimNvml.open_existing(sim_device_path(name), MonotonicClock())
    return None if sim is None else NvmlBackend(sim, dry_run=dry_run)


def _device_to_be_made(gpus: GpusConfig) -> Path | None:
    """The machine-wide simulated device's file if opening ``gpus`` would make it, else None."""
    from gridtao.config.paths import sim_device_path

    if gpus.sim.device is None:
        return None
    path = sim_device_path(gpus.sim.device)
    return None if path.exists() else path


def run(args: argparse.Namespace, config: Config) -> int:
    from gridtao.gpu import open_configured
    from gridtao.gpu.sim.shared import SimDeviceError

    if args.count is not None and args.watch is None:
        raise ConfigError("--count: only with --watch (how many tables to print)")
    gpus_cfg = config.gpus
    if args.backend is not None:
        gpus_cfg = dataclasses.replace(gpus_cfg, backend=args.backend)
    if args.dry_run:
        gpus_cfg = dataclasses.replace(gpus_cfg, dry_run=True)
    if args.sim_device is not None:
        backend = _existing_device(args.sim_device, dry_run=args.dry_run)
        if backend is None:
            print(f"gridtao: error: no simulated device {args.sim_device!r} on this machine "
                  "(`gridtao sim --device NAME status` shows one)", file=sys.stderr)
            return 2  # as for GPUs that cannot be opened
        made = None
    else:
        made = _device_to_be_made(gpus_cfg)
        try:
            backend = open_configured(gpus_cfg, source=config.source)
        except SimDeviceError as e:  # a key of this configuration against the machine's device
            raise ConfigError(f"{config.source}: {e}") from None
    with backend:
        if backend.simulated:  # never to be mistaken for the machine's own GPUs
            print("gridtao: these are simulated GPUs (gpus.backend sim, or auto without an "
                  "NVIDIA driver)", file=sys.stderr)
            if made is not None:  # fresh GPUs, not some agent's: say so
                print(f"gridtao: there was no simulated device {gpus_cfg.sim.device!r} at "
                      f"{made}: it was made now, at rest (an agent whose RUNTIME_DIRECTORY "
                      "differs keeps its GPUs elsewhere; `gridtao sim status` there shows them)",
                      file=sys.stderr)
        printed = 0
        try:
            while True:
                rows = gpu_rows(backend)
                if args.json:
                    print(json.dumps(rows, indent=2), flush=True)
                else:
                    if args.watch is not None:
                        print(time.strftime("%Y-%m-%d %H:%M:%S"))
                    print(format_gpu_table(rows), flush=True)
                printed += 1
                if args.watch is None or (args.count is not None and printed >= args.count):
                    return EXIT_OK
                print(flush=True)
                time.sleep(args.watch)
        except KeyboardInterrupt:
            return EXIT_OK
