"""gridtao/prequal/summary.py renders the scorer's JSON as it is, failures in bold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gridtao.prequal.summary import main, rows

RESULT = {
    "product": "ffr", "workload": "steady",
    "tests": [{"name": "step-49.7Hz", "passed": False, "rules": [
        {"name": "support_duration", "value": 3.01, "limit": 5.0, "passed": False, "unit": "s",
         "op": ">="},
        {"name": "steady_state", "value": 1.19, "limit": [-5.0, 20.0], "passed": True,
         "unit": "%", "op": "in"},
        {"name": "ramp_out_rate", "value": None, "limit": 20.0, "passed": False, "unit": "%/s",
         "op": "<="},
    ]}],
}


def test_rows_show_every_rule_and_flag_failures() -> None:
    table = rows([RESULT])
    assert len(table) == 3
    row = table[2]
    assert "| ffr | step-49.7Hz | steady | **FAIL** |" in row
    assert "**support_duration 3.01 (>= 5 s)**" in row
    assert "steady_state 1.19 ([-5, 20] %)" in row and "**steady_state" not in row
    assert "**ramp_out_rate n/a (<= 20 %/s)**" in row


def test_main_reads_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ffr.json"
    path.write_text(json.dumps(RESULT), encoding="utf-8")
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "step-49.7Hz" in out and "date not recorded" in out
    assert main([]) == 2


def test_a_score_file_is_read_and_anything_else_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scored = {k: v for k, v in RESULT.items() if k != "workload"} | {"source": "rec.csv"}
    (tmp_path / "score.json").write_text(json.dumps(scored), encoding="utf-8")
    assert main([str(tmp_path / "score.json")]) == 0
    assert "| recorded |" in capsys.readouterr().out
    (tmp_path / "latency.json").write_text(json.dumps({"measures": {}}), encoding="utf-8")
    (tmp_path / "junk.json").write_bytes(b"\xff\xfe")
    for name in ("latency.json", "junk.json", "missing.json"):
        assert main([str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gridtao: error: {tmp_path / name}: ") and err.count("\n") == 1
