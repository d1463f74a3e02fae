"""What an agent exports to Prometheus besides its own :class:`~gridtao.telemetry.metrics.Metrics`:
collectors that read the agent's parts when Prometheus scrapes (never copied on a timer).

Every reader here is cheap and thread-safe: scrapes run on the metrics server's thread while the
lane, tier 1 and the controller loop write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import PlatformCollector, ProcessCollector

from gridtao.telemetry.collectors import (
    CapacityCollector,
    EnergyCollector,
    EventEnergyCollector,
    FeedCollector,
    LinkCollector,
    PlanCollector,
    RecordsCollector,
    SuppressedAcksCollector,
    TrackerCollector,
)
from gridtao.telemetry.metrics import StatsCollector

if TYPE_CHECKING:
    from gridtao.app.agent import Agent

__all__ = ["register_collectors"]


def register_collectors(agent: Agent) -> None:
    """Register every scrape-time collector of ``agent`` on ``agent.registry`` (once, when
    the agent is built)."""
    registry = agent.registry
    # The standard process_* and python_* series, so the agent's own CPU and memory can be
    # watched next to the GPUs (bench/overhead.py measures the idle cost).
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    lane, status = agent.lane, agent.status_link
    # The counters the links and the audit trail keep, and whether each link is up.
    StatsCollector({"island": lane.link.stats, "dispatch": lane.dispatch_link.stats,
                    "frequency": lane.frequency_link.stats, "status": status.stats},
                   audit=agent.ledger.audit, registry=registry)
    LinkCollector(lambda: {**agent.trigger_links(), "status": status.is_connected},
                  registry=registry)
    SuppressedAcksCollector(lambda: agent.intake.rejections.suppressed_acks, registry=registry)
    CapacityCollector(agent.capacity, registry=registry)
    FeedCollector(agent.frequency_feed, registry=registry)
    TrackerCollector(agent.tier2.snapshot, registry=registry)
    PlanCollector(agent.planning.reading, registry=registry)
    EventEnergyCollector(agent.energy.not_drawn_j, registry=registry)
    EnergyCollector(lambda: agent.read_back.energy_mj, agent.driver_indices(),
                    registry=registry)
    RecordsCollector(lambda: agent.ledger.health, registry=registry)
