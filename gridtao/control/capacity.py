"""What the node can deliver downwards right now, against what it is enrolled to deliver.

A reserve bid must be deliverable at every instant of its hour: the node's natural draw minus
its floor (every GPU at its minimum or priority floor) has to cover the capacity it offers.
:func:`node_capacity` computes that from tier 1's readings, the island's floors and the facility
model; :class:`CapacityWatch` says so in the log when the node falls short of its enrolment and
when it recovers (once per change, not every period). Pure arithmetic and one logger; the
controller loop calls it once a status period, the metrics collector at scrape time.

Power in W. ``deliverable_w`` and ``enrolled_w`` are at the settlement point
(``facility.settle_at``): at the meter an IT cut counts ``1 + losses_fraction`` times in the first
seconds (cooling follows later and is not counted on), at ``it`` once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gridtao.config.grid import FacilityConfig, ProductConfig
from gridtao.config.kinds import KINDS

__all__ = ["Capacity", "CapacityWatch", "enrolled_w", "node_capacity"]

log = logging.getLogger("gridtao.capacity")

#: Recovery is announced only once deliverable capacity is this much above the enrolment, so a
#: node hovering at the line does not log every period.
RECOVERY_MARGIN = 1.05


@dataclass(frozen=True)
class Capacity:
    """The node's down-capacity now (W). ``draw_w``: IT draw; ``floor_w``: the lowest IT power
    the island can hold it at; ``deliverable_it_w = max(0, draw - floor)``; ``deliverable_w``
    the same at the settlement point; ``enrolled_w``: the summed capacity of the enrolled
    frequency products, which may all activate at once (reserves add up)."""

    draw_w: float
    floor_w: float
    deliverable_it_w: float
    deliverable_w: float
    enrolled_w: float
    settle_at: str

    @property
    def short_w(self) -> float:
        """How much of the enrolment the node cannot deliver now (>= 0)."""
        return max(0.0, self.enrolled_w - self.deliverable_w)

    def fields(self) -> dict[str, float | str]:
        """For the retained status and the audit trail."""
        return {"draw_w": round(self.draw_w, 1), "floor_w": round(self.floor_w, 1),
                "deliverable_it_w": round(self.deliverable_it_w, 1),
                "deliverable_w": round(self.deliverable_w, 1),
                "enrolled_w": round(self.enrolled_w, 1), "short_w": round(self.short_w, 1),
                "settle_at": self.settle_at}


def enrolled_w(products: Iterable[ProductConfig],
               in_force_w: Mapping[str, float] | None = None) -> float:
    """Summed capacity of the enrolled frequency products (demand response is scheduled, and
    checked against the draw when an event is accepted), W at the settlement point.
    ``in_force_w``: product name -> the capacity in force now (tier 3's awards), where it
    differs from the configured one."""
    in_force = in_force_w or {}
    return sum(in_force.get(p.name or p.kind, p.capacity_w) for p in products
               if KINDS[p.kind].frequency)


def node_capacity(draw_mw: Sequence[float], floor_mw: Sequence[float], *,
                  facility: FacilityConfig, enrolled: float,
                  node_floor_mw: float = 0.0) -> Capacity:
    """Capacity from per-GPU draw and floors (mW, one entry per GPU); ``node_floor_mw``: the
    node floor dispatched cuts stop at (``limits.min_node_fraction`` of the summed defaults),
    so what is reported is what every activation can count on."""
    draw = sum(draw_mw) / 1000.0
    # A GPU drawing under its floor cannot be cut at all: it adds its draw, not its floor.
    gpu_floor = sum(min(f, d) for d, f in zip(draw_mw, floor_mw, strict=True)) / 1000.0
    floor = max(gpu_floor, min(node_floor_mw / 1000.0, draw))
    it = max(0.0, draw - floor)
    at_meter = facility.settle_at == "meter"
    deliverable = it * (1.0 + facility.losses_fraction) if at_meter else it
    return Capacity(draw, floor, it, deliverable, enrolled, facility.settle_at)


class CapacityWatch:
    """Logs when the node becomes unable to deliver its enrolment, and when it can again.
    Call :meth:`update` from one thread (the controller loop)."""

    def __init__(self) -> None:
        self._short: bool | None = None  # None: nothing seen yet (the first update says)
        self._after_event = False  # the first update after an event: GPUs still climbing

    @property
    def short(self) -> bool:
        return bool(self._short)

    def update(self, cap: Capacity, *, event_active: bool = False) -> None:
        """Judge ``cap``. ``event_active``: the island holds an event, so the draw is the
        event's doing (a cut node has little left to cut by design): nothing is judged or
        said until it ends, nor in the update right after, while the GPUs climb back from
        their caps."""
        if event_active or self._after_event:
            self._after_event = event_active
            return
        if cap.enrolled_w <= 0:
            self._short = False
            return
        if not self._short and cap.short_w > 0:
            self._short = True
            log.warning(
                "node can deliver %.0f W but is enrolled for %.0f W (%s; IT draw %.0f W, floor "
                "%.0f W): an activation now would be short by %.0f W",
                cap.deliverable_w, cap.enrolled_w, f"at the {cap.settle_at}", cap.draw_w,
                cap.floor_w, cap.short_w)
        elif self._short is None or (
                self._short and cap.deliverable_w >= cap.enrolled_w * RECOVERY_MARGIN):
            if self._short:
                log.info("node can deliver its enrolment again: %.0f W for %.0f W enrolled",
                         cap.deliverable_w, cap.enrolled_w)
            self._short = False
