"""The audit trail: hash chain, tamper detection, rotation, restart, overflow, fsync policy, CLI."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

from gridtao.cli.main import main
from gridtao.clock import VirtualClock
from gridtao.config.agent import AuditConfig
from gridtao.records.audit import GENESIS, AuditTrail, canonical, record_hash
from gridtao.records.audit_verify import read_records, verify_files

FsyncPolicy = Literal["always", "interval", "never"]


def _trail(tmp_path: Path, config: AuditConfig | None = None) -> AuditTrail:
    """An enabled trail at ``tmp_path/audit.jsonl`` with ``config``'s other settings."""
    cfg = dataclasses.replace(config or AuditConfig(), enabled=True,
                              path=str(tmp_path / "audit.jsonl"))
    return AuditTrail(cfg, clock=VirtualClock())


def _files(tmp_path: Path) -> list[Path]:
    """The trail's files in chain order: rotated ones by name (first seq), the live one last."""
    live = tmp_path / "audit.jsonl"
    return [*sorted(p for p in tmp_path.glob("audit.jsonl.*")), live]


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
    for a, b in itertools.pairwise(records):
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


TAMPERS: dict[str, tuple[Callable[[list[bytes]], list[bytes]], int]] = {
    "edited field": (lambda ls: [*ls[:5], _edit_field(ls[5]), *ls[6:]], 6),
    "edited and rehashed": (lambda ls: [*ls[:5], _edit_and_rehash(ls[5]), *ls[6:]], 7),
    "whitespace": (lambda ls: [*ls[:5], ls[5].replace(b":", b": ", 1), *ls[6:]], 6),
    "removed": (lambda ls: ls[:5] + ls[6:], 6),
    "removed last but one": (lambda ls: ls[:-2] + ls[-1:], 20),
    "inserted copy": (lambda ls: [*ls[:5], ls[4], *ls[5:]], 6),
    "reordered": (lambda ls: [*ls[:5], ls[6], ls[5], *ls[7:]], 6),
    "removed first": (lambda ls: ls[1:], 1),
    "torn last line": (lambda ls: [*ls[:-1], ls[-1][:-10]], 21),
}


@pytest.mark.parametrize("how", list(TAMPERS))
def test_any_tampering_is_found_at_its_line(written: Path, how: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    change, bad_line = TAMPERS[how]
    _rewrite(written, change(_lines(written)))
    result = verify_files([written])
    assert not result.ok
    assert result.line == bad_line, result
    assert main(["audit", "verify", str(written)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{written}:{bad_line}: ")


def test_two_agents_trails_given_together_are_each_verified_on_their_own(
        written: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # audit-*.jsonl* on a host with two agents: two chains, not one broken one.
    other = written.with_name("audit-node-b.jsonl")
    other.write_bytes(written.read_bytes())
    assert main(["audit", "verify", str(written), str(other)]) == 0
    out = capsys.readouterr().out
    assert f"{written}: OK: 21 records" in out and f"{other}: OK: 21 records" in out
    _rewrite(other, [*_lines(other)[:3], *_lines(other)[4:]])  # a record removed in b's
    assert main(["audit", "verify", str(written), str(other)]) == 1
    captured = capsys.readouterr()
    assert f"{written}: OK" in captured.out and f"{other}:4: " in captured.out
    assert f"{other}: TAMPERED" in captured.err


def test_cli_reports_an_intact_trail(written: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(written)]) == 0
    assert capsys.readouterr().out.startswith("OK: 21 records in 1 file, seq 0..20")
    assert main(["audit", "verify", str(written.with_name("missing.jsonl"))]) == 2


def test_rotation_keeps_one_chain_across_files(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    trail = _trail(tmp_path, AuditConfig(rotate_bytes=4096))
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
    trail = _trail(tmp_path, AuditConfig(rotate_bytes=4096, keep_files=2))
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


@pytest.mark.parametrize("last", [
    b"[" * 100_000 + b"]" * 100_000 + b"\n",  # nested past the JSON parser's depth
    b'{"seq":1e400,"hash":"a","prev":null,"kind":"x","t":1,"fields":{}}\n',  # seq infinite
    b'{"seq":"7","hash":"a","prev":null,"kind":"x","t":1,"fields":{}}\n',  # seq a string
])
def test_a_damaged_last_record_is_set_aside_and_verify_says_where(
        tmp_path: Path, last: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(last)
    assert main(["audit", "verify", str(path)]) == 1  # found, one line, no traceback
    assert "audit.jsonl:1: " in capsys.readouterr().out
    trail = _trail(tmp_path)
    trail.start()  # the agent's start: a new chain, the damaged file kept beside it
    trail.record("agent_start", {"run": 1})
    trail.close()
    (aside,) = tmp_path.glob("audit.jsonl.unreadable-*")
    assert aside.read_bytes() == last
    assert [r["kind"] for r in read_records([path])] == ["file_start", "agent_start"]


def test_an_overflowing_queue_leaves_a_gap_record(tmp_path: Path) -> None:
    trail = _trail(tmp_path, AuditConfig(queue_size=16))
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
                         "tuple": (1, 2), "nested": {3: b"\xff"},
                         "text": "na\u00efve \u2713", "surrogate": "\ud800"})
    trail.record("after", {})
    trail.close()
    records = read_records(_files(tmp_path))
    odd = records[1]["fields"]
    assert odd["nan"] is None and odd["inf"] is None and odd["tuple"] == [1, 2]
    assert odd["obj"].startswith("<object") and odd["nested"]["3"]["bytes"] == 1
    assert odd["text"] == "na\u00efve \u2713" and odd["surrogate"] == "\ud800"
    assert records[2]["kind"] == "after"
    assert verify_files(_files(tmp_path)).ok


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_fsync_policy(tmp_path: Path, policy: FsyncPolicy,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    trail = _trail(tmp_path, AuditConfig(fsync=policy, fsync_interval_s=3600))
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
    rec = next(r for r in read_records(_files(tmp_path)) if r["kind"] == "a")
    assert rec["t"] == clock.wall() - 5.0


# ---- what the intake reports (virtual time, the real island over simulated GPUs) -------------


def test_the_intake_reports_every_verdict_and_event_change() -> None:
    from gridtao.config.agent import FrequencyTrigger, SimConfig
    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.gpu.sim.nvml import SimNvml
    from gridtao.hotpath.intake import Intake
    from gridtao.products.frequency import FrequencyMonitor, level_key
    from gridtao.safety.island import SafetyIsland
    from gridtao.wire import messages as wire

    clock = VirtualClock()
    sim = SimNvml.from_config(SimConfig(count=2, noise_w=0.0), clock)
    backend = NvmlBackend(sim)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=1.0, max_event_s=600)
    trig = FrequencyTrigger(hz=49.7, reduction_fraction=0.2, min_hold_s=0.5, recovery_s=0.2)
    topics = wire.Topics("gridtao/audit", "n1")
    decisions: list[tuple[str, dict[str, object]]] = []
    intake = Intake(island, topics, clock=clock, monitor=FrequencyMonitor([trig]),
                    max_payload_bytes=4096, on_decision=lambda k, f: decisions.append((k, f)))
    island.start()
    island.update_draw([600_000.0, 600_000.0])
    island.arm(level_key(trig), 0.8)

    def send(topic: str, raw: bytes) -> None:
        intake.on_message(topic, raw, received_at=clock.now(), received_wall=clock.wall())

    def run(seconds: float) -> None:
        for _ in range(round(seconds / 0.05)):
            clock.advance(0.05)
            island.tick()
            intake.on_tick()

    try:
        send(topics.dispatch, b'{"id": "d1", "kind": "shed", "fraction": 0.5, "duration_s": 1}')
        send(topics.dispatch, b'{"id": "d1", "kind": "shed", "fraction": 0.5, "duration_s": 1}')
        send(topics.dispatch, b'{"id": "bad", "kind": "shed"}')
        send(topics.frequency, b'{"t": 1, "hz": 99}')
        send(topics.frequency, b'{"t": 1, "hz": 50.0}')  # telemetry: no record
        run(2.5)  # d1: duration over, 1 s ramp, ended
        send(topics.frequency, b'{"t": 2, "hz": 49.6}')
        send(topics.dispatch, b'{"id": "r1", "kind": "release", "ref": "nothing"}')
        run(0.1)
        (freq_event,) = island.view().active_event_ids
        send(topics.dispatch, b'{"id": "r2", "kind": "release", "ref": "%s"}'
             % freq_event.encode())
        run(6.0)  # the ramp-out, then its tail up to the resting limits
    finally:
        island.close()
        backend.close()
    summary = [
        (k, f.get("result") or f.get("why") or f.get("kind"), f.get("id") or f.get("event"))
        for k, f in decisions
    ]
    assert summary == [
        ("message", "accepted", "d1"), ("event_started", "shed", "d1"),
        ("message", "duplicate", "d1"),
        ("message", "rejected", "bad"),
        ("message", "rejected", None),
        ("event_released", "duration over", "d1"), ("event_ended", "duration over", "d1"),
        ("message", "accepted", freq_event), ("event_started", "frequency", freq_event),
        ("message", "rejected", "r1"),
        ("message", "accepted", "r2"),
        ("event_released", "release dispatch 'r2'", freq_event),
        ("event_ended", "release dispatch 'r2'", freq_event),
    ]
    rejected = [f for k, f in decisions if k == "message" and f["result"] == "rejected"]
    assert rejected[0]["reason"] == "missing field 'fraction'"
    assert "hz" in str(rejected[1]["reason"]) and rejected[1]["topic"] == "frequency"
    assert rejected[2]["reason"] == "no active event 'nothing' to release"
    started = decisions[1][1]
    assert started["duration_s"] == 1.0 and started["target_mw"] == 600_000.0
    assert decisions[0][1]["payload"] == b'{"id": "d1", "kind": "shed", "fraction": 0.5, ' \
        b'"duration_s": 1}'
