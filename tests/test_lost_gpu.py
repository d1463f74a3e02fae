"""A GPU lost before the agent starts: the others are served, the lost one is reported (status,
log) and checked again; a GPU lost is never a reason to give no response at all. Real
Mosquitto, simulated GPUs with the driver's "GPU is lost" on one of them from the start."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, Subscriber
from nodes import merge, running
from prometheus_client import CollectorRegistry
from waiting import wait_until

from gridtao.clock import MonotonicClock
from gridtao.config.agent import config_from_mapping
from gridtao.gpu.backend import GpuLost
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.subset import ServedGpus

N = 4
LOST = 2


def test_the_driver_backend_opens_the_gpus_it_can() -> None:
    cfg = config_from_mapping({"gpus": {"sim": {"count": N, "faults": [
        {"kind": "lost", "gpu": LOST}]}}}, source="<test>")
    backend = NvmlBackend(SimNvml.from_config(cfg.gpus.sim, MonotonicClock()))
    try:
        assert [d.index for d in backend.devices()] == [0, 1, 3]
        assert isinstance(backend.unavailable[LOST], GpuLost)
        served = ServedGpus(backend, [0, 1, 3])
        assert [d.index for d in served.devices()] == [0, 1, 2]
        assert served.power_limits(2) == backend.power_limits(3)
        assert backend.reopenable() == []  # still lost
    finally:
        backend.close()


def test_the_healthy_gpus_are_served_and_the_lost_one_reported(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    cfg = config_from_mapping(merge({}, {
        "gpus": {"sim": {"count": N, "noise_w": 0.0, "seed": 2,
                         "faults": [{"kind": "lost", "gpu": LOST}]}},
        "mqtt": {"port": mqtt_broker.port, "node_id": "lost", "prefix": "gridtao/e2e-lost",
                 "status_period_s": 0.1, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "metrics": {"enabled": False},
    }), source="<test lost>")
    sim = SimNvml.from_config(cfg.gpus.sim, MonotonicClock())
    for i in (0, 1, 3):
        sim.set_demand_w(i, 600.0)
    with running(mqtt_broker, cfg, sim, serve=True) as node, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, node.topics.status) as status, \
            node.acks() as acks:
        assert node.agent.unavailable_gpus == {LOST: "GpuLost"}

        def latest() -> dict[str, Any]:
            payload: dict[str, Any] = json.loads(status.messages[-1].payload)
            return payload

        wait_until(lambda: bool(status.messages) and latest().get("online") is True,
                   "an online status", timeout_s=15.0)
        st = latest()
        assert [g["index"] for g in st["gpus"]] == [0, 1, 3]
        assert st["unavailable_gpus"] == [{"index": LOST, "fault": "GpuLost"}]
        node.dispatch({"id": "cut", "kind": "shed", "fraction": 0.3, "duration_s": 30})
        ack = json.loads(acks.wait(1, 15.0)[0].payload)
        assert ack["accepted"] is True and ack["commanded_at"] is not None
        limits = [node.agent.backend.enforced_limit_mw(k) for k in range(3)]
        assert all(lim < 700_000 for lim in limits)
        # Prometheus names the GPUs as the status and nvidia-smi do: 0, 1, 3.
        families = ("gridtao_gpu_power_watts", "gridtao_gpu_power_limit_watts",
                    "gridtao_gpu_energy_joules_total")
        wait_until(lambda: all(_gpu_labels(node.agent.registry, f) == {"0", "1", "3"}
                               for f in families), "the GPUs labelled by driver index",
                   timeout_s=10.0)


def _gpu_labels(registry: CollectorRegistry, name: str) -> set[str]:
    return {s.labels["gpu"] for m in registry.collect() for s in m.samples if s.name == name}


def test_priorities_follow_the_driver_s_gpu_numbers_when_one_is_missing(
        caplog: pytest.LogCaptureFixture) -> None:
    from gridtao.app.checks import served_priorities

    cfg = config_from_mapping({"tracker": {"priorities": [
        {"gpus": [3], "priority": "critical", "floor_w": 400},
        {"gpus": [LOST], "priority": "critical", "floor_w": 300}]}}, source="<test>")
    with caplog.at_level(logging.WARNING):
        served = served_priorities(cfg, [0, 1, 3])
    (only,) = served.tracker.priorities
    assert only.gpus == (2,) and only.floor_w == 400  # driver GPU 3 is served as 2
    assert "GPU 2 not served" in caplog.text
