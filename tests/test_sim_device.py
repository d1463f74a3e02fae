"""The machine-wide simulated device: one set of GPUs for every process that opens it.

Two opens of one device file in this process behave as two processes do (each holds its own
open file and its own locks); where it matters, real child processes open it too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gridtao.cli import main as cli
from gridtao.clock import MonotonicClock, VirtualClock
from gridtao.config.agent import SimConfig, SimWorkload
from gridtao.config.paths import sim_device_path
from gridtao.gpu import GpuLost, NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.sim.shared import DeviceFile, DeviceInfo, DeviceMismatch

REPO = Path(__file__).resolve().parent.parent
W = 1000
CFG = SimConfig(count=2, noise_w=0.0)


def _open(cfg: SimConfig = CFG, name: str = "default") -> NvmlBackend:
    return NvmlBackend(SimNvml.from_config(cfg, MonotonicClock(),
                                           device_path=sim_device_path(name)))


def _script(code: str) -> str:
    """``code`` after a prelude that opens the device as ``b`` (the test's run directory is
    inherited by the child)."""
    return textwrap.dedent("""
        from gridtao.clock import MonotonicClock
        from gridtao.config.agent import SimConfig, SimWorkload
        from gridtao.config.paths import sim_device_path
        from gridtao.gpu import NvmlBackend
        from gridtao.gpu.sim.nvml import SimNvml
        b = NvmlBackend(SimNvml.from_config(SimConfig(count=2, noise_w=0.0), MonotonicClock(),
                                            device_path=sim_device_path("default")))
    """) + textwrap.dedent(code)


def _child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _script(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_two_opens_see_one_limit_one_draw_one_energy_counter() -> None:
    a, b = _open(), _open()
    a.set_limit_mw(0, 300 * W)
    assert b.enforced_limit_mw(0) == 300 * W and b.enforced_limit_mw(1) == 700 * W
    time.sleep(0.3)  # the ceiling settles under the new limit
    # Readings taken in turn: each is the latest refresh sample, the same for both.
    for _ in range(20):
        pa, pb = a.instant_power_mw(0), b.instant_power_mw(0)
        if pa == pb:
            break
    assert pa == pb and pa <= 300 * W
    # The same for the 1 s average, read where no refresh falls between the two looks (a's
    # reading before and after b's agrees).
    for _ in range(20):
        before, other, after = (a.average_power_mw(0), b.average_power_mw(0),
                                a.average_power_mw(0))
        if before == after:
            break
    assert before == after == other
    energies = []
    for _ in range(50):  # alternating readers: one counter, never going back
        energies += [a.energy_mj(1), b.energy_mj(1)]
    assert energies == sorted(energies) and energies[-1] > energies[0]
    b.set_limit_mw(0, 700 * W)
    assert a.enforced_limit_mw(0) == 700 * W


def test_a_limit_outlives_the_process_that_set_it() -> None:
    done = _child("b.set_limit_mw(1, 250_000); print(b.enforced_limit_mw(1))")
    assert done.returncode == 0 and done.stdout.strip() == "250000", done.stderr
    here = _open()
    assert here.enforced_limit_mw(1) == 250 * W
    time.sleep(0.2)
    assert here.instant_power_mw(1) <= 251 * W  # enforced here too: the draw follows it
    status = subprocess.run([sys.executable, "-m", "gridtao", "sim", "status", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    gpu1 = json.loads(status.stdout)["gpus"][1]
    assert gpu1["limit_w"] == 250.0 and gpu1["limit_setter_alive"] is False


def test_concurrent_writers_in_several_processes_leave_a_sound_device() -> None:
    """Four processes write limits and read energy 600 times each, as fast as they can:
    every write lands whole (the final limit is one of the values written), each reader's
    energy counter only rises, and the device stays usable. (With the record locks off, this
    fails most runs.)"""
    writer = """
        import os, sys
        me = int(sys.argv[1])
        last = [-1, -1]
        for k in range(600):
            gpu = k % 2
            b.set_limit_mw(gpu, 200_000 + me * 1000 + k)
            e = b.energy_mj(gpu)
            if e < last[gpu]:
                sys.exit(f"energy went back on GPU {gpu}: {last[gpu]} -> {e}")
            last[gpu] = e
    """
    _open()  # create it first, so the writers race on it and not on its creation
    procs = [
        subprocess.Popen([sys.executable, "-c", _script(writer), str(me)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for me in range(4)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, results
    here = _open()
    written = {200_000 + me * 1000 + k for me in range(4) for k in range(600)}
    for gpu in range(2):
        assert here.enforced_limit_mw(gpu) in written
    assert 0 < here.instant_power_mw(0) <= 700 * W


def test_destroy_is_a_driver_reload() -> None:
    held = _open()
    held.set_limit_mw(0, 400 * W)
    assert cli.main(["sim", "destroy"]) == 0
    with pytest.raises(GpuLost):
        held.instant_power_mw(0)
    fresh = _open()  # the next open creates it again, at the defaults
    assert fresh.enforced_limit_mw(0) == 700 * W


def test_destroy_is_refused_while_another_process_holds_the_device(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An agent in another process would lose its GPUs: destroy names its pid and refuses,
    unless --force."""
    holder = subprocess.Popen([sys.executable, "-c", _script(
        "import sys; print('open', flush=True); sys.stdin.read()")], cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        path = sim_device_path("default")
        assert DeviceFile.holders(path) == [holder.pid]
        assert cli.main(["sim", "destroy"]) == 2
        err = capsys.readouterr().err
        assert f"held open by pid {holder.pid}" in err and "--force" in err
        assert err.count("\n") == 1
        assert path.exists()  # nothing changed
        assert cli.main(["sim", "destroy", "--force"]) == 0
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_a_device_with_other_settings_is_refused_naming_the_key(
        capsys: pytest.CaptureFixture[str]) -> None:
    _open()
    with pytest.raises(DeviceMismatch) as e:
        _open(SimConfig(count=3, noise_w=0.0))
    assert e.value.key == "gpus.sim.count" and "gpus.sim.count" in str(e.value)
    assert cli.main(["gpus"]) == 2  # the default config: 8 GPUs, noise 3 W
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gridtao: error: <defaults>: gpus.sim." in err
    # An agent names its configuration file too.
    from gridtao.app.agent import Agent
    from gridtao.config.agent import ConfigError, config_from_mapping

    cfg = config_from_mapping({"gpus": {"backend": "sim", "sim": {"count": 3}}},
                              source="/etc/gridtao/agent.yaml")
    with pytest.raises(ConfigError, match=r"^/etc/gridtao/agent.yaml: gpus\.sim\.count: "):
        Agent(cfg)


def test_a_device_from_another_boot_is_created_again() -> None:
    _open().set_limit_mw(0, 300 * W)
    path = sim_device_path("default")
    data = bytearray(path.read_bytes())
    boot_at = 60  # after magic (8), format, state, generation, 3 times, count, 2 sizes
    data[boot_at:boot_at + 36] = b"0" * 36
    path.write_bytes(bytes(data))
    assert DeviceFile.peek(path) is None  # stale: as if the machine had rebooted
    assert _open().enforced_limit_mw(0) == 700 * W


def test_in_process_gpus_stay_for_virtual_time() -> None:
    with pytest.raises(ValueError, match="virtual"):
        SimNvml.from_config(CFG, VirtualClock(), device_path=sim_device_path("v"))
    sim = SimNvml.from_config(CFG, VirtualClock())  # no device: private to this object
    assert sim.device is None


def test_sim_cli_create_status_destroy(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "status"]) == 1
    assert cli.main(["sim", "create"]) == 0
    assert "created" in capsys.readouterr().out
    _open(SimConfig(), "default").set_limit_mw(3, 500 * W)
    assert cli.main(["sim", "status"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("3 "))
    assert "500.0" in row and f"pid {os.getpid()} (running)" in row
    assert cli.main(["sim", "--device", "../x", "status"]) == 2
    assert cli.main(["sim", "destroy"]) == 0
    assert not sim_device_path("default").exists()


def test_sim_status_names_each_gpus_workload_on_a_mixed_device(
        capsys: pytest.CaptureFixture[str]) -> None:
    mixed = SimConfig(count=2, workloads=(SimWorkload("inference", load=0.5),
                                          SimWorkload("training")))
    _open(mixed)
    assert cli.main(["sim", "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("workload mixed" in line for line in lines), lines
    rows = [line.split() for line in lines if line[:3].strip() in ("0", "1")]
    assert [r[1:3] for r in rows] == [["inference", "x0.5"], ["training", "700.0"]], rows


def test_sim_status_shows_the_work_an_inference_server_has_queued(
        capsys: pytest.CaptureFixture[str]) -> None:
    mixed = SimConfig(count=2, noise_w=0.0, workloads=(SimWorkload("inference"),
                                                       SimWorkload("training")))
    sim = SimNvml.from_config(mixed, MonotonicClock(), device_path=sim_device_path("default"))
    backend = NvmlBackend(sim)
    try:
        for i in range(2):
            sim.set_demand_w(i, 650.0)
            backend.set_limit_mw(i, 200 * W)  # both held far below what they ask for
        time.sleep(0.5)
        assert cli.main(["sim", "status", "--json"]) == 0
        gpus = json.loads(capsys.readouterr().out)["gpus"]
        # The server queues what it cannot serve (about 0.1 s of flat-out work per second
        # here); the training job loses it and queues nothing.
        assert gpus[0]["work_queued_s"] > 0.01 and gpus[1]["work_queued_s"] == 0.0
        assert cli.main(["sim", "status"]) == 0
        assert "queued s" in capsys.readouterr().out
    finally:
        backend.close()
        assert sim.device is not None
        sim.device.close()


def test_gridtao_gpus_shows_a_named_device_as_it_was_made(
        capsys: pytest.CaptureFixture[str]) -> None:
    _open(SimConfig(count=2), "other").set_limit_mw(1, 444 * W)
    assert cli.main(["gpus", "--sim-device", "other"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line[:3].strip() in ("0", "1")]
    assert len(rows) == 2 and "444.0" in rows[1], rows
    assert cli.main(["gpus", "--sim-device", "nosuch"]) == 2
    assert "no simulated device 'nosuch'" in capsys.readouterr().err
    assert not sim_device_path("nosuch").exists()
    assert cli.main(["gpus", "--sim-device", "../x"]) == 2


def test_opening_an_existing_device_never_creates_one(monkeypatch: pytest.MonkeyPatch) -> None:
    path = sim_device_path("default")
    assert SimNvml.open_existing(path, MonotonicClock()) is None
    assert not path.exists()
    _open().set_limit_mw(1, 333 * W)
    found = SimNvml.open_existing(path, MonotonicClock())
    assert found is not None and found.config.count == CFG.count  # the device's own settings
    assert NvmlBackend(found).enforced_limit_mw(1) == 333 * W
    # Destroyed between reading its header and opening it: still none, and none created.
    peek = DeviceFile.peek

    def peek_then_destroy(p: Path) -> DeviceInfo | None:
        info = peek(p)
        DeviceFile.destroy(p)
        return info

    monkeypatch.setattr(DeviceFile, "peek", staticmethod(peek_then_destroy))
    assert SimNvml.open_existing(path, MonotonicClock()) is None
    assert not path.exists()


def test_two_named_devices_have_gpus_of_their_own() -> None:
    """Two simulated nodes on one machine, the same seed: their GPUs' UUIDs differ (reports
    key energy by UUID), and a second process opening a device sees the UUIDs its creator saw."""
    first, other, again = _open(name="a"), _open(name="b"), _open(name="a")
    try:
        def uuids(b: NvmlBackend) -> list[str]:
            return [d.uuid for d in b.devices()]

        assert not set(uuids(first)) & set(uuids(other))
        assert uuids(again) == uuids(first) and len(set(uuids(first))) == 2
    finally:
        for b in (first, other, again):
            b.close()


def test_sim_create_names_the_configuration_a_bad_key_comes_from(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("gpus: {backend: sim, sim: {device: trace-node, workload: trace, "
                    f"trace_csv: {tmp_path / 'missing.csv'}}}}}\n")
    assert cli.main(["--config", str(path), "sim", "create"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gridtao: error: {path}: gpus.sim.trace_csv: ") and err.count("\n") == 1


def test_a_damaged_device_file_is_one_line_for_every_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "--device", "broken", "create"]) == 0
    device = sim_device_path("broken")
    whole = device.read_bytes()
    for damage, words in ((whole[:100], "is damaged"),  # the header cut short
                          (whole[:0x64] + b"[" + whole[0x65:], "is damaged")):  # bad params
        device.write_bytes(damage)
        for argv in (["sim", "--device", "broken", "status"], ["gpus", "--sim-device", "broken"],
                     ["sim", "--device", "broken", "create"]):
            capsys.readouterr()
            assert cli.main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("gridtao: error: ") and err.count("\n") == 1, (argv, err)
            assert words in err and "destroy it" in err
    # Settings a simulator cannot have (a negative time constant), in a header still intact.
    assert b'"cap_down_ms": 20.0' in whole
    device.write_bytes(whole.replace(b'"cap_down_ms": 20.0', b'"cap_down_ms": -1.0'))
    assert cli.main(["sim", "--device", "broken", "status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpus.sim.cap_down_ms" in err and "destroy" in err, err
    device.unlink()
    device.mkdir()  # not a file at all
    assert cli.main(["gpus", "--sim-device", "broken"]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert cli.main(["sim", "--device", "broken", "destroy"]) == 2
    assert "remove it yourself" in capsys.readouterr().err
    device.rmdir()
    os.mkfifo(device)  # a FIFO would block whoever opens it to read
    assert cli.main(["gpus", "--sim-device", "broken"]) == 2
    assert "not a regular file" in capsys.readouterr().err
    device.unlink()


def test_sim_set_limit_plays_an_operators_nvidia_smi(capsys: pytest.CaptureFixture[str]) -> None:
    """Written as another process writes it (the device records who), refused whole when out
    of range, on a missing GPU or with no device; nothing is written then."""
    assert cli.main(["sim", "set-limit", "--gpu", "0", "--watts", "500"]) == 2
    assert "no simulated device" in capsys.readouterr().err
    assert cli.main(["sim", "create"]) == 0
    capsys.readouterr()
    assert cli.main(["sim", "set-limit", "--gpu", "2", "--watts", "500"]) == 0
    assert capsys.readouterr().out.strip() == (
        "Power limit for GPU 2 was set to 500.00 W from 700.00 W.")
    gpus = _open(SimConfig(), "default")
    n = SimConfig().count
    assert [gpus.enforced_limit_mw(i) for i in range(n)] == [
        500 * W if i == 2 else 700 * W for i in range(n)]
    assert cli.main(["sim", "status", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["gpus"][2]
    assert row["limit_set_by_pid"] == os.getpid() and row["limit_w"] == 500.0
    for bad, said in ((["--gpu", "0", "--watts", "50"], "takes limits from"),
                      (["--gpu", "99", "--watts", "500"], "--gpu 99"),
                      (["--watts", "0"], "must be > 0 W"),
                      (["--gpu", "-1", "--watts", "500"], "must be >= 0")):
        assert cli.main(["sim", "set-limit", *bad]) == 2
        assert said in capsys.readouterr().err
    assert cli.main(["sim", "set-limit", "--watts", "600"]) == 0  # every GPU
    out = capsys.readouterr().out
    assert out.count("was set to 600.00 W") == n and "GPU 2 was set to 600.00 W from 500.00" in out
    assert [gpus.enforced_limit_mw(i) for i in range(n)] == [600 * W] * n
    assert cli.main(["sim", "destroy"]) == 0
