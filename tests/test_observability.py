"""What an operator alerts on: tier 2's activations in the audit trail, products, reductions and
broker links in Prometheus, read when scraped."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

from prometheus_client import CollectorRegistry

from gridtao.app.periodic import ControllerLoop, ControllerParts
from gridtao.clock import VirtualClock
from gridtao.control.capacity import CapacityWatch
from gridtao.telemetry.collectors import LinkCollector, TrackerCollector


class _Trail:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, object]]] = []

    def record(self, kind: str, fields: Mapping[str, object]) -> None:
        self.records.append((kind, dict(fields)))


def _loop(trail: _Trail, *, tracker_period_s: float = 1.0, **fakes: Any) -> ControllerLoop:
    """A loop whose parts are ``fakes`` where given, else unused (None)."""
    unused = cast(Any, None)  # record_transitions touches only the ledger
    parts = ControllerParts(**{
        "node_id": "n", "status_topic": "s", "tracker_topic": "t", "gpu_indices": (),
        "gpu_limits": (), "clock": VirtualClock(), "backend": unused, "tier1": unused,
        "island": unused, "tier2": unused, "status_link": unused, "ledger": trail,
        "capacity": unused, "capacity_watch": CapacityWatch(), "simulated": True,
        "frequency_feed": unused, "instance": {}, "read_back": unused,
        "read_back_period_s": 0.5, **fakes})
    return ControllerLoop(parts, status_period_s=1.0, tracker_period_s=tracker_period_s)


def _snap(state: str, required_w: float, dr: list[dict[str, object]]) -> dict[str, object]:
    return {"products": [{"name": "fcr-d", "kind": "fcr-d-up", "state": state,
                          "required_w": required_w}], "dr": dr, "reduction_w": required_w}


def test_tier2_activations_start_and_end_in_the_audit_trail() -> None:
    trail = _Trail()
    loop = _loop(trail)
    loop.record_transitions(_snap("idle", 0.0, []))
    assert trail.records == []  # the first look is the baseline, not a change
    loop.record_transitions(_snap("active", 750.0, [{"id": "d1", "state": "ramping"}]))
    loop.record_transitions(_snap("active", 700.0, [{"id": "d1", "state": "ramping"}]))
    loop.record_transitions(_snap("idle", 0.0, []))
    got = [(k, f.get("product", f.get("event")), f["from"], f["to"]) for k, f in trail.records]
    assert got == [("product_state", "fcr-d", "idle", "active"),
                   ("dr_state", "d1", None, "ramping"),
                   ("product_state", "fcr-d", "active", "idle"),
                   ("dr_state", "d1", "ramping", "ended")]
    assert trail.records[0][1]["required_w"] == 750.0


def test_products_reductions_and_links_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    snap: dict[str, Any] = {**_snap("active", 750.0, []), "reference_it_w": 4000.0,
                            "it_w": 3300.0}
    TrackerCollector(lambda: snap, registry=registry)
    up = {"island": True}
    LinkCollector(lambda: dict(up), registry=registry)
    value = registry.get_sample_value
    assert value("gridtao_product_state",
                 {"product": "fcr-d", "kind": "fcr-d-up", "state": "active"}) == 1.0
    assert value("gridtao_product_required_watts", {"product": "fcr-d", "kind": "fcr-d-up"}) == 750
    assert value("gridtao_reduction_required_watts") == 750.0
    assert value("gridtao_reduction_delivered_it_watts") == 700.0
    assert value("gridtao_broker_connected", {"link": "island"}) == 1.0
    up["island"] = False
    snap["reference_it_w"] = None
    assert value("gridtao_broker_connected", {"link": "island"}) == 0.0
    delivered = value("gridtao_reduction_delivered_it_watts")
    assert delivered is not None and math.isnan(delivered)


def test_tier2_reads_the_gpus_off_the_controller_loop() -> None:
    """A GPU whose driver calls hang (seconds each) must not hold the controller's loop: tier
    2's power reading runs in a worker thread."""
    import asyncio
    import threading

    readers: list[int] = []
    ticked = threading.Event()

    class Backend:
        def average_power_mw(self, index: int) -> float:
            readers.append(threading.get_ident())
            return 500_000.0

    class Tier1:
        draw_mw = (500_000.0, 500_000.0)

    class Tier2:
        def tick(self, it_w: float) -> None:
            assert it_w == 1000.0
            ticked.set()

        def snapshot(self) -> dict[str, object]:
            return {"products": [], "dr": []}

    class Link:
        def publish_nowait(self, *args: object, **kwargs: object) -> None:
            pass

    loop = _loop(_Trail(), tracker_period_s=0.01, gpu_indices=(0, 1), backend=Backend(),
                 tier1=Tier1(), tier2=Tier2(), status_link=Link())

    async def run() -> int:
        task = asyncio.create_task(loop._tracker_loop())
        while not ticked.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert readers and loop_thread not in readers
