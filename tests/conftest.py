"""Shared fixtures: a real Mosquitto broker on a free loopback port (see tests/broker.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, running_broker

from gridtao.clock import VirtualClock
from gridtao.config.agent import SimConfig
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.safety.island import SafetyIsland

# gpus.backend defaults to auto: keep every agent this suite starts (in-process or as a child
# process, which inherits this) off a real NVIDIA driver, even on a machine that has one.
os.environ["GRIDTAO_NO_NVML"] = "1"


@pytest.fixture(autouse=True)
def _state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's agents keep their audit trail, journal and replay store in that test's own
    state directory, and their simulated GPUs in its own run directory (both inherited by the
    agent processes a test starts): one test's limits never reach another's GPUs."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))


@pytest.fixture
def unwritable(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Call it with a folder: from then on ``os.access`` says that folder cannot be written,
    as a read-only file system says to root too (EROFS whoever asks)."""
    real_access = os.access
    denied: set[Path] = set()

    def access(path: object, mode: int) -> bool:
        if mode & os.W_OK and Path(str(path)) in denied:
            return False
        return real_access(path, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    return denied.add


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh broker for one test (may be stopped/restarted freely)."""
    with running_broker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture(scope="session")
def mqtt_broker_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One broker shared by a whole run: do not stop or restart it; use unique topics."""
    with running_broker(tmp_path_factory.mktemp("mosquitto-session")) as broker:
        yield broker


#: A 4-GPU simulated node on a virtual clock and its safety island, every GPU drawing 600 W.
IslandRig = tuple[VirtualClock, SafetyIsland]


@pytest.fixture
def island() -> Iterator[IslandRig]:
    clock = VirtualClock(10.0)
    sim = SimNvml.from_config(SimConfig(count=4, set_latency_ms=0.0, read_latency_ms=0.0,
                                        noise_w=0.0), clock)
    backend = NvmlBackend(sim)
    isl = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=3600.0)
    isl.start()
    isl.update_draw([600_000] * 4)
    yield clock, isl
    isl.close()
    backend.close()
