"""Prometheus collectors for the work sources and the CPU power, read when a scrape comes (the
model of gridtao/telemetry/collectors.py): nothing is copied on a timer. Each runs on the
scraping thread and reads the thread-safe snapshots of the scraper and the RAPL reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gridtao.work.rapl import PackageReading
from gridtao.work.sources import SourceSnapshot

__all__ = ["CpuPowerCollector", "LedgerCollector", "WorkCollector"]


class WorkCollector(Collector):
    """Per work source: ``gridtao_work_tokens_total{source,model,kind}`` (kind generation or
    prompt; counted through the server's restarts), or ``gridtao_work_units_total{source,unit}``
    for custom counters; ``gridtao_work_source_up{source}`` (1 while its last scrape succeeded)
    and ``gridtao_work_scrape_age_seconds{source}`` (since its last successful scrape; NaN:
    none yet). ``read()`` gives the snapshots, ``now()`` the scraper's clock (s)."""

    def __init__(self, read: Callable[[], Sequence[SourceSnapshot]], now: Callable[[], float],
                 *, registry: CollectorRegistry) -> None:
        self._read = read
        self._now = now
        registry.register(self)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily,
                             GaugeMetricFamily]:
        return (
            CounterMetricFamily("gridtao_work_tokens",
                                "Tokens a work source's server processed, by model and kind "
                                "(generation, prompt); counted through server restarts.",
                                labels=["source", "model", "kind"]),
            CounterMetricFamily("gridtao_work_units",
                                "Units of work a custom work source counted (its counter's "
                                "name without _total); counted through restarts.",
                                labels=["source", "unit"]),
            GaugeMetricFamily("gridtao_work_source_up",
                              "1 while the work source's last scrape succeeded.",
                              labels=["source"]),
            GaugeMetricFamily("gridtao_work_scrape_age_seconds",
                              "Seconds since the work source's last successful scrape "
                              "(NaN: none yet).", labels=["source"]),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        tokens, units, up, age = self._families()
        now = self._now()
        for snap in self._read():
            name = snap.spec.name
            for (model, kind), total in sorted(snap.totals.items()):
                if snap.spec.kind == "custom":
                    units.add_metric([name, kind], total)
                else:
                    tokens.add_metric([name, model, kind], total)
            up.add_metric([name], 1.0 if snap.health == "ok" else 0.0)
            last = snap.last_success_s
            age.add_metric([name], math.nan if last is None else max(0.0, now - last))
        yield from (tokens, units, up, age)


class CpuPowerCollector(Collector):
    """Per CPU package: ``gridtao_cpu_energy_joules_total{package}`` (J since the agent's first
    read; through the counter's wraps) and ``gridtao_cpu_power_watts{package}`` (W over the
    reader's last two reads). No sample for a package that cannot be read."""

    def __init__(self, read: Callable[[], Sequence[PackageReading]], *,
                 registry: CollectorRegistry) -> None:
        self._read = read
        registry.register(self)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily("gridtao_cpu_energy_joules",
                                "CPU package energy (RAPL) since the agent started, J.",
                                labels=["package"]),
            GaugeMetricFamily("gridtao_cpu_power_watts",
                              "CPU package power (RAPL) over the last read interval, W.",
                              labels=["package"]),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        energy, power = self._families()
        for pkg in self._read():
            energy.add_metric([pkg.package], pkg.energy_j)
            if pkg.power_w is not None:
                power.add_metric([pkg.package], pkg.power_w)
        yield from (energy, power)


class LedgerCollector(Collector):
    """The energy and work ledger (gridtao/records/liveledger.py), read at scrape time:
    ``gridtao_work_joules_per_token{source,model}`` (the GPUs a source is mapped to, J per
    generated token over the last complete minutes; ``model``: its models joined by ","),
    ``gridtao_work_joules_per_unit{source,unit}`` (the same for a custom counter's unit) and
    ``gridtao_work_lost_total{source,unit}`` (units lost to events, measured against each
    event's reference window; ``unit`` is ``token`` for generated tokens). ``per_unit()``
    gives (source, model, unit, J per unit), ``lost()`` (source, unit) -> units."""

    def __init__(self, per_unit: Callable[[], Sequence[tuple[str, str, str, float]]],
                 lost: Callable[[], Mapping[tuple[str, str], float]], *,
                 registry: CollectorRegistry) -> None:
        self._per_unit = per_unit
        self._lost = lost
        registry.register(self)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily("gridtao_work_joules_per_token",
                              "Energy of a work source's GPUs per generated token over the "
                              "last complete minutes, J.", labels=["source", "model"]),
            GaugeMetricFamily("gridtao_work_joules_per_unit",
                              "Energy of a custom work source's GPUs per unit of its counter "
                              "over the last complete minutes, J.", labels=["source", "unit"]),
            CounterMetricFamily("gridtao_work_lost",
                                "Units of work lost to events: the source's reference rate "
                                "before each event times its duration, less what it did.",
                                labels=["source", "unit"]),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        per_token, per_unit, lost = self._families()
        for source, model, unit, joules in self._per_unit():
            if unit == "token":
                per_token.add_metric([source, model], joules)
            else:
                per_unit.add_metric([source, unit], joules)
        for (source, unit), units in sorted(self._lost().items()):
            lost.add_metric([source, unit], units)
        yield from (per_token, per_unit, lost)
