"""Shared fixtures: a real Mosquitto broker on a free loopback port (see tests/broker.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, running_broker

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
def mqtt_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh broker for one test (may be stopped/restarted freely)."""
    with running_broker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture(scope="session")
def mqtt_broker_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One broker shared by a whole run: do not stop or restart it; use unique topics."""
    with running_broker(tmp_path_factory.mktemp("mosquitto-session")) as broker:
        yield broker
