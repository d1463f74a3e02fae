"""CPU package power from RAPL, read-only, through the kernel's powercap sysfs tree.

Each top-level zone ``<root>/intel-rapl:<n>`` whose ``name`` is a package (``package-0``...;
the ``psys`` platform zone overlaps the packages and is left out; AMD's RAPL appears under the
same names) has ``energy_uj``, a counter in microjoules that wraps to 0 past
``max_energy_range_uj``. The reader reads every package on a daemon thread of its own every
``period_s`` (1 s): often enough that no wrap is missed (a counter's range is some 262 kJ, a
wrap every ~15 min at 300 W) whatever the scrape interval, and the power is over a fixed window.
It keeps per package the energy since the first read (J, summed deltas: survives wraps) and the
mean power over the last two reads (W). Nothing here is on a control loop.

Since Linux 5.10 (and the stable kernels it was backported to) ``energy_uj`` is readable by root
only: the reader then logs one warning and reports nothing. Thread-safe: the reader's thread
writes, any thread reads :meth:`RaplReader.readings`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from gridtao.clock import Clock, MonotonicClock

__all__ = ["PackageReading", "RaplReader"]

log = logging.getLogger("gridtao.work.rapl")

ZONE_PREFIX = "intel-rapl:"
DEFAULT_ROOT = "/sys/class/powercap"
JOIN_S = 2.0


@dataclass(frozen=True)
class PackageReading:
    """One package: ``energy_j`` since the reader's first read (J), ``power_w`` over its last
    two reads (W; None until there are two)."""

    package: str
    energy_j: float
    power_w: float | None


@dataclass
class _Package:
    label: str
    energy_path: Path
    range_uj: int | None  # None: unknown (a decrease is then skipped, not taken as a wrap)
    last_uj: int | None = None
    last_s: float | None = None
    energy_j: float = 0.0
    power_w: float | None = None


class RaplReader:
    """Reads the packages under ``root`` (default ``/sys/class/powercap``). :meth:`read` reads
    each once (the reader's thread, or a test); :meth:`start` runs it every ``period_s``."""

    def __init__(self, root: str | Path = DEFAULT_ROOT, *, period_s: float = 1.0,
                 clock: Clock | None = None) -> None:
        self.root = Path(root)
        self.period_s = period_s
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._lock = threading.Lock()
        self._packages: list[_Package] | None = None  # None: not looked for yet
        self._warned = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def readings(self) -> tuple[PackageReading, ...]:
        """Every package read so far (none where RAPL is missing or unreadable); any thread."""
        with self._lock:
            return tuple(PackageReading(p.label, p.energy_j, p.power_w)
                         for p in self._packages or () if p.last_uj is not None)

    def read(self) -> None:
        """Read every package's counter once (the first call finds the packages)."""
        if self._packages is None:
            self._packages = self._discover()
        for pkg in list(self._packages):
            try:
                uj = int(pkg.energy_path.read_text(encoding="ascii").strip())
                if uj < 0 or (pkg.range_uj is not None and uj > pkg.range_uj):
                    raise ValueError(f"{uj} is outside the counter's range")
            except PermissionError:
                self._unreadable(pkg)
                continue
            except (OSError, ValueError) as e:  # a transient read error: this read skipped
                log.debug("CPU power: %s: %s", pkg.energy_path, e)
                continue
            now = self._clock.now()
            with self._lock:
                self._update(pkg, uj, now)

    def start(self) -> None:
        """Read at once, then every ``period_s`` on a daemon thread, unless nothing can be read
        (no packages, or their counters are root-only: said once)."""
        self.read()
        if self._thread is not None or not self._packages:
            return
        self._thread = threading.Thread(target=self._run, name="cpu-power", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the reader's thread. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=JOIN_S)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.read()
            except Exception:  # a bug must not end the thread silently
                log.exception("CPU power: read failed")
            if not self._packages:
                return

    @staticmethod
    def _update(pkg: _Package, uj: int, now: float) -> None:
        last, last_s = pkg.last_uj, pkg.last_s
        pkg.last_uj, pkg.last_s = uj, now
        if last is None or last_s is None:
            return
        delta = uj - last
        if delta < 0:  # wrapped past max_energy_range_uj (or reset): count the part after
            if pkg.range_uj is None or last > pkg.range_uj:
                pkg.power_w = None
                return
            delta += pkg.range_uj
        joules = delta / 1e6
        pkg.energy_j += joules
        dt = now - last_s
        pkg.power_w = joules / dt if dt > 0 else None

    def _unreadable(self, pkg: _Package) -> None:
        with self._lock:
            if self._packages is not None:
                self._packages.remove(pkg)
        if not self._warned:
            self._warned = True
            log.warning("CPU power: %s is readable by root only (Linux 5.10 and later restrict "
                        "RAPL energy counters); no CPU power metrics. Run the agent as root, or "
                        "let its user read energy_uj (e.g. a udev rule or a systemd unit that "
                        "sets its mode at boot)", pkg.energy_path)

    def _discover(self) -> list[_Package]:
        found: list[_Package] = []
        try:
            zones = sorted((p for p in self.root.iterdir() if _is_package_zone(p.name)),
                           key=lambda p: int(p.name.removeprefix(ZONE_PREFIX)))
        except OSError:
            zones = []
        for zone in zones:
            name = _text(zone / "name")
            if name is None or not name.startswith("package"):
                continue  # psys and other platform zones overlap the packages
            range_text = _text(zone / "max_energy_range_uj")
            range_uj = int(range_text) if range_text and range_text.isdigit() else None
            label = name if all(p.label != name for p in found) else f"{name}:{zone.name}"
            found.append(_Package(label, zone / "energy_uj", range_uj or None))
        if not found:
            log.info("CPU power: no RAPL packages under %s; no CPU power metrics", self.root)
        return found


def _is_package_zone(name: str) -> bool:
    """``intel-rapl:<n>``: a top-level zone (subzones are ``intel-rapl:<n>:<m>``)."""
    rest = name.removeprefix(ZONE_PREFIX)
    return rest != name and rest.isdigit()


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None
