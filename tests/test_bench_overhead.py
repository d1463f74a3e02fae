"""bench/overhead.py measures what it says at a tiny size (no speed or size is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from gridtao.bench.overhead import main


def test_overhead_reports_agent_and_baseline(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    # 2 s: long enough for the baseline's CPU to pass the kernel's 10 ms accounting tick.
    assert main(["--gpus", "2", "--seconds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["gpus"] == 2 and result["fast_hz"] == 100
    for name in ("agent", "poll_loop"):
        assert set(result[name]) == {"cpu_percent", "rss_mib"}
        # Both processes did work (a 100 Hz loop on 2 GPUs) and hold an interpreter's memory.
        assert result[name]["cpu_percent"] > 0 and result[name]["rss_mib"] > 10
    assert result["cpu_ratio"] == result["agent"]["cpu_percent"] / (
        result["poll_loop"]["cpu_percent"])
    assert result["command"].startswith("python -m gridtao.bench.overhead")
