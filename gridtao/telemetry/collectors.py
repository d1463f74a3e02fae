"""Prometheus collectors that read the agent's state when a scrape comes (model:
prometheus_client's ``GCCollector``): nothing is copied on a timer, and no collector calls NVML.
Each runs on the scraping thread (the metrics HTTP server's, or a test's) and reads thread-safe
snapshots through the callables it was given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CapacityCollector", "CapacityReading", "EnergyCollector", "EventEnergyCollector",
           "FeedCollector",
           "LinkCollector", "PlanCollector", "PlanReading", "RecordsCollector",
           "SuppressedAcksCollector", "TrackerCollector", "WriterHealth"]


class CapacityReading(Protocol):
    """A node capacity snapshot (``gridtao.control.capacity.Capacity``), W."""

    @property
    def deliverable_w(self) -> float: ...

    @property
    def deliverable_it_w(self) -> float: ...

    @property
    def enrolled_w(self) -> float: ...

    @property
    def floor_w(self) -> float: ...


class CapacityCollector(Collector):
    """The node's down-capacity, computed when Prometheus scrapes from ``read()`` (tier 1's
    latest readings and the island's floors: no NVML call). Runs on the scraping thread."""

    def __init__(self, read: Callable[[], CapacityReading], *,
                 registry: CollectorRegistry) -> None:
        self._read = read
        registry.register(self)

    #: (metric, help, the :class:`CapacityReading` attribute it exports)
    GAUGES = (
        ("gridtao_capacity_deliverable_watts",
         "Reduction the node can deliver now at the settlement point, W.", "deliverable_w"),
        ("gridtao_capacity_deliverable_it_watts",
         "Reduction the node can deliver now at the GPUs, W.", "deliverable_it_w"),
        ("gridtao_capacity_enrolled_watts",
         "Summed capacity of the enrolled frequency products, W.", "enrolled_w"),
        ("gridtao_capacity_floor_watts",
         "Lowest IT power the node can be held at (GPU floors), W.", "floor_w"),
    )

    def describe(self) -> Iterator[Metric]:
        for name, doc, _ in self.GAUGES:
            yield GaugeMetricFamily(name, doc)

    def collect(self) -> Iterator[Metric]:
        cap = self._read()
        for name, doc, attribute in self.GAUGES:
            yield GaugeMetricFamily(name, doc, value=float(getattr(cap, attribute)))


class FeedCollector(Collector):
    """The frequency feed as an operator alerts on it, read at scrape time from ``read()``:
    (last frequency Hz or None, seconds since the last sample or None, stale)."""

    def __init__(self, read: Callable[[], tuple[float | None, float | None, bool]], *,
                 registry: CollectorRegistry) -> None:
        self._read = read
        registry.register(self)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("gridtao_frequency_hz", "Last grid frequency sample, Hz."),
            GaugeMetricFamily("gridtao_frequency_sample_age_seconds",
                              "Seconds since the last frequency sample (NaN: none yet)."),
            GaugeMetricFamily("gridtao_frequency_feed_stale",
                              "1 while the frequency feed is stale (taken as nominal)."),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        hz, age, stale = self._read()
        last, age_family, stale_family = self._families()
        last.add_metric([], math.nan if hz is None else hz)
        age_family.add_metric([], math.nan if age is None else age)
        stale_family.add_metric([], 1.0 if stale else 0.0)
        yield from (last, age_family, stale_family)


class LinkCollector(Collector):
    """``gridtao_broker_connected{link}``: 1 while that MQTT link is connected. ``links``
    says, when scraped, whether each link is up (by name)."""

    def __init__(self, links: Callable[[], Mapping[str, bool]], *,
                 registry: CollectorRegistry) -> None:
        self._links = links
        registry.register(self)

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("gridtao_broker_connected",
                                 "1 while the MQTT link is connected to the broker, by link.",
                                 labels=["link"])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for name, connected in self._links().items():
            family.add_metric([name], 1.0 if connected else 0.0)
        yield family


class PlanReading(Protocol):
    """Tier 3 now (gridtao.app.planning.NodePlanning.reading): W at the settlement point for
    capacities, IT W for the forecast of the current MTU (None: no plan covers it)."""

    @property
    def armed_w(self) -> Mapping[str, float]: ...

    @property
    def offered_w(self) -> Mapping[str, float]: ...

    @property
    def forecast_w(self) -> tuple[float, float, float] | None: ...

    @property
    def plan_age_s(self) -> float | None: ...

    @property
    def state(self) -> str: ...

    @property
    def ceiling_w(self) -> float | None: ...


class PlanCollector(Collector):
    """Tier 3's plan and what is armed, read from ``read()`` at scrape time."""

    STATES = ("no_plan", "planned", "fallback")

    def __init__(self, read: Callable[[], PlanReading], *, registry: CollectorRegistry) -> None:
        self._read = read
        registry.register(self)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("gridtao_capacity_armed_watts",
                              "Capacity armed now per product (awarded for this market time "
                              "unit, else configured), W at the settlement point.",
                              labels=["product"]),
            GaugeMetricFamily("gridtao_capacity_offered_watts",
                              "Capacity tier 3's plan offers for this market time unit per "
                              "product, W at the settlement point.", labels=["product"]),
            GaugeMetricFamily("gridtao_forecast_it_watts",
                              "Tier 3's forecast of the natural IT draw for this market time "
                              "unit (NaN: no plan covers it), by quantile.",
                              labels=["quantile"]),
            GaugeMetricFamily("gridtao_plan_age_seconds",
                              "Seconds since the plan in force was made (NaN: none)."),
            GaugeMetricFamily("gridtao_plan_state",
                              "1 for tier 3's current state (no_plan, planned, fallback).",
                              labels=["state"]),
            GaugeMetricFamily("gridtao_plan_ceiling_watts",
                              "The node IT ceiling tier 3 planned for this market time unit "
                              "and tier 2 holds (NaN: none), W."),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        r = self._read()
        armed, offered, forecast, age, state, ceiling = self._families()
        for name, w in r.armed_w.items():
            armed.add_metric([name], w)
        for name, w in r.offered_w.items():
            offered.add_metric([name], w)
        values = r.forecast_w or (math.nan, math.nan, math.nan)
        for q, v in zip(("p10", "p50", "p90"), values, strict=True):
            forecast.add_metric([q], v)
        age.add_metric([], math.nan if r.plan_age_s is None else r.plan_age_s)
        for name in self.STATES:
            state.add_metric([name], 1.0 if r.state == name else 0.0)
        ceiling.add_metric([], math.nan if r.ceiling_w is None else r.ceiling_w)
        yield from (armed, offered, forecast, age, state, ceiling)


class SuppressedAcksCollector(Collector):
    """``gridtao_acks_suppressed_total``: refusals of unproven input counted but not acked
    (over the reject-ack budget), read from ``read()`` (a plain int the lane increments)."""

    def __init__(self, read: Callable[[], int], *, registry: CollectorRegistry) -> None:
        self._read = read
        registry.register(self)

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "gridtao_acks_suppressed",
            "Refused messages no signature vouched for, counted but not acked because the "
            "reject-ack budget was spent (a flood of junk).")

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        family.add_metric([], float(self._read()))
        yield family


class TrackerCollector(Collector):
    """Tier 2 and the enrolled products from tier 2's snapshot (the retained tracker topic's
    body, ``gridtao.control.tier2.tracker.Tier2.snapshot``): per product its state and required
    reduction, and the node's required and delivered reduction (W)."""

    def __init__(self, read: Callable[[], Mapping[str, Any]], *,
                 registry: CollectorRegistry) -> None:
        self._read = read
        registry.register(self)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
                             GaugeMetricFamily]:
        return (
            GaugeMetricFamily("gridtao_product_state",
                              "1 for each enrolled product's current state.",
                              labels=["product", "kind", "state"]),
            GaugeMetricFamily("gridtao_product_required_watts",
                              "Reduction each product requires now at the settlement point, W "
                              "(FCR-N: negative when it asks for more power).",
                              labels=["product", "kind"]),
            GaugeMetricFamily("gridtao_reduction_required_watts",
                              "Tier 2's committed reduction now at the settlement point, W."),
            GaugeMetricFamily("gridtao_reduction_delivered_it_watts",
                              "Measured IT reduction from tier 2's reference, W (NaN: none)."),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        snap = self._read()
        state, required, committed, delivered = self._families()
        for p in snap.get("products", []):
            labels = [str(p["name"]), str(p["kind"])]
            state.add_metric([*labels, str(p["state"])], 1.0)
            required.add_metric(labels, float(p["required_w"]))
        committed.add_metric([], float(snap.get("reduction_w", 0.0)))
        reference, it = snap.get("reference_it_w"), snap.get("it_w")
        delivered.add_metric([], math.nan if reference is None or it is None
                             else float(reference) - float(it))
        yield from (state, required, committed, delivered)


class EnergyCollector(Collector):
    """``gridtao_gpu_energy_joules_total{gpu}``: each GPU's energy counter (NVML, since the
    driver loaded), as the read-back thread last read it (gridtao/app/readback.py); a GPU
    without a counter is left out."""

    def __init__(self, read: Callable[[], tuple[int | None, ...]], gpus: tuple[int, ...], *,
                 registry: CollectorRegistry) -> None:
        self._read = read
        self._gpus = gpus
        registry.register(self)

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily("gridtao_gpu_energy_joules",
                                   "GPU energy since the driver loaded (NVML counter), J.",
                                   labels=["gpu"])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for gpu, mj in zip(self._gpus, self._read(), strict=False):
            if mj is not None:
                family.add_metric([str(gpu)], mj / 1000.0)
        yield family


class EventEnergyCollector(Collector):
    """``gridtao_event_energy_not_drawn_joules_total{at="it"|"meter"}``: energy the node did not
    draw while events were in force, each moment counted once however many events overlapped,
    against the reference draw of the first event in force (gridtao/records/energy.py), from
    ``read() -> (it_j, meter_j)``."""

    def __init__(self, read: Callable[[], tuple[float, float]], *,
                 registry: CollectorRegistry) -> None:
        self._read = read
        registry.register(self)

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "gridtao_event_energy_not_drawn_joules",
            "Energy not drawn while events were in force, each moment once, against the "
            "reference draw, J (at the GPUs, or at the meter through the facility model).",
            labels=["at"])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        it_j, meter_j = self._read()
        family.add_metric(["it"], it_j)
        family.add_metric(["meter"], meter_j)
        yield family


class WriterHealth(Protocol):
    """A record writer's health (``gridtao.records.health.WriteHealth``): thread-safe reads."""

    @property
    def healthy(self) -> bool: ...

    @property
    def write_errors(self) -> int: ...


class RecordsCollector(Collector):
    """The state journal's and the audit trail's writes, as an operator alerts on a full disk:
    ``gridtao_<name>_healthy`` (1, or 0 while the writer's latest write failed) and
    ``gridtao_<name>_write_errors_total`` (failed writes since start) for each ``name`` of
    :attr:`WRITERS`. ``read()`` maps each name to its writer's health, or None when that writer is
    off (its families then have no sample). Runs on the scraping thread."""

    #: (name, what its metrics' help calls it)
    WRITERS = (
        ("journal", "the state journal (an event held while it fails would not survive a crash)"),
        ("audit", "the audit trail (records are buffered, then dropped and counted)"),
    )

    def __init__(self, read: Callable[[], Mapping[str, WriterHealth | None]], *,
                 registry: CollectorRegistry) -> None:
        self._read = read
        registry.register(self)

    def _families(self) -> list[tuple[str, GaugeMetricFamily, CounterMetricFamily]]:
        return [
            (name,
             GaugeMetricFamily(f"gridtao_{name}_healthy",
                               f"1 while writes to {what} succeed, 0 while they fail (e.g. a "
                               "full disk)."),
             CounterMetricFamily(f"gridtao_{name}_write_errors", f"Failed writes to {what}."))
            for name, what in self.WRITERS
        ]

    def describe(self) -> Iterator[Metric]:
        for _, healthy, errors in self._families():
            yield from (healthy, errors)

    def collect(self) -> Iterator[Metric]:
        writers = self._read()
        for name, healthy, errors in self._families():
            health = writers.get(name)
            if health is not None:
                healthy.add_metric([], 1.0 if health.healthy else 0.0)
                errors.add_metric([], float(health.write_errors))
            yield from (healthy, errors)
