"""A full disk under the journal and the audit trail is loud while it lasts: one log line per
change of problem and one when writing works again, the metrics, and the retained status.

The disk is a fake that fails the way a full one does (``OSError(ENOSPC)`` from the write), or a
state directory taken away under a running agent: no root, no real full file system.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import pytest
from broker import MosquittoBroker, Subscriber
from nodes import running, steady_sim
from prometheus_client import CollectorRegistry
from waiting import wait_until

from gridtao.clock import MonotonicClock, VirtualClock
from gridtao.config.agent import AuditConfig, Config, config_from_mapping
from gridtao.durable import write_atomically
from gridtao.records.audit import AuditTrail
from gridtao.records.audit_verify import read_records, verify_files
from gridtao.records.health import WriteHealth, describe_error
from gridtao.records.journal import Journal, JournalEvent, JournalState, load_journal
from gridtao.records.ledger import Ledger
from gridtao.telemetry.collectors import RecordsCollector

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

T0 = 1_763_900_000.0
WAIT_S = 15.0  # generous: nothing here measures speed
ENOSPC = "No space left on device (ENOSPC)"


class Disk:
    """A disk that can be filled. The journal writes through :meth:`write_atomically` and the
    audit trail opens its files through :meth:`open`; while :attr:`error` is set, every write
    raises a fresh ``OSError`` with that errno, as a full disk's write does."""

    def __init__(self) -> None:
        self.error: int | None = None
        self.no_new_files = False  # opening a file fails too (no room for its entry)
        self.journal_attempts = 0

    def fill(self, code: int = errno.ENOSPC) -> None:
        self.error = code

    def free(self) -> None:
        self.error = None

    def check(self) -> None:
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))

    def write_atomically(self, path: Path, data: bytes) -> None:
        self.journal_attempts += 1
        self.check()
        write_atomically(path, data)

    def open(self, path: Path, mode: str) -> BinaryIO:
        if self.no_new_files:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raw = _DiskFile(self, path, mode.replace("b", ""))
        return io.BufferedRandom(raw) if "+" in mode else io.BufferedWriter(raw)


class _DiskFile(io.FileIO):
    """A real file whose writes fail while its :class:`Disk` is full."""

    def __init__(self, disk: Disk, path: Path, mode: str) -> None:
        super().__init__(path, mode)
        self._disk = disk

    def write(self, b: ReadableBuffer, /) -> int:
        self._disk.check()
        return super().write(b)


def _errors(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == logger and r.levelno >= logging.ERROR]


def _recoveries(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == logger and "writing works again" in r.getMessage()]


# ---- the health tracker ----------------------------------------------------------------------


def test_a_reason_names_the_problem_not_the_file() -> None:
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/state/.journal.json.tmp")
    assert describe_error(err) == ENOSPC
    assert describe_error(ValueError("Out of range float")) == "ValueError: Out of range float"


def test_health_logs_once_per_change_of_problem_and_once_on_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("gridtao.test.health")
    health = WriteHealth("journal /j", logger=log, consequence="events are not journaled")
    caplog.set_level(logging.INFO, logger=log.name)
    health.succeeded()
    assert health.status() == "ok" and health.healthy and caplog.records == []
    for _ in range(5):
        health.failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert health.status() == f"failing: {ENOSPC}" and not health.healthy
    assert _errors(caplog, log.name) == [
        f"journal /j: cannot write: {ENOSPC}; events are not journaled"]
    health.failed(OSError(errno.EIO, os.strerror(errno.EIO)))  # a new problem: said again
    assert health.problem == "Input/output error (EIO)"
    assert len(_errors(caplog, log.name)) == 2
    health.succeeded()
    health.succeeded()
    assert health.status() == "ok" and health.write_errors == 6
    assert _recoveries(caplog, log.name) == [
        "journal /j: writing works again after 6 failed writes (last: Input/output error (EIO))"]


# ---- the journal -----------------------------------------------------------------------------


def _event(event_id: str, started: float = T0) -> JournalEvent:
    return JournalEvent(event_id, "shed", 800_000.0, 1_200_000.0, (600_000.0, 600_000.0),
                        (400_000, 400_000), started, started + 600)


def _state() -> JournalState:
    return JournalState(node="n1", gpu_uuids=("GPU-a", "GPU-b"),
                        initial_limits_mw=(700_000, 650_000), first_started_wall=T0 - 100,
                        alive_wall=T0, pid=42)


@pytest.fixture
def disk() -> Disk:
    return Disk()


@pytest.fixture
def journal(tmp_path: Path, disk: Disk) -> Iterator[Journal]:
    """A started journal writing through ``disk``; no heartbeat within a test (an hour)."""
    j = Journal(tmp_path / "j.json", clock=VirtualClock(wall_offset=T0), heartbeat_s=3600.0,
                writer=disk.write_atomically)
    j.open(_state())
    j.start()
    yield j
    j.close(clean=True)


def test_a_full_disk_mid_event_makes_the_journal_loud_once(
    journal: Journal, disk: Disk, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gridtao.records.journal")
    registry = CollectorRegistry()
    RecordsCollector(lambda: {"journal": journal.health, "audit": None}, registry=registry)
    value = registry.get_sample_value
    assert value("gridtao_journal_healthy") == 1.0
    assert value("gridtao_journal_write_errors_total") == 0.0
    assert value("gridtao_audit_healthy") is None  # the trail is off: no sample

    disk.fill()
    for i in range(5):  # the event starts, then changes: every write fails
        journal.add_event(_event(f"e{i}", T0 + i))
        assert journal.flush() is False
    assert journal.health.status() == f"failing: {ENOSPC}"
    assert value("gridtao_journal_healthy") == 0.0
    assert value("gridtao_journal_write_errors_total") == journal.failures == 5
    errors = _errors(caplog, "gridtao.records.journal")
    assert len(errors) == 1, errors  # once per problem, not once per write
    assert str(journal.path) in errors[0] and ENOSPC in errors[0]
    assert "survive a crash" in errors[0]
    on_disk = load_journal(journal.path)
    assert on_disk is not None and on_disk.events == ()  # what a crash now would find


def test_the_journal_clears_and_logs_once_when_writes_work_again(
    journal: Journal, disk: Disk, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gridtao.records.journal")
    disk.fill()
    journal.add_event(_event("e1"))
    assert journal.flush() is False
    disk.free()
    journal.add_event(_event("e2", T0 + 1))
    assert journal.flush() is True
    journal.remove_event("e2")
    assert journal.flush() is True
    assert journal.health.status() == "ok" and journal.health.write_errors == 1
    assert _recoveries(caplog, "gridtao.records.journal") == [
        f"journal {journal.path}: writing works again after 1 failed writes (last: {ENOSPC})"]
    on_disk = load_journal(journal.path)  # the event held through the failure is journaled now
    assert on_disk is not None and [e.event_id for e in on_disk.events] == ["e1"]


def test_a_failing_journal_is_retried_at_the_next_change_not_in_a_loop(
    journal: Journal, disk: Disk,
) -> None:
    disk.fill()
    journal.add_event(_event("e1"))
    assert journal.flush() is False
    attempts = disk.journal_attempts
    time.sleep(0.3)  # a writer retrying in a loop would make thousands of attempts meanwhile
    assert disk.journal_attempts == attempts
    journal.add_event(_event("e2", T0 + 1))
    assert journal.flush() is False
    assert disk.journal_attempts == attempts + 1


def test_a_failing_journal_is_retried_at_the_heartbeat_with_no_change(
    tmp_path: Path, disk: Disk, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gridtao.records.journal")
    j = Journal(tmp_path / "j.json", clock=VirtualClock(wall_offset=T0), heartbeat_s=0.05,
                writer=disk.write_atomically)
    j.open(_state())
    j.start()
    try:
        disk.fill(errno.EDQUOT)
        j.add_event(_event("e1"))
        wait_until(lambda: not j.health.healthy, "the journal to fail", timeout_s=WAIT_S)
        disk.free()
        wait_until(lambda: j.health.healthy, "the journal to recover by itself",
                   timeout_s=WAIT_S)
        on_disk = load_journal(j.path)
        assert on_disk is not None and [e.event_id for e in on_disk.events] == ["e1"]
        assert len(_recoveries(caplog, "gridtao.records.journal")) == 1
        assert len(_errors(caplog, "gridtao.records.journal")) == 1
    finally:
        j.close(clean=True)


# ---- the audit trail -------------------------------------------------------------------------


def _trail(tmp_path: Path, disk: Disk, **over: Any) -> AuditTrail:
    cfg = dataclasses.replace(AuditConfig(), enabled=True, path=str(tmp_path / "audit.jsonl"),
                              fsync="never", **over)
    return AuditTrail(cfg, clock=VirtualClock(wall_offset=T0), opener=disk.open)


def test_a_full_disk_under_the_audit_trail_is_loud_once_and_clears(
    tmp_path: Path, disk: Disk, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gridtao.audit")
    trail = _trail(tmp_path, disk)
    registry = CollectorRegistry()
    RecordsCollector(lambda: {"journal": None, "audit": trail.health}, registry=registry)
    value = registry.get_sample_value
    trail.start()
    try:
        trail.record("message", {"i": -1})
        assert trail.flush()
        assert trail.health.status() == "ok" and value("gridtao_audit_healthy") == 1.0

        disk.fill()
        for i in range(300):  # more than the file's buffer holds: some are dropped
            trail.record("message", {"i": i, "pad": "x" * 100})
            if i % 30 == 0:
                assert trail.flush()
        assert trail.flush()
        assert trail.health.status() == f"failing: {ENOSPC}"
        assert value("gridtao_audit_healthy") == 0.0
        assert (value("gridtao_audit_write_errors_total") or 0) > 1
        assert value("gridtao_journal_healthy") is None
        assert trail.dropped > 0
        errors = _errors(caplog, "gridtao.audit")
        assert len(errors) == 1 and str(trail.path) in errors[0], errors
        lost_lines = [r for r in caplog.records if "records lost" in r.getMessage()]
        assert lost_lines == []  # not while it lasts: once, with the count, when it is over

        disk.free()  # no new record needed: the writer retries by itself
        wait_until(lambda: trail.health.healthy, "the audit trail to recover",
                   timeout_s=WAIT_S)
        trail.record("after", {})
        assert trail.flush()
        assert value("gridtao_audit_healthy") == 1.0
        assert len(_recoveries(caplog, "gridtao.audit")) == 1
        assert len([r for r in caplog.records if "records lost" in r.getMessage()]) == 1
    finally:
        trail.close()
    records = read_records([trail.path])
    (gap,) = [r for r in records if r["kind"] == "gap"]
    assert gap["fields"]["dropped"] == trail.dropped
    kept = [r["fields"]["i"] for r in records if r["kind"] == "message"]
    assert kept[:2] == [-1, 0] and len(kept) + trail.dropped == 301
    assert records[-1]["kind"] == "after"
    assert verify_files([trail.path]).ok  # what the buffer held went out whole, in order


def test_a_rotation_cut_short_by_a_full_disk_is_finished_when_it_frees(
    tmp_path: Path, disk: Disk,
) -> None:
    trail = _trail(tmp_path, disk, rotate_bytes=4096)
    trail.start()
    try:
        disk.no_new_files = True  # the rotated file's successor cannot be created
        for i in range(60):  # past rotate_bytes: the rotation starts, its new file fails
            trail.record("message", {"i": i, "pad": "x" * 100})
        assert trail.flush()
        assert not trail.health.healthy
        disk.no_new_files = False
        wait_until(lambda: trail.health.healthy, "the rotation to be finished",
                   timeout_s=WAIT_S)
        trail.record("after", {})
        assert trail.flush()
    finally:
        trail.close()
    files = [*sorted(tmp_path.glob("audit.jsonl.*")), trail.path]
    assert len(files) == 2
    assert verify_files(files).ok
    records = read_records(files)
    assert records[-1]["kind"] == "after"
    assert [r["kind"] for r in records].count("file_start") == 2


# ---- the ledger and the agent ----------------------------------------------------------------


def _config(tmp_path: Path, **over: Any) -> Config:
    base: dict[str, Any] = {
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "journal": {"path": str(tmp_path / "journal" / "j.json"), "heartbeat_s": 0.05},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value}
    return config_from_mapping(base, source="<test>")


def test_the_ledger_reports_each_writer(tmp_path: Path) -> None:
    ledger = Ledger(_config(tmp_path, audit={"enabled": False}), clock=VirtualClock(),
                    node_id="n1", uuids=("GPU-a",), default_mw=(700_000,),
                    found_mw=(700_000,))
    try:
        assert ledger.records_status() == {"journal": "ok", "audit": "off"}
        assert ledger.health["audit"] is None and ledger.journal is not None
        ledger.journal.health.failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        assert ledger.records_status() == {"journal": f"failing: {ENOSPC}", "audit": "off"}
    finally:
        ledger.abandon()


def test_a_running_agent_says_its_journal_fails_in_its_status_and_metrics(
    mqtt_broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The journal's folder taken away under a running agent (its writes then fail as on a full
    disk, with ENOENT), then given back."""
    caplog.set_level(logging.INFO, logger="gridtao.records.journal")
    cfg = config_from_mapping({
        "gpus": {"sim": {"count": 2, "noise_w": 0.0, "seed": 7}},
        "mqtt": {"port": mqtt_broker.port, "node_id": "full", "prefix": "gridtao/e2e-full",
                 "keepalive_s": 5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5,
                 "status_period_s": 0.1},
        "metrics": {"enabled": False},
        "audit": {"path": str(tmp_path / "audit.jsonl"), "fsync": "never"},
        "journal": {"path": str(tmp_path / "journal" / "j.json"), "heartbeat_s": 0.05},
    }, source="<test full>")
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    folder = tmp_path / "journal"
    with running(mqtt_broker, cfg, sim, serve=True) as node, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, node.topics.status) as status:

        def records() -> Any:
            if not status.messages:
                return None
            return json.loads(status.messages[-1].payload).get("records")

        wait_until(lambda: records() == {"journal": "ok", "audit": "ok"},
                   "a status with healthy records", timeout_s=WAIT_S)
        assert node.value("gridtao_journal_healthy") == 1.0
        assert node.value("gridtao_audit_healthy") == 1.0

        shutil.rmtree(folder)
        enoent = "failing: No such file or directory (ENOENT)"
        wait_until(lambda: records() == {"journal": enoent, "audit": "ok"},
                   "a status saying the journal fails", timeout_s=WAIT_S)
        assert node.value("gridtao_journal_healthy") == 0.0
        assert node.value("gridtao_journal_write_errors_total") >= 1
        assert len(_errors(caplog, "gridtao.records.journal")) == 1

        folder.mkdir()
        wait_until(lambda: records() == {"journal": "ok", "audit": "ok"},
                   "a status saying the journal works again", timeout_s=WAIT_S)
        assert node.value("gridtao_journal_healthy") == 1.0
        assert len(_recoveries(caplog, "gridtao.records.journal")) == 1
        assert load_journal(folder / "j.json") is not None


def test_a_short_write_on_a_full_disk_never_replaces_the_good_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write may write part of the data without an error as the disk fills; the next write
    then raises ENOSPC. The old file must stay whole and no temporary file be left."""
    import errno
    import os

    target = tmp_path / "journal.json"
    write_atomically(target, b'{"good": true}')
    real_write = os.write
    calls = {"n": 0}

    def filling(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:4])  # a short write, no error
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", filling)
    with pytest.raises(OSError):
        write_atomically(target, b'{"good": false, "padding": "xxxxxxxxxxxxxxxx"}')
    monkeypatch.undo()
    assert target.read_bytes() == b'{"good": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["journal.json"]


def test_a_journal_marked_stopped_is_no_crash(tmp_path: Path) -> None:
    from gridtao.records.journal import JournalEvent, JournalState, to_json

    folder = tmp_path / "journal"
    folder.mkdir()
    ended = JournalEvent("r3", "shed", 480_000.0, 700_000.0, (700_000.0,), (480_000,),
                         1_763_900_000.0, None)
    for stopped, crashed in ((True, False), (False, True)):
        (folder / "j.json").write_bytes(to_json(JournalState(
            node="n1", gpu_uuids=("GPU-a",), initial_limits_mw=(700_000,),
            first_started_wall=1_763_899_000.0, alive_wall=1_763_900_001.0, pid=42,
            events=() if stopped else (ended,), stopped=stopped)))
        ledger = Ledger(_config(tmp_path, audit={"enabled": False}), clock=VirtualClock(),
                        node_id="n1", uuids=("GPU-a",), default_mw=(700_000,),
                        found_mw=(700_000,))
        try:
            assert ledger.crashed is crashed
        finally:
            ledger.abandon()


def test_a_gpu_raised_while_no_agent_ran_keeps_the_operators_limit(tmp_path: Path) -> None:
    from gridtao.records.journal import JournalState, to_json

    # The crashed run rested GPU a at 500 W and b at 600 W and left both capped at 400 W. While
    # no agent ran an operator raised a to 650 W (an agent never writes above a resting limit,
    # so that was someone else); b is still at the crashed run's cap.
    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / "j.json").write_bytes(to_json(JournalState(
        node="n1", gpu_uuids=("GPU-a", "GPU-b"), initial_limits_mw=(500_000, 600_000),
        first_started_wall=1_763_899_000.0, alive_wall=1_763_900_001.0, pid=42)))
    ledger = Ledger(_config(tmp_path, audit={"enabled": False}), clock=VirtualClock(),
                    node_id="n1", uuids=("GPU-a", "GPU-b"), default_mw=(700_000, 700_000),
                    found_mw=(650_000, 400_000))
    try:
        assert ledger.crashed
        assert ledger.initial_limits_mw == [650_000, 600_000]  # the stop restores these
        assert ledger.raised_while_down == [(0, 500_000, 650_000)]
    finally:
        ledger.abandon()
