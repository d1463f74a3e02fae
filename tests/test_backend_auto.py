"""The default backend: the NVIDIA driver where there is one, else simulated GPUs, loudly, with
every status, ack and metric saying so."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from gridtao.config.agent import GpusConfig, SimConfig
from gridtao.gpu import NO_NVML_ENV, open_backend
from gridtao.gpu.backend import GpuUnavailable


class _NoDriver:
    """A pynvml module on a machine without the NVIDIA driver: init fails as the real one does."""

    def __getattr__(self, name: str) -> object:
        import pynvml

        if name == "nvmlInit":
            def init() -> None:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
            return init
        return getattr(pynvml, name)


def test_auto_without_a_driver_runs_simulated_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv(NO_NVML_ENV, raising=False)
    caplog.set_level(logging.WARNING, logger="gridtao.gpu")
    backend = open_backend(GpusConfig(backend="auto", sim=SimConfig(count=2)),
                           nvml_module=_NoDriver())  # type: ignore[arg-type]
    try:
        assert backend.simulated and len(backend.devices()) == 2
        assert "NO NVIDIA DRIVER" in caplog.text and "SIMULATED GPUs" in caplog.text
    finally:
        backend.close()


def test_nvml_asked_by_name_never_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NO_NVML_ENV, raising=False)
    with pytest.raises(GpuUnavailable):
        open_backend(GpusConfig(backend="nvml"), nvml_module=_NoDriver())  # type: ignore[arg-type]


def test_the_default_is_auto_and_the_test_rig_keeps_it_off_the_driver() -> None:
    assert GpusConfig().backend == "auto"
    backend = open_backend(GpusConfig(sim=SimConfig(count=1)))  # GRIDTAO_NO_NVML=1 (conftest)
    try:
        assert backend.simulated
    finally:
        backend.close()


def test_acks_and_metrics_of_simulated_gpus_say_simulated() -> None:
    from test_intake import TOPICS, _make_rig

    from gridtao.hotpath.intake import Intake
    from gridtao.products.frequency import FrequencyMonitor
    from gridtao.telemetry.metrics import Metrics

    rig = _make_rig()
    try:
        assert rig.backend.simulated
        intake = Intake(rig.island, TOPICS, clock=rig.clock, monitor=FrequencyMonitor(()),
                        max_payload_bytes=4096, simulated=True)
        (out,) = intake.on_message(TOPICS.dispatch, b'{"id": 1}', received_at=rig.clock.now(),
                                   received_wall=rig.clock.wall())
        assert json.loads(out.payload)["simulated"] is True
        registry = CollectorRegistry()
        Metrics(registry).set_build("9.9.9", simulated=True)
        assert registry.get_sample_value("gridtao_gpus_simulated") == 1.0
        assert registry.get_sample_value("gridtao_build_info", {"version": "9.9.9"}) == 1.0
    finally:
        rig.close()
