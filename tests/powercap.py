"""Test-side powercap (RAPL) trees, laid out as the kernel lays out /sys/class/powercap."""

from __future__ import annotations

from pathlib import Path

RANGE_UJ = 262_143_328_850  # a real package's max_energy_range_uj


def zone(root: Path, zone_name: str, name: str, energy_uj: int,
         range_uj: int | None = RANGE_UJ) -> Path:
    """A powercap zone directory as the kernel lays it out."""
    path = root / zone_name
    path.mkdir(parents=True)
    (path / "name").write_text(f"{name}\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    if range_uj is not None:
        (path / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return path


def set_energy(path: Path, energy_uj: int) -> None:
    (path / "energy_uj").write_text(f"{energy_uj}\n")
