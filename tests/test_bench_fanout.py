"""bench/fanout.py measures what it says at a tiny size (no speed is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from gridtao.bench.fanout import main, run, time_triggers
from gridtao.bench.threadfloor import bare_fanout
from gridtao.config.agent import SimConfig


def test_fanout_reports_every_measure(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    assert main(["--gpus", "2", "--triggers", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("one_write_ms", "parallel_ms", "parallel_commanded_ms", "sequential_ms",
                "cpu_per_write_us", "bare_threads_ms"):
        assert set(result[key]) == {"p50", "p99", "max"} and result[key]["p50"] > 0
    assert result["gpus"] == 2 and result["triggers"] == 3
    for key in ("one_write_ms", "cpu_per_write_us", "parallel_commanded_ms"):
        assert result["shared"][key]["p50"] > 0  # the same, on the machine-wide device
    assert result["shared_vs_in_process_commanded_p50"] > 0


def test_sequential_baseline_writes_every_gpu_once_per_trigger() -> None:
    # The driver latency makes each write measurable: a sequential trigger takes at least the
    # sum of its writes' simulated driver calls.
    sim = SimConfig(count=3, set_latency_ms=2.0)
    times, commanded = time_triggers(3, 2, sim, parallel=False)
    assert len(times) == 2 and min(times) >= 3 * 2.0
    # Commanded once the last set returned: every set call, not the last read-back.
    assert all(3 * 2.0 <= c <= t for c, t in zip(commanded, times, strict=True))
    assert run(1, 1, SimConfig(count=1))["gpus"] == 1


def test_the_bare_floor_waits_for_every_thread() -> None:
    # Each of the 4 sleeps lasts 5 ms: a fan-out returns only once every thread signalled back,
    # so never before one of them (a lost wake-up would hang it, not shorten it).
    times = bare_fanout(4, 3, 0.005)
    assert len(times) == 3 and min(times) >= 5.0
    assert bare_fanout(1, 2, 0.001)[0] >= 1.0  # one GPU: the calling thread alone
