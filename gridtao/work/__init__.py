"""The work the node does and what its CPUs draw, measured next to the GPUs' power.

* :class:`WorkScraper` (``sources``): inference servers' and training jobs' Prometheus endpoints
  (vLLM, SGLang, TGI, NVIDIA NIM, or custom counters), each scraped on a daemon thread of its
  own with a timeout; per source its counters, rates (per second), totals through server
  restarts, and health (:class:`SourceSnapshot`). ``exposition`` fetches and parses one.
* :class:`RaplReader` (``rapl``): CPU package energy (J, through wraps) and power (W) from the
  powercap sysfs tree, read-only, on a 1 s timer.
* :class:`WorkCollector`, :class:`CpuPowerCollector` (``collectors``): their Prometheus
  metrics, read at scrape time.
* :class:`NodeWork` (``node``): all of it built from the ``work:`` configuration for the agent.

Units: seconds, joules, watts; tokens and custom units as counted by the sources.
"""

from __future__ import annotations

from gridtao.work.collectors import CpuPowerCollector, WorkCollector
from gridtao.work.exposition import SourceDown, SourceGarbage, fetch, parse
from gridtao.work.node import NodeWork, spec_of
from gridtao.work.rapl import PackageReading, RaplReader
from gridtao.work.sources import Health, SourceSnapshot, SourceSpec, WorkScraper

__all__ = [
    "CpuPowerCollector",
    "Health",
    "NodeWork",
    "PackageReading",
    "RaplReader",
    "SourceDown",
    "SourceGarbage",
    "SourceSnapshot",
    "SourceSpec",
    "WorkCollector",
    "WorkScraper",
    "fetch",
    "parse",
    "spec_of",
]
