"""The site's Prometheus metrics, read at scrape time from the coordinator's last snapshot.

Gauges come from :attr:`SiteCoordinator.snapshot` (a dict the coordinator swaps whole once a
status period, so the scrape thread never sees one half-built); the counters from its plain
``counts`` ints and ack delay histogram counts. Power in W, delays in s.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from gridtao.site.coordinator import SiteCoordinator
from gridtao.site.meterauth import REASON_LABELS as METER_REASONS
from gridtao.site.status import ACK_DELAY_BUCKETS_S

__all__ = ["SiteCollector", "register"]

_ANSWERS: Final = ("accepted", "rejected", "missing")


class SiteCollector(Collector):
    """Site series: nodes online, IT and metered power, the target of the deepest event in
    force, capacity per product, events, node answers, refused meter readings and the site
    ack's delay."""

    def __init__(self, coordinator: SiteCoordinator) -> None:
        self._c = coordinator

    def collect(self) -> Iterator[Metric]:
        snap = self._c.snapshot
        nodes = GaugeMetricFamily("gridtao_site_nodes", "Nodes the site knows, by state.",
                                  labels=["state"])
        nodes.add_metric(["online"], float(snap.get("nodes_online", 0)))
        nodes.add_metric(["offline"], float(snap.get("nodes_offline", 0)))
        # online but unable to hear an event's orders (counted in online too)
        nodes.add_metric(["deaf"], float(snap.get("nodes_deaf", 0)))
        yield nodes
        yield GaugeMetricFamily("gridtao_site_it_power_watts",
                                "Site IT power: the nodes' GPU draw as they report it, W.",
                                value=float(snap.get("it_w") or 0.0))
        meter = snap.get("meter_w")
        yield GaugeMetricFamily("gridtao_site_meter_power_watts",
                                "The site meter's last fresh reading, W (NaN: none).",
                                value=math.nan if meter is None else float(meter))
        target = GaugeMetricFamily("gridtao_site_target_watts",
                                   "The lowest target of the site events in force at each "
                                   "settlement point (at: it or meter), W (NaN: none).",
                                   labels=["at"])
        for at in ("it", "meter"):
            targets = [e["target_w"] for e in snap.get("events", ())
                       if e.get("at") == at and e.get("target_w") is not None]
            target.add_metric([at], min(targets) if targets else math.nan)
        yield target
        capacity = GaugeMetricFamily("gridtao_site_capacity_watts",
                                     "Capacity per product over online nodes: enrolled (in "
                                     "force), armed, offered (tier 3, this market time unit), "
                                     "awarded (the site's award in force), W.",
                                     labels=["product", "kind"])
        for entry in snap.get("capacity_w", ()):
            capacity.add_metric([entry["product"], entry["kind"]], float(entry["w"]))
        yield capacity
        yield GaugeMetricFamily("gridtao_site_events_active", "Site and fleet events in force.",
                                value=float(len(snap.get("events", ()))))
        error = snap.get("meter_model_error")
        yield GaugeMetricFamily("gridtao_site_meter_model_error_ratio",
                                "(metered - modelled) / modelled site power, from fresh meter "
                                "readings (NaN: none).",
                                value=math.nan if error is None else float(error))
        acks = CounterMetricFamily("gridtao_site_acks", "Node answers gathered into site acks.",
                                   labels=["result"])
        for answer in _ANSWERS:
            acks.add_metric([answer], float(self._c.counts.get("node_answers_" + answer, 0)))
        yield acks
        yield CounterMetricFamily("gridtao_site_award_resplits",
                                  "Times the capacity awarded for the current market time "
                                  "unit was split again over the nodes by their live room "
                                  "(a node's share moved).",
                                  value=float(self._c.counts.get("site_award_resplits", 0)))
        yield CounterMetricFamily("gridtao_site_node_award_refusals",
                                  "Awards the site sent that a node refused (its ack's reason "
                                  "is in the site's log).",
                                  value=float(self._c.counts.get("node_award_refused", 0)))
        refused = CounterMetricFamily("gridtao_site_meter_rejected",
                                      "Site meter readings refused, by reason (malformed, or "
                                      "the signature checks' reasons).", labels=["reason"])
        for reason in METER_REASONS:
            refused.add_metric([reason], float(self._c.counts.get(f"meter_rejected:{reason}",
                                                                  0)))
        yield refused
        yield self._delays()

    def _delays(self) -> HistogramMetricFamily:
        h = self._c.ack_delays
        buckets = [(str(b), float(n)) for b, n in zip(ACK_DELAY_BUCKETS_S, h.counts,
                                                      strict=True)]
        buckets.append(("+Inf", float(h.count)))
        return HistogramMetricFamily("gridtao_site_ack_delay_seconds",
                                     "From an event's (re)split to its site ack, s.",
                                     buckets=buckets, sum_value=h.sum_s)


def register(coordinator: SiteCoordinator, registry: CollectorRegistry) -> SiteCollector:
    collector = SiteCollector(coordinator)
    registry.register(collector)
    return collector
