"""bench/stages.py times what it says at a tiny size (no speed is asserted)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gridtao.bench import stages
from gridtao.cli.main import main
from gridtao.hotpath.intake import Intake
from gridtao.safety.island import SafetyIsland
from gridtao.safety.writer import ParallelWriter


def test_every_stage_of_every_shed_is_timed_and_they_add_up() -> None:
    originals = (Intake.on_message, SafetyIsland.trigger_shed, ParallelWriter.submit,
                 ParallelWriter.help)
    result = stages.run(2, 2, shared=False, spacing_s=1.0)
    assert result["measured"] == 2 and result["gpus"] == 2, result["missed"]
    assert set(result["stages_ms"]) == set(stages.STAGES)
    for row in result["samples"]:
        assert all(v >= 0.0 for v in row.values()), row
        parts = (row["receive_to_intake"] + row["intake_to_island"] + row["island_to_writes"]
                 + row["writes_to_command"])
        assert parts == pytest.approx(row["receive_to_command"], abs=1e-6)
    # the seams are put back as they were
    assert (Intake.on_message, SafetyIsland.trigger_shed, ParallelWriter.submit,
            ParallelWriter.help) == originals


def test_the_command_line(tmp_path: Path) -> None:
    level = logging.getLogger("gridtao").level
    assert main(["bench", "stages", "--triggers", "0"]) == 2
    out = tmp_path / "stages.json"
    assert main(["bench", "stages", "--triggers", "1", "--gpus", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["measured"] == 1 and "commit" in result
    assert logging.getLogger("gridtao").level == level  # quieted for the run only
