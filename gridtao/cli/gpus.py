"""``gridtao gpus``: every GPU's power, limits and energy, like ``nvidia-smi`` (reads only)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from gridtao.config.agent import Config
from gridtao.gpu.backend import GpuBackend

EXIT_OK = 0


GPU_KEYS = (
    "index", "uuid", "name", "power_w", "avg_power_w", "limit_w", "default_w", "min_w", "max_w",
    "energy_j",
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "nvml", "sim"), help="override gpus.backend")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument(
        "--dry-run", action="store_true", help="open the backend in dry-run mode (reads only)"
    )


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


def run(args: argparse.Namespace, config: Config) -> int:
    from gridtao.gpu import open_backend

    gpus_cfg = config.gpus
    if args.backend is not None:
        gpus_cfg = dataclasses.replace(gpus_cfg, backend=args.backend)
    if args.dry_run:
        gpus_cfg = dataclasses.replace(gpus_cfg, dry_run=True)
    with open_backend(gpus_cfg) as backend:
        rows = gpu_rows(backend)
        simulated = backend.simulated
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_gpu_table(rows))
    if simulated:  # never to be mistaken for the machine's own GPUs (stdout stays the table)
        print("gridtao: these are simulated GPUs (gpus.backend sim, or auto without an NVIDIA "
              "driver)", file=sys.stderr)
    return EXIT_OK
