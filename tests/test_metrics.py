"""Metrics: scraped over real HTTP on a loopback port and parsed with the Prometheus parser."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gridtao.telemetry.metrics import (
    TRIGGER_TO_COMMAND_BUCKETS_S,
    TRIGGER_TO_TARGET_BUCKETS_S,
    Metrics,
    MetricsServer,
    StatsCollector,
    log_buckets,
    start_http_server,
)
from gridtao.transport.mqtt import LinkStats


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def served(metrics: Metrics) -> Iterator[MetricsServer]:
    srv = start_http_server(metrics, "127.0.0.1", 0)
    yield srv
    srv.close()


def scrape(srv: MetricsServer) -> list[Sample]:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def test_server_binds_a_free_port_and_unpacks_as_pair(served: MetricsServer) -> None:
    server, thread = served
    assert served.port > 0
    assert thread.is_alive()
    assert server.server_port == served.port


def test_gpu_gauges_scraped(metrics: Metrics, served: MetricsServer) -> None:
    metrics.set_default_limits([700.0, 700.0])
    metrics.observe_gpus([512.5, 301.0], [600.0, 450.0])
    s = scrape(served)
    assert value(s, "gridtao_gpu_power_watts", gpu="0") == 512.5
    assert value(s, "gridtao_gpu_power_watts", gpu="1") == 301.0
    assert value(s, "gridtao_gpu_power_limit_watts", gpu="1") == 450.0
    assert value(s, "gridtao_gpu_default_limit_watts", gpu="0") == 700.0
    metrics.observe_gpus([100.0, 200.0], [300.0, 400.0])
    s = scrape(served)
    assert value(s, "gridtao_gpu_power_watts", gpu="0") == 100.0
    assert value(s, "gridtao_gpu_power_limit_watts", gpu="0") == 300.0


def test_node_target_is_nan_without_event(metrics: Metrics, served: MetricsServer) -> None:
    assert math.isnan(value(scrape(served), "gridtao_node_target_watts"))
    metrics.observe_node(4000.0, 3500.0, True)
    s = scrape(served)
    assert value(s, "gridtao_node_power_watts") == 4000.0
    assert value(s, "gridtao_node_target_watts") == 3500.0
    assert value(s, "gridtao_event_active") == 1.0
    metrics.observe_node(4100.0, None, False)
    s = scrape(served)
    assert math.isnan(value(s, "gridtao_node_target_watts"))
    assert value(s, "gridtao_event_active") == 0.0


@dataclass
class _AuditTrail:
    dropped: int = 0


def test_counters(metrics: Metrics, served: MetricsServer) -> None:
    metrics.count_message("dispatch", "accepted")
    metrics.count_message("dispatch", "accepted")
    metrics.count_message("dispatch", "duplicate")
    metrics.count_message("frequency", "rejected")
    metrics.count_gpu_error(3, "GpuLost")
    # The links' and the audit trail's own counters, read at scrape time.
    StatsCollector({"island": LinkStats(reconnects=1, dropped_inbound=3),
                    "status": LinkStats(refused=2)},
                   audit=_AuditTrail(dropped=4), registry=metrics.registry)
    metrics.count_reload("refused")
    s = scrape(served)
    assert value(s, "gridtao_messages_total", topic="dispatch", result="accepted") == 2
    assert value(s, "gridtao_messages_total", topic="dispatch", result="duplicate") == 1
    assert value(s, "gridtao_messages_total", topic="frequency", result="rejected") == 1
    assert value(s, "gridtao_gpu_errors_total", gpu="3", kind="GpuLost") == 1
    assert value(s, "gridtao_mqtt_reconnects_total") == 1
    assert value(s, "gridtao_mqtt_refused_total", link="status") == 2
    assert value(s, "gridtao_mqtt_dropped_total", link="island", direction="in") == 3
    assert value(s, "gridtao_audit_dropped_total") == 4
    assert value(s, "gridtao_reloads_total", result="refused") == 1


def test_unknown_message_result_rejected(metrics: Metrics) -> None:
    with pytest.raises(ValueError):
        metrics.count_message("dispatch", "maybe")  # type: ignore[arg-type]


def test_histograms(metrics: Metrics, served: MetricsServer) -> None:
    metrics.observe_trigger_to_command(0.0004)
    metrics.observe_trigger_to_command(0.002)
    metrics.observe_trigger_to_target(0.05)
    metrics.observe_fast_loop(0.0001)
    s = scrape(served)
    assert value(s, "gridtao_trigger_to_command_seconds_count") == 2
    assert value(s, "gridtao_trigger_to_command_seconds_bucket", le="0.001") == 1
    assert value(s, "gridtao_trigger_to_command_seconds_bucket", le="+Inf") == 2
    assert value(s, "gridtao_trigger_to_command_seconds_sum") == pytest.approx(0.0024)
    assert value(s, "gridtao_trigger_to_target_seconds_count") == 1
    assert value(s, "gridtao_fast_loop_seconds_count") == 1


def test_bucket_ranges() -> None:
    assert TRIGGER_TO_COMMAND_BUCKETS_S[0] == 1e-4
    assert TRIGGER_TO_COMMAND_BUCKETS_S[-1] == 1.0
    assert TRIGGER_TO_TARGET_BUCKETS_S[0] == 1e-3
    assert TRIGGER_TO_TARGET_BUCKETS_S[-1] == 10.0
    b = log_buckets(1e-4, 1.0, per_decade=4)
    assert len(b) == 17
    ratios = [b[i + 1] / b[i] for i in range(len(b) - 1)]
    assert all(r == pytest.approx(10**0.25, rel=1e-4) for r in ratios)
    with pytest.raises(ValueError):
        log_buckets(1.0, 0.1)


def test_registries_are_isolated() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    island_a, island_b = LinkStats(), LinkStats()
    StatsCollector({"island": island_a}, registry=a.registry)
    StatsCollector({"island": island_b}, registry=b.registry)
    island_a.reconnects += 1
    assert a.registry.get_sample_value("gridtao_mqtt_reconnects_total") == 1
    assert b.registry.get_sample_value("gridtao_mqtt_reconnects_total") == 0
