"""`gridtao gpus`: JSON and table output, error exits without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest

from gridtao.cli.gpus import GPU_KEYS
from gridtao.cli.main import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDTAO_CONFIG", raising=False)


def test_gpus_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpus", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8
    assert [r["index"] for r in rows] == list(range(8))
    for r in rows:
        assert set(r) == set(GPU_KEYS)
        assert (r["default_w"], r["min_w"], r["max_w"], r["limit_w"]) == (700, 200, 700, 700)
        assert r["name"] == "NVIDIA H100 80GB HBM3" and r["uuid"].startswith("GPU-")
        # The simulator starts at its workload's steady state: realistic at once, never 0 W.
        assert 300 < r["power_w"] <= 720 and 300 < r["avg_power_w"] <= 700
        assert r["energy_j"] > 0 and r["simulated"] is True


def test_gpus_says_when_it_made_the_simulated_device(capsys: pytest.CaptureFixture[str]) -> None:
    """Fresh GPUs at rest must not pass for an agent's: the first look says it made them."""
    assert main(["gpus", "--json"]) == 0
    assert "there was no simulated device 'default'" in capsys.readouterr().err
    assert main(["gpus", "--json"]) == 0
    assert "there was no simulated device" not in capsys.readouterr().err


def test_gpus_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpus", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9
    assert lines[0].split()[:3] == ["GPU", "name", "uuid"]
    assert "energy J" in lines[0]
    cells = lines[1].split()
    assert cells[0] == "0" and cells[5].startswith("GPU-") and "700.0" in cells


def test_gpus_reads_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "small.yaml"
    cfg.write_text("gpus:\n  sim:\n    count: 2\n    profile: v100-sxm2\n")
    assert main(["--config", str(cfg), "gpus", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and rows[0]["max_w"] == 300
    monkeypatch.setenv("GRIDTAO_CONFIG", str(cfg))
    assert main(["gpus", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_bad_config_exits_2_naming_file_key_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("gpus:\n  sim:\n    count: 0\n")
    assert main(["--config", str(cfg), "gpus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("gridtao: error: ")
    assert str(cfg) in err[0] and "gpus.sim.count" in err[0] and ">= 1" in err[0]


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["gpus", "--backend", "cuda"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["gpus", "--count", "3"]) == 2  # it would be ignored
    assert "--count: only with --watch" in capsys.readouterr().err


def _driver_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_driver_present(), reason="a real NVIDIA driver is present")
def test_nvml_backend_without_driver_is_one_line_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gridtao", "gpus", "--backend", "nvml"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gridtao: error: no NVIDIA driver found")
    assert "--backend sim" in lines[0]
    assert "Traceback" not in proc.stderr


def test_simulated_gpus_are_said_to_be_simulated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpus", "--backend", "sim"]) == 0
    captured = capsys.readouterr()
    assert "these are simulated GPUs" in captured.err
    assert "simulated" not in captured.out  # the table itself stays the table


def test_files_the_configuration_names_but_cannot_be_read_name_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A path a key names that cannot be read is one line naming the file, the key and the
    path: for `gpus` (the simulator's trace) and `run` (the audit trail)."""
    trace = tmp_path / "trace.yaml"
    trace.write_text("gpus:\n  sim:\n    device: null\n    workload: trace\n"
                     "    trace_csv: /nonexistent/trace.csv\n")
    assert main(["--config", str(trace), "gpus"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"gridtao: error: {trace}: gpus.sim.trace_csv: /nonexistent/")
    audit = tmp_path / "audit.yaml"
    audit.write_text("gpus: {sim: {count: 1, device: null}}\nmetrics: {enabled: false}\n"
                     "mqtt: {host: 127.0.0.1, port: 1}\n"
                     "audit: {enabled: true, path: /proc/nope/audit.jsonl}\n")
    done = subprocess.run([sys.executable, "-m", "gridtao", "--config", str(audit), "run"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert (f"gridtao: error: {audit}: audit.path: cannot open /proc/nope/audit.jsonl"
            in done.stderr) and "Traceback" not in done.stderr
