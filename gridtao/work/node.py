"""The agent's side of gridtao/work/: from ``work:`` to a running scraper and RAPL reader with
their collectors on the agent's registry.

Threads: one daemon thread per work source and one for the CPU power, started by
:meth:`NodeWork.start` and stopped by :meth:`NodeWork.close`; none of them touches the island,
tier 1 or the controller loop. Their timing is real (monotonic) time whatever clock the agent
runs on: the endpoints and the CPUs are real.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gridtao.clock import Clock
from gridtao.config.work import WorkConfig, WorkSource
from gridtao.work.collectors import CpuPowerCollector, WorkCollector
from gridtao.work.rapl import RaplReader
from gridtao.work.sources import SourceSpec, WorkScraper

__all__ = ["NodeWork", "spec_of"]


def spec_of(source: WorkSource) -> SourceSpec:
    """The scraper's view of a configured work source."""
    return SourceSpec(name=source.name, url=source.url, kind=source.kind, gpus=source.gpus,
                      period_s=source.period_s, timeout_s=source.timeout_s,
                      counters=source.counters)


class NodeWork:
    """The work sources (none: no scraper) and the CPU power reader (``cpu_power.enabled``),
    their collectors registered on ``registry`` at construction; nothing runs before
    :meth:`start`."""

    def __init__(self, config: WorkConfig, *, registry: CollectorRegistry,
                 clock: Clock | None = None) -> None:
        self.scraper: WorkScraper | None = None
        self.rapl: RaplReader | None = None
        if config.sources:
            self.scraper = WorkScraper([spec_of(s) for s in config.sources], clock=clock)
            WorkCollector(self.scraper.snapshots, self.scraper.now, registry=registry)
        if config.cpu_power.enabled:
            self.rapl = RaplReader(config.cpu_power.root, clock=clock)
            CpuPowerCollector(self.rapl.readings, registry=registry)

    def start(self) -> None:
        """Start the scrape threads and the CPU power reader (its first read happens here)."""
        if self.scraper is not None:
            self.scraper.start()
        if self.rapl is not None:
            self.rapl.start()

    def close(self) -> None:
        """Stop every thread started. Idempotent."""
        if self.scraper is not None:
            self.scraper.close()
        if self.rapl is not None:
            self.rapl.close()
