"""The safety island: a small, deterministic path from a grid trigger to GPU power caps.

It imports nothing else of gridtao: it declares the clock and GPU calls it needs as Protocols
(:mod:`.ports`), which the agent's clock and GPU backends satisfy structurally. It never depends
on the controller, the transport or telemetry, so it keeps working (and keeps GPUs within
``[min, default]``) whatever the rest of the agent does. An import-linter contract keeps it so.
"""

from .envelope import Envelope
from .island import Activation, IslandView, OutsideChange, SafeMode, SafetyIsland
from .watchdog import Watchdog
from .writer import ParallelWriter, WriteOutcome

__all__ = [
    "Activation",
    "Envelope",
    "IslandView",
    "OutsideChange",
    "ParallelWriter",
    "SafeMode",
    "SafetyIsland",
    "Watchdog",
    "WriteOutcome",
]
