"""The energy and work ledger end to end: simulated GPUs' energy counters and ``gridtao sim
serve-work``'s vLLM counters, read as the agent reads them (``LedgerFeeds``, a real work
scraper), recorded into a real history file, and the energy per token computed from it equals
the simulator's own energy per token; the live ledger's Prometheus families are exposed.

Demand is pinned (no noise), so the simulator's tokens are its GPUs' power over its energy per
token (gridtao/gpu/sim/throughput.py); timing is real and only a tolerance is asserted.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gridtao.app.readback import LedgerFeeds
from gridtao.clock import MonotonicClock
from gridtao.config.agent import SimConfig
from gridtao.config.paths import sim_device_path
from gridtao.gpu import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.sim.throughput import INFERENCE
from gridtao.history import HistoryRecorder, HistoryStore
from gridtao.records.report.work import efficiencies
from gridtao.work.sources import SourceSpec, WorkScraper

REPO = Path(__file__).resolve().parent.parent
RUN_S = 8.0


def test_joules_per_token_from_the_simulators_counters(tmp_path: Path) -> None:
    sim = SimNvml.from_config(SimConfig(count=2, workload="inference", noise_w=0.0),
                              MonotonicClock(), device_path=sim_device_path("default"))
    backend = NvmlBackend(sim)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridtao", "sim", "serve-work", "--port", "0", "--model", "m1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = tmp_path / "history.sqlite3"
    recorder = HistoryRecorder(HistoryStore.open(path), poll_s=0.05)
    registry = CollectorRegistry()
    try:
        for i in range(2):
            sim.set_demand_w(i, 600.0)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving http://"), line
        scraper = WorkScraper([SourceSpec("chat", line.split()[1], "vllm", gpus=(0, 1),
                                          period_s=1.0, timeout_s=10.0)])
        clock = MonotonicClock()
        feeds = LedgerFeeds(gpus=[(d.index, d.uuid) for d in backend.devices()], clock=clock,
                            power_mw=lambda: tuple(float(backend.instant_power_mw(i))
                                                   for i in range(2)),
                            record=lambda fields: None, recorder=recorder)
        feeds.attach_work(scraper, registry)
        scraper.start()
        end = time.monotonic() + RUN_S
        while time.monotonic() < end:  # read-back rounds, as the agent's worker thread does
            feeds.round(clock.now(), tuple(backend.energy_mj(i) for i in range(2)))
            time.sleep(0.25)
        scraper.close()
    finally:
        recorder.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        backend.close()
        assert sim.device is not None
        sim.device.close()
    assert recorder.errors == 0 and recorder.dropped == 0
    with HistoryStore.open(path) as store:
        gpus, work = store.gpu_rows(0, 2**40), store.work_rows(0, 2**40)
    assert {r.method for r in gpus} == {"counter"}
    assert sum(r.covered_s for r in gpus) == pytest.approx(2 * RUN_S, abs=1.0)
    assert {(r.source, r.model, r.kind, r.gpus) for r in work} == {
        ("chat", "m1", "generation", (0, 1)), ("chat", "m1", "prompt", (0, 1))}
    (chat,) = efficiencies("n", work, gpus, 0, 2**40)
    assert chat.joules_per_unit == pytest.approx(INFERENCE.joules_per_unit, rel=0.1)
    assert chat.energy_kwh is not None and chat.energy_kwh * 3.6e6 == pytest.approx(
        1200.0 * RUN_S, rel=0.25)
    # The collector's families are there (J per token needs complete minutes to have a value).
    text = generate_latest(registry).decode()
    assert "# TYPE gridtao_work_joules_per_token gauge" in text
    assert "# TYPE gridtao_work_lost_total counter" in text
    # No event ran: each configured source's counter is there, at 0.
    assert 'gridtao_work_lost_total{source="chat",unit="token"} 0.0' in text
