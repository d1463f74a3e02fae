"""What the site reports: its retained status and the site ack delay's histogram counts.

Pure builders over the coordinator's state; the coordinator publishes the status and swaps it
in as the metrics collector's snapshot. Power in W, times in Unix seconds, delays in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gridtao.site.events import SiteEvent
from gridtao.site.meter import MeterFeedback
from gridtao.site.view import SiteView

__all__ = ["ACK_DELAY_BUCKETS_S", "DelayHistogram", "status_body"]

#: Upper bounds (s) of the site ack delay histogram's buckets.
ACK_DELAY_BUCKETS_S: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass
class DelayHistogram:
    """Cumulative bucket counts (ints written on the coordinator's loop, read by the scrape
    thread; a read may lag by one observation)."""

    counts: list[int] = field(default_factory=lambda: [0] * len(ACK_DELAY_BUCKETS_S))
    count: int = 0
    sum_s: float = 0.0

    def observe(self, delay_s: float) -> None:
        for k, bound in enumerate(ACK_DELAY_BUCKETS_S):
            if delay_s <= bound:
                self.counts[k] += 1
        self.sum_s += delay_s
        self.count += 1


def status_body(site: str, view: SiteView, meter: MeterFeedback, events: Iterable[SiteEvent],
                *, it_w: float, wall: float,
                award: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The retained ``{prefix}/site/status``: the nodes, the site's IT and metered power, the
    facility model's error, capacity per product (with ``award``, the award in force: its
    capacity per product as kind ``awarded``, and the room it lacks), and the events in force
    with their split."""
    body: dict[str, Any] = {"site": site, "online": True, "t": wall}
    body |= view.summary(wall)
    body["it_w"] = round(it_w, 1)
    metered = meter.metered_w(wall)
    body["meter_w"] = None if metered is None else round(metered, 1)
    error = meter.model_error(wall)
    body["meter_model_error"] = None if error is None else round(error, 4)
    capacity = view.capacity_w(wall)
    for product, w in (award or {}).get("capacity_w", {}).items():
        capacity[(product, "awarded")] = w
    body["capacity_w"] = [{"product": p, "kind": k, "w": round(w, 1)}
                          for (p, k), w in sorted(capacity.items())]
    body["award"] = award
    body["events"] = [{"id": e.id, "kind": e.kind, "at": e.at, "phase": e.phase,
                       "target_w": e.target_w, "until": e.until, "generation": e.generation,
                       "shortfall_w": round(e.shortfall_w, 1),
                       "nodes": {n: o.node_w for n, o in e.orders.items()}}
                      for e in events]
    return body
