"""The safety island: a small, deterministic path from a grid trigger to GPU power caps.

It depends only on the GPU boundary types (``gridtao.gpu.backend``) and the clock
(``gridtao.clock``), never on the controller, the transport or telemetry, so it keeps working
(and keeps GPUs within ``[min, default]``) whatever the rest of the agent does.
"""

from gridtao.safety.envelope import Envelope
from gridtao.safety.island import Activation, IslandView, SafeMode, SafetyIsland
from gridtao.safety.watchdog import Watchdog
from gridtao.safety.writer import ParallelWriter, WriteOutcome

__all__ = [
    "Activation",
    "Envelope",
    "IslandView",
    "ParallelWriter",
    "SafeMode",
    "SafetyIsland",
    "Watchdog",
    "WriteOutcome",
]
