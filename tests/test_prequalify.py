"""`gridtao prequalify`: the dry run shows the sequence and the caps without actuating, real GPUs
are refused without --allow-actuation, and a short simulated run writes the report folder.

The two simulated runs (about 20 s each, mostly waiting on the 10 Hz schedule) run side by side:
the one on GPUs that refuse writes as its own `gridtao prequalify` process, started by the
module's first test that asks for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from agentproc import REPO

from gridtao.cli.main import main

pytestmark = pytest.mark.timeout(180)


class Run(NamedTuple):
    """A `gridtao prequalify` process, its report folder and its output."""

    proc: subprocess.Popen[bytes]
    out: Path
    log: Path

    def wait(self) -> int:
        return self.proc.wait(150)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def refusing_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """ERCOT FFR on simulated GPUs that refuse every limit write, in the background. The
    product is enrolled with a 1 s support (the time scale would give 5.4 s): nothing is cut
    whatever its length, and the report only has to show the refused writes (a configuration
    that enrolls a product must also set safety.triggers: [], as the bench does for its agent
    anyway). State and run directories of its own, as conftest.py gives every test."""
    here = tmp_path_factory.mktemp("refusing")
    cfg = here / "refusing.yaml"
    cfg.write_text("gpus:\n  backend: sim\n  sim:\n    faults: [{kind: not_supported}]\n"
                   "safety:\n  triggers: []\n"
                   "products:\n  - {kind: ercot-ffr, capacity_w: 1000, support_s: 1}\n")
    env = os.environ | {"STATE_DIRECTORY": str(here / "state"),
                        "RUNTIME_DIRECTORY": str(here / "run")}
    log = here / "prequalify.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridtao", "--config", str(cfg), "prequalify", "--product",
             "ercot-ffr", "--time-scale", "0.006", "--out", str(here / "report")],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield Run(proc, here / "report", log)
    finally:  # let it finish (its broker and agent with it) unless it hangs
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_dry_run_shows_sequence_durations_and_caps_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["prequalify", "--product", "ffr", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nothing will be actuated" in text
    for test in ("step-49.7Hz", "large-trip", "normal"):
        assert test in text
    assert "full activation limit: 1.3 s" in text
    # The TSO's re-arm time, and what the time scale made the re-arm test wait.
    assert "re-arm: 900 s (the re-arm test waits 90 s: shortened by the time scale)" in text
    # 8 simulated H100s at the steady test load (616 W each) and a 1000 W cut at the meter.
    assert "node IT 4928 W now -> target 3957 W" in text
    assert text.count("GPU ") >= 8 and "allowed 200-700 W" in text
    assert not out.exists()


def test_real_gpus_are_refused_without_allow_actuation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    rc = main(["prequalify", "--product", "fcr-d-up", "--backend", "nvml", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--allow-actuation" in err and "nvml" in err
    assert not out.exists()


def test_dry_run_on_real_gpus_is_allowed_without_actuation(
    capsys: pytest.CaptureFixture[str]
) -> None:
    # Read-only: on a machine without NVML it says it cannot read the GPUs, and exits 0.
    assert main(["prequalify", "--product", "dr", "--backend", "nvml", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "nothing will be actuated" in text and "--allow-actuation" in text
    # Demand response is driven by dispatches: its test says so, not "50 Hz".
    assert "events: two demand-response dispatches queued at once" in text
    assert "full at start: the reduction asked within 1 s" in text  # DR's own rules
    assert "settlement interval: 300 s" in text


def test_a_demand_response_report_describes_dispatches_not_a_frequency_signal() -> None:
    from gridtao.config.agent import Config
    from gridtao.prequal.writeup import measurement_rows

    dr = dict(measurement_rows(Config(), dr=True))
    assert "frequency signal" not in dr and "no frequency signal" in dr["dispatches"]
    assert "frequency signal" in dict(measurement_rows(Config()))


@pytest.mark.usefixtures("refusing_run")  # runs beside this one
def test_a_short_simulated_run_writes_the_report_folder(tmp_path: Path) -> None:
    out = tmp_path / "ercot"
    rc = main(["prequalify", "--product", "ercot-ffr", "--time-scale", "0.006", "--out", str(out),
               "--site", "Test site"])
    assert rc == 0
    test = "step-59.85Hz"
    assert {p.name for p in out.iterdir()} == {"summary.md", "summary.pdf", "results.json",
                                               f"{test}.csv", f"{test}.png"}
    assert (out / "summary.pdf").read_bytes()[:5] == b"%PDF-"
    summary = (out / "summary.md").read_text()
    for needle in ("**Result: PASS**", "| Site | Test site |", "| Node |", "| Software | gridtao",
                   "| Machine |", "| threshold | 59.85 Hz |", "| full activation limit | 0.25 s |",
                   "| full_activation_time |", "<= 0.25 s", f"![{test}]({test}.png)",
                   "(SIMULATED)", "## Measurement setup",
                   f"- {test}: support: 5.4 s of the 900 s deployment"):
        assert needle in summary, needle
    body = json.loads((out / "results.json").read_text())
    assert body["product"] == "ercot-ffr" and body["passed"] is True
    assert all({"name", "value", "limit", "passed"} <= set(r) for r in body["rules"])
    header = (out / f"{test}.csv").read_text().splitlines()[0]
    assert header.startswith("t_s,hz,required_w,delivered_w,delivered_it_w,meter_w,it_w")


def test_a_report_on_gpus_that_refuse_writes_says_so(refusing_run: Run) -> None:
    out = refusing_run.out
    assert refusing_run.wait() == 1, refusing_run.tail()  # nothing was cut: the test fails
    summary = (out / "summary.md").read_text()
    assert "**GPU errors during this test**: gpu 0: GpuNotSupported" in summary
    body = json.loads((out / "results.json").read_text())
    assert body["tests"][0]["gpu_errors"]["gpu 0: GpuNotSupported"] >= 1
