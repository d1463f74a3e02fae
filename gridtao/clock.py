"""Injectable clocks, so control loops and the simulator run in virtual time under test.

``now()`` is monotonic seconds (never jumps); ``wall()`` is Unix seconds for wire messages.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol


def boot_id() -> str:
    """This boot's id (Linux ``/proc/sys/kernel/random/boot_id``): monotonic time, and every
    power limit set by software, start again with it. Empty where the kernel does not say."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic time, seconds."""
        ...

    def wall(self) -> float:
        """Unix time, seconds (for timestamps that leave the process)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` (virtual clocks advance instead)."""
        ...


class MonotonicClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """A clock that moves only when told to. ``sleep`` advances it. Thread-safe."""

    def __init__(self, start: float = 0.0, *, wall_offset: float = 1_763_900_000.0) -> None:
        self._t = start
        self._wall_offset = wall_offset
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def wall(self) -> float:
        with self._lock:
            return self._t + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        with self._lock:
            self._t += seconds

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)
