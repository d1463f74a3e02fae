"""CPU power from RAPL (gridtao/work/rapl.py) on a fake powercap sysfs tree: packages found,
energy and power over reads, the counter's wraparound, an unreadable counter (one warning, no
metric), and the Prometheus collector read at scrape time."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
from powercap import RANGE_UJ, set_energy, zone
from prometheus_client import CollectorRegistry
from waiting import wait_until

from gridtao.clock import VirtualClock
from gridtao.work import CpuPowerCollector, PackageReading, RaplReader


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Two packages (numbered so that text order is wrong), a core subzone and the platform
    zone, which overlap the packages and are left out, and a zone of another control type."""
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 1_000_000)
    zone(root, "intel-rapl:10", "package-1", 5_000_000)
    zone(root, "intel-rapl:0:0", "core", 700_000)
    zone(root, "intel-rapl:2", "psys", 9_000_000)
    zone(root, "intel-rapl-mmio:0", "package-0", 1)
    return root


def test_packages_energy_and_power_over_reads(tree: Path) -> None:
    clock = VirtualClock()
    reader = RaplReader(tree, clock=clock)
    reader.read()
    assert reader.readings() == (PackageReading("package-0", 0.0, None),
                                 PackageReading("package-1", 0.0, None))
    set_energy(tree / "intel-rapl:0", 6_000_000)  # +5 J
    set_energy(tree / "intel-rapl:10", 8_000_000)  # +3 J
    clock.advance(2.0)
    reader.read()
    assert reader.readings() == (PackageReading("package-0", 5.0, 2.5),
                                 PackageReading("package-1", 3.0, 1.5))
    set_energy(tree / "intel-rapl:0", 6_500_000)
    clock.advance(0.5)
    reader.read()
    assert reader.readings()[0] == PackageReading("package-0", 5.5, 1.0)


def test_the_counter_wraps_and_the_energy_keeps_counting(tmp_path: Path) -> None:
    clock = VirtualClock()
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", RANGE_UJ - 1_000_000)
    reader = RaplReader(tmp_path, clock=clock)
    reader.read()
    set_energy(pkg, 2_000_000)  # past the top: 1 J before the wrap, 2 J after it
    clock.advance(1.0)
    reader.read()
    assert reader.readings() == (PackageReading("package-0", 3.0, 3.0),)
    set_energy(pkg, 4_000_000)
    clock.advance(1.0)
    reader.read()
    assert reader.readings() == (PackageReading("package-0", 5.0, 2.0),)


def test_a_decrease_without_a_known_range_is_skipped_not_guessed(tmp_path: Path) -> None:
    clock = VirtualClock()
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 9_000_000, range_uj=None)
    reader = RaplReader(tmp_path, clock=clock)
    reader.read()
    set_energy(pkg, 1_000_000)
    clock.advance(1.0)
    reader.read()
    assert reader.readings() == (PackageReading("package-0", 0.0, None),)
    set_energy(pkg, 2_000_000)
    clock.advance(1.0)
    reader.read()
    assert reader.readings() == (PackageReading("package-0", 1.0, 1.0),)


def test_an_unreadable_counter_warns_once_and_exports_nothing(
    tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    for z in ("intel-rapl:0", "intel-rapl:10"):
        os.chmod(tree / z / "energy_uj", 0o400)  # as the kernel leaves it since Linux 5.10
    if os.geteuid() == 0:  # root reads it anyway: refuse as the kernel would a user
        real = Path.read_text

        def read_text(self: Path, *args: object, **kwargs: object) -> str:
            if self.name == "energy_uj":
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "read_text", read_text)
    else:
        for z in ("intel-rapl:0", "intel-rapl:10"):
            os.chmod(tree / z / "energy_uj", 0o000)
    registry = CollectorRegistry()
    reader = RaplReader(tree, period_s=0.01)
    CpuPowerCollector(reader.readings, registry=registry)
    with caplog.at_level(logging.INFO, logger="gridtao.work.rapl"):
        reader.start()  # nothing readable: no thread
        reader.read()
        reader.read()
    reader.close()
    said = [r for r in caplog.records if r.name == "gridtao.work.rapl"]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert said[0].getMessage().startswith(
        f"CPU power: {tree / 'intel-rapl:0' / 'energy_uj'} is readable by root only")
    assert reader.readings() == ()
    assert registry.get_sample_value("gridtao_cpu_energy_joules_total",
                                     {"package": "package-0"}) is None
    assert not any(t.name == "cpu-power" for t in threading.enumerate())


def test_no_powercap_tree_is_said_quietly(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    reader = RaplReader(tmp_path / "absent")
    with caplog.at_level(logging.INFO, logger="gridtao.work.rapl"):
        reader.start()
    reader.close()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "gridtao.work.rapl"]
    assert said == [(logging.INFO, f"CPU power: no RAPL packages under {tmp_path / 'absent'}; "
                     "no CPU power metrics")]
    assert reader.readings() == ()


def test_a_garbled_read_is_skipped(tmp_path: Path) -> None:
    clock = VirtualClock()
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    reader = RaplReader(tmp_path, clock=clock)
    reader.read()
    for garbled in ("not a number", "-5", str(RANGE_UJ + 1)):
        (pkg / "energy_uj").write_text(f"{garbled}\n")
        clock.advance(1.0)
        reader.read()
    set_energy(pkg, 3_000_000)
    clock.advance(1.0)
    reader.read()
    assert reader.readings() == (PackageReading("package-0", 2.0, 0.5),)  # 2 J over 4 s


def test_the_collector_reads_at_scrape_time(tree: Path) -> None:
    clock = VirtualClock()
    registry = CollectorRegistry()
    reader = RaplReader(tree, clock=clock)
    CpuPowerCollector(reader.readings, registry=registry)
    assert registry.get_sample_value("gridtao_cpu_energy_joules_total",
                                     {"package": "package-0"}) is None
    reader.read()
    assert registry.get_sample_value("gridtao_cpu_energy_joules_total",
                                     {"package": "package-0"}) == 0.0
    assert registry.get_sample_value("gridtao_cpu_power_watts", {"package": "package-0"}) is None
    set_energy(tree / "intel-rapl:0", 121_000_000)
    clock.advance(1.0)
    reader.read()
    assert registry.get_sample_value("gridtao_cpu_energy_joules_total",
                                     {"package": "package-0"}) == 120.0
    assert registry.get_sample_value("gridtao_cpu_power_watts", {"package": "package-0"}) == 120.0
    assert registry.get_sample_value("gridtao_cpu_power_watts", {"package": "psys"}) is None


def test_the_reader_thread_reads_on_its_timer(tree: Path) -> None:
    reader = RaplReader(tree, period_s=0.05)
    reader.start()
    try:
        set_energy(tree / "intel-rapl:0", 4_000_000)
        wait_until(lambda: reader.readings()[0].energy_j == 3.0, "a read on the timer",
                   timeout_s=10.0)
        power = reader.readings()[0].power_w
        assert power is not None and power >= 0.0
    finally:
        reader.close()
    assert not any(t.name == "cpu-power" and t.is_alive() for t in threading.enumerate())


def test_cpu_packages_go_into_the_energy_ledger_beside_the_gpus(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A package drawing 150 W, read every 0.5 s for two minutes through the read-back's feeds:
    the history holds it as ``cpu:package-0`` (index -1), and ``report energy`` lists it as a
    CPU device with its energy, apart from the GPUs."""
    import json

    from gridtao.app.readback import LedgerFeeds
    from gridtao.cli.main import main
    from gridtao.history import HistoryRecorder, HistoryStore

    start = 1_772_323_200  # 2026-03-01T00:00Z
    clock = VirtualClock(wall_offset=start)
    store_path = tmp_path / "history-n1.sqlite3"
    recorder = HistoryRecorder(HistoryStore.open(store_path), clock=clock, poll_s=0.01)
    energy = [0.0]

    def readings() -> tuple[PackageReading, ...]:
        return (PackageReading("package-0", energy[0], 150.0),)

    feeds = LedgerFeeds(gpus=[(0, "GPU-0")], clock=clock, power_mw=lambda: (300_000.0,),
                        record=lambda fields: None, recorder=recorder)
    feeds.attach_cpus(readings)
    for k in range(241):  # 120 s, a round every 0.5 s
        feeds.round(clock.now(), (round(300.0 * 1000 * 0.5 * k),))
        clock.advance(0.5)
        energy[0] += 150.0 * 0.5
    recorder.close()
    with HistoryStore.open(store_path) as store:
        cpu = [r for r in store.gpu_rows(0, 2**40) if r.gpu == "cpu:package-0"]
    assert cpu and {r.index for r in cpu} == {-1}
    assert sum(r.energy_j for r in cpu) == pytest.approx(150.0 * 120.0, rel=0.01)
    assert main(["report", "energy", "--from", "2026-03-01T00:00Z", "--to", "2026-03-01T00:02Z",
                 "--history", str(store_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    devices = {g["gpu"]: g for g in doc["per_gpu"]["gpus"]}
    assert devices["cpu:package-0"]["device"] == "cpu" and devices["GPU-0"]["device"] == "gpu"
    assert devices["cpu:package-0"]["total"]["energy_kwh"] == pytest.approx(
        150.0 * 120.0 / 3.6e6, rel=0.01)
    assert main(["report", "energy", "--from", "2026-03-01T00:00Z", "--to", "2026-03-01T00:02Z",
                 "--history", str(store_path)]) == 0
    assert "| CPU | cpu:package-0 |" in capsys.readouterr().out
