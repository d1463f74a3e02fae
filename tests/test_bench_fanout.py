"""bench/fanout.py measures what it says at a tiny size (no speed is asserted)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from gridtao.bench import barethreads
from gridtao.bench.barethreads import bare_fanout
from gridtao.bench.fanout import main, run, time_triggers
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


def test_the_bare_fanout_returns_once_every_thread_slept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fan-out wakes 3 threads besides the caller, and returns only after all 4 sleeps
    of the driver call ended (a lost wake-up would fail it after ``STUCK_S``, not shorten it)."""
    slept: list[tuple[int, float, float]] = []  # thread, the sleep's length, its end

    class Clock:
        perf_counter = staticmethod(time.perf_counter)

        @staticmethod
        def sleep(s: float) -> None:
            time.sleep(s)
            slept.append((threading.get_ident(), s, time.perf_counter()))

    monkeypatch.setattr(barethreads, "time", Clock)
    interval = sys.getswitchinterval()
    t0 = time.perf_counter()
    times = bare_fanout(4, 3, 0.002)
    ended = time.perf_counter()
    calls = [(who, end) for who, s, end in slept if s == 0.002]
    assert len(times) == 3 and len(calls) == 12
    assert len({who for who, _ in calls}) == 4  # the caller and three threads
    assert all(t0 < end <= ended for _, end in calls)
    assert min(times) >= 2.0
    assert sys.getswitchinterval() == interval  # the agent's is set only while it runs
