"""Acks a stop could not deliver, kept for the next start (gridtao/records/unsent.py)."""

from __future__ import annotations

from pathlib import Path

from gridtao.records.unsent import UnsentAck, keep, take, unsent_path


def test_kept_acks_come_back_once_and_junk_lines_are_skipped(tmp_path: Path) -> None:
    path = unsent_path(str(tmp_path / "journal-n1.json"), "n1")
    assert path == tmp_path / "unsent-acks-n1.jsonl" and take(path) == []
    acks = [UnsentAck("p/nodes/n1/ack", b'{"id":"e1","ended_at":1.5}', 1),
            UnsentAck("p/nodes/n1/ack", b'{"id":"e2","ended_at":1.5}', 1)]
    keep(path, acks)
    with open(path, "a") as f:  # a torn or foreign line is not an ack
        f.write('{"topic": "x"}\nnot json\n{"topic": "t", "payload": "p", "qos": 0}\n')
    assert take(path) == acks
    assert not path.exists() and take(path) == []
