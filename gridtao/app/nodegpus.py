"""The node's GPUs as the agent serves them: opened, the ones that could not be opened left out
and reported, limits read.

:func:`open_node_gpus` opens the configured backend (or takes one given), and when a GPU could
not be opened (one fallen off the bus) serves the others, numbered 0..n-1 as the island needs,
remembering each one's driver index (the status, the metrics and ``work.sources`` name GPUs by
it) and renumbering ``tracker.priorities``. Power in mW.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gridtao.app.checks import served_priorities
from gridtao.clock import Clock
from gridtao.config.agent import Config, ConfigError
from gridtao.gpu import open_configured
from gridtao.gpu.backend import GpuBackend, PowerLimits
from gridtao.gpu.sim.shared import SimDeviceError
from gridtao.gpu.subset import ServedGpus

__all__ = ["UNAVAILABLE_CHECK_S", "NodeGpus", "machine_gpus", "open_node_gpus"]

log = logging.getLogger("gridtao.app.agent")

#: How often GPUs that could not be opened at start are checked again (s).
UNAVAILABLE_CHECK_S = 60.0


@dataclass(frozen=True)
class NodeGpus:
    """``backend``: the GPUs served (0..n-1); ``driver_backend``: every GPU the driver opened
    (checked again for the unavailable ones); ``physical``: each served GPU's driver index, None
    when all are served; ``unavailable``: driver index -> why it could not be opened;
    ``config``: the configuration with ``tracker.priorities`` renumbered as served;
    ``indices``, ``limits`` and ``found_mw``: each served GPU's index, limits and enforced
    limit at start."""

    backend: GpuBackend
    driver_backend: GpuBackend
    physical: tuple[int, ...] | None
    unavailable: dict[int, str]
    config: Config
    simulated: bool
    indices: list[int]
    limits: list[PowerLimits]
    found_mw: list[int]

    @property
    def driver_indices(self) -> tuple[int, ...]:
        """Each GPU served, by its driver index, in the order the agent serves them."""
        return tuple(self.indices) if self.physical is None else self.physical


def machine_gpus(config: Config, simulated: bool) -> bool:
    """Whether the GPUs opened for ``config`` are the machine's (the driver's, or the
    machine-wide simulated device's) rather than this process's own (``gpus.sim.device:
    null``)."""
    return not simulated or config.gpus.sim.device is not None


def open_node_gpus(config: Config, *, clock: Clock, backend: GpuBackend | None) -> NodeGpus:
    """Open the node's GPUs (``backend`` when given, else the configured one). ConfigError,
    naming the configuration file, for a simulated device made with other settings."""
    try:
        opened = backend if backend is not None else open_configured(
            config.gpus, source=config.source, clock=clock)
    except SimDeviceError as e:  # a key of this configuration against the machine's device
        raise ConfigError(f"{config.source}: {e}") from None
    unavailable = {i: type(e).__name__
                   for i, e in dict(getattr(opened, "unavailable", {})).items()}
    served, physical = opened, None
    if unavailable:
        physical = tuple(d.index for d in opened.devices())
        for index, kind in sorted(unavailable.items()):
            log.error("GPU %d could not be opened (%s): serving the other %d GPUs; it is "
                      "checked every %.0f s (restart the agent to serve it once it is back)",
                      index, kind, len(physical), UNAVAILABLE_CHECK_S)
        served = ServedGpus(opened, physical)
        # tracker.priorities name the driver's GPUs: renumber them as the agent serves them.
        config = served_priorities(config, physical)
    indices = [d.index for d in served.devices()]
    return NodeGpus(
        backend=served, driver_backend=opened, physical=physical, unavailable=unavailable,
        config=config,
        # Simulated GPUs (gpus.backend sim, or auto without a driver): every status, ack and
        # the metrics say so.
        simulated=bool(getattr(served, "simulated", False)),
        indices=indices, limits=[served.power_limits(i) for i in indices],
        # What the agent found: restored on stop, whatever the events did in between.
        found_mw=[served.enforced_limit_mw(i) for i in indices])
