"""What the safety island needs from the rest of the agent, declared here as Protocols.

The island imports nothing else of gridtao: the agent's clock (``gridtao.clock``) and GPU
backends (``gridtao.gpu``) satisfy these structurally, and a test may hand in anything that
does. Power is in milliwatts, times in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Clock", "Device", "GpuPort", "Limits"]


class Clock(Protocol):
    """Monotonic time for control (``now``) and Unix time for the wire (``wall``)."""

    def now(self) -> float: ...

    def wall(self) -> float: ...


class Device(Protocol):
    """One enumerated GPU; the island needs only its index."""

    @property
    def index(self) -> int: ...


class Limits(Protocol):
    """Static power-limit facts of one GPU (mW): ``min_mw <= default_mw <= max_mw``."""

    @property
    def min_mw(self) -> int: ...

    @property
    def max_mw(self) -> int: ...

    @property
    def default_mw(self) -> int: ...


class GpuPort(Protocol):
    """The reads and the one write the island makes.

    Any exception a call raises is a failure of that GPU only: the island records it against
    the GPU and goes on with the others. A backend's own errors carry the GPU's ``index``
    attribute; an exception without one is taken for a backend bug and logged with its
    traceback. Calls for different indices may come from different
    threads at once; calls for one index never overlap (the island holds a per-GPU lock).
    """

    def devices(self) -> Sequence[Device]: ...

    def instant_power_mw(self, index: int) -> int: ...

    def enforced_limit_mw(self, index: int) -> int: ...

    def power_limits(self, index: int) -> Limits: ...

    def command_limit_mw(self, index: int, limit_mw: int) -> bool:
        """Command ``limit_mw`` (the driver call alone, no read-back): True if the call was made,
        False if it was skipped (already enforced, or dry run)."""
        ...
