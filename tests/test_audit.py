"""The audit trail: hash chain, tamper detection, rotation, restart, overflow, fsync policy, CLI."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridtao.cli import main
from gridtao.clock import VirtualClock
from gridtao.config import AuditConfig
from gridtao.telemetry.audit import (
    GENESIS,
    AuditTrail,
    canonical,
    read_records,
    record_hash,
    verify_files,
)


def _trail(tmp_path: Path, **over: Any) -> AuditTrail:
    cfg = AuditConfig(enabled=True, path=str(tmp_path / "audit.jsonl"), **over)
    return AuditTrail(cfg, clock=VirtualClock())


def _files(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("audit.jsonl*"))


@pytest.fixture
def written(tmp_path: Path) -> Iterator[Path]:
    """An intact trail of 1 + 20 records."""
    trail = _trail(tmp_path)
    trail.start()
    for i in range(20):
        trail.record("message", {"topic": "dispatch", "id": f"e{i}", "result": "rejected",
                                 "reason": f"bad {i}", "payload": b'{"id": "x"}'})
    trail.close()
    yield tmp_path / "audit.jsonl"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_records_form_a_chain_from_genesis(written: Path) -> None:
    records = read_records([written])
    assert [r["seq"] for r in records] == list(range(21))
    assert records[0]["kind"] == "file_start" and records[0]["prev"] == GENESIS
    assert records[0]["fields"] == {"prev_file": None, "reason": "new"}
    for a, b in zip(records, records[1:], strict=False):
        assert b["prev"] == a["hash"] == record_hash(a)
    payload = records[1]["fields"]["payload"]
    assert payload["bytes"] == 11 and payload["text"] == '{"id": "x"}'
    assert len(payload["sha256"]) == 64
    for raw, rec in zip(_lines(written), records, strict=True):
        assert raw == canonical(rec) + b"\n"  # one canonical line per record
    result = verify_files([written])
    assert result.ok and result.records == 21 and result.last_seq == 20
    assert result.last_hash == records[-1]["hash"]


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _edit_field(line: bytes) -> bytes:
    rec = json.loads(line)
    rec["fields"]["reason"] = "accepted after all"
    return canonical(rec) + b"\n"


def _edit_and_rehash(line: bytes) -> bytes:
    rec = json.loads(line)
    rec["fields"]["result"] = "accepted"
    rec["hash"] = record_hash(rec)
    return canonical(rec) + b"\n"


TAMPERS = {
    "edited field": (lambda ls: ls[:5] + [_edit_field(ls[5])] + ls[6:], 6),
    "edited and rehashed": (lambda ls: ls[:5] + [_edit_and_rehash(ls[5])] + ls[6:], 7),
    "whitespace": (lambda ls: ls[:5] + [ls[5].replace(b":", b": ", 1)] + ls[6:], 6),
    "removed": (lambda ls: ls[:5] + ls[6:], 6),
    "removed last but one": (lambda ls: ls[:-2] + ls[-1:], 20),
    "inserted copy": (lambda ls: ls[:5] + [ls[4]] + ls[5:], 6),
    "reordered": (lambda ls: ls[:5] + [ls[6], ls[5]] + ls[7:], 6),
    "removed first": (lambda ls: ls[1:], 1),
    "torn last line": (lambda ls: ls[:-1] + [ls[-1][:-10]], 21),
}


@pytest.mark.parametrize("how", list(TAMPERS))
def test_any_tampering_is_found_at_its_line(written: Path, how: str, capsys: Any) -> None:
    change, bad_line = TAMPERS[how]
    _rewrite(written, change(_lines(written)))
    result = verify_files([written])
    assert not result.ok
    assert result.line == bad_line, result
    assert main(["audit", "verify", str(written)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{written}:{bad_line}: ")


def test_cli_reports_an_intact_trail(written: Path, capsys: Any) -> None:
    assert main(["audit", "verify", str(written)]) == 0
    assert capsys.readouterr().out.startswith("OK: 21 records in 1 file, seq 0..20")
    assert main(["audit", "verify", str(written.with_name("missing.jsonl"))]) == 2


def test_rotation_keeps_one_chain_across_files(tmp_path: Path, capsys: Any) -> None:
    trail = _trail(tmp_path, rotate_bytes=4096)
    trail.start()
    for i in range(200):
        trail.record("limits", {"limits_mw": [700_000 - i] * 8, "event": None})
    trail.close()
    files = _files(tmp_path)
    assert len(files) >= 5
    assert all(f.stat().st_size <= 4096 for f in files)
    records = read_records(files)
    assert [r["seq"] for r in records] == list(range(201 + len(files) - 1))
    # Each continuation starts by naming its predecessor and carrying its last hash.
    starts = [r for r in records if r["kind"] == "file_start"]
    assert [s["fields"]["reason"] for s in starts] == ["new"] + ["rotated"] * (len(files) - 1)
    by_name = {f.name: read_records([f]) for f in files}
    for s in starts[1:]:
        prev = by_name[s["fields"]["prev_file"]]
        assert s["prev"] == prev[-1]["hash"]
    shuffled = [str(f) for f in files]
    random.Random(1).shuffle(shuffled)
    result = verify_files(shuffled)
    assert result.ok and result.records == len(records) and result.files == len(files)
    # A missing middle file breaks the chain; missing oldest files are reported, not hidden.
    assert not verify_files([str(f) for f in files if f != files[1]]).ok
    later = verify_files([str(f) for f in files[2:]])
    assert later.ok and later.starts_after is not None
    assert main(["audit", "verify", *(str(f) for f in files[2:])]) == 0
    assert "note: the chain continues from" in capsys.readouterr().out


def test_keep_files_prunes_the_oldest_rotated_files(tmp_path: Path) -> None:
    trail = _trail(tmp_path, rotate_bytes=4096, keep_files=2)
    trail.start()
    for i in range(200):
        trail.record("limits", {"limits_mw": [i] * 16})
    trail.close()
    files = _files(tmp_path)
    assert len(files) == 3  # the live file and two rotated ones
    result = verify_files([str(f) for f in files])
    assert result.ok and result.starts_after is not None


def test_a_restart_continues_the_chain_and_cuts_a_torn_record(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    trail.start()
    trail.record("agent_start", {"run": 1})
    trail.close()
    path = tmp_path / "audit.jsonl"
    with open(path, "ab") as f:  # a crash in the middle of a write
        f.write(b'{"fields":{"run":1},"hash":"ab')
    trail2 = _trail(tmp_path)
    trail2.start()
    trail2.record("agent_start", {"run": 2})
    trail2.close()
    records = read_records([path])
    assert [r["kind"] for r in records] == ["file_start", "agent_start", "tail_truncated",
                                            "agent_start"]
    assert records[2]["fields"] == {"bytes": 30}
    assert verify_files([path]).ok


def test_an_overflowing_queue_leaves_a_gap_record(tmp_path: Path) -> None:
    trail = _trail(tmp_path, queue_size=16)
    for i in range(100):  # the writer is not running yet: the queue fills up
        trail.record("message", {"i": i})
    assert trail.dropped == 84
    trail.start()
    trail.close()
    records = read_records(_files(tmp_path))
    kinds = [r["kind"] for r in records]
    assert kinds.count("message") == 16
    (gap,) = [r for r in records if r["kind"] == "gap"]
    assert gap["fields"] == {"dropped": 84, "total": 84}
    assert verify_files(_files(tmp_path)).ok


def test_unserializable_values_do_not_stop_the_writer(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    trail.start()
    trail.record("odd", {"nan": float("nan"), "inf": float("inf"), "obj": object(),
                         "tuple": (1, 2), "nested": {3: b"\xff"}})
    trail.record("after", {})
    trail.close()
    records = read_records(_files(tmp_path))
    odd = records[1]["fields"]
    assert odd["nan"] is None and odd["inf"] is None and odd["tuple"] == [1, 2]
    assert odd["obj"].startswith("<object") and odd["nested"]["3"]["bytes"] == 1
    assert records[2]["kind"] == "after"
    assert verify_files(_files(tmp_path)).ok


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_fsync_policy(tmp_path: Path, policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    trail = _trail(tmp_path, fsync=policy, fsync_interval_s=3600)
    trail.start()  # the first file's creation is always made durable
    synced: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    for i in range(10):
        trail.record("message", {"i": i})
    assert trail.flush()
    expected = {"always": 10, "interval": 0, "never": 0}[policy]
    assert len(synced) == expected
    trail.close()  # close makes everything durable, except with "never"
    assert len(synced) == expected + (0 if policy == "never" else 1)
    assert verify_files(_files(tmp_path)).ok


def test_record_stamps_wall_time_when_called(tmp_path: Path) -> None:
    clock = VirtualClock()
    trail = AuditTrail(AuditConfig(enabled=True, path=str(tmp_path / "audit.jsonl")), clock=clock)
    trail.record("a", {})
    clock.advance(5.0)
    trail.start()
    trail.close()
    rec = [r for r in read_records(_files(tmp_path)) if r["kind"] == "a"][0]
    assert rec["t"] == clock.wall() - 5.0
