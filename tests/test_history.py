"""The agent's own minute history: store, aggregator, recorder, CSV import, synthetic history,
the daily shape (also in the simulator's workloads) and the ``gridtao history`` commands."""

from __future__ import annotations

import itertools
import logging
import os
import random
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from waiting import wait_until

from gridtao.app.options import default_node_id
from gridtao.cli.main import main
from gridtao.clock import VirtualClock
from gridtao.gpu.sim.daily import DailyShape
from gridtao.gpu.sim.workloads import inference, make_workload
from gridtao.history import (
    Batch,
    HistoryError,
    HistoryRecorder,
    HistoryStore,
    MinuteAggregator,
    MinuteRow,
    import_csv,
    synthetic_minutes,
)

# 2025-11-24 00:00:00 UTC, a Monday.
MONDAY = 1_763_942_400
DAY = 86_400


def _row(start_s: int, mean: float = 1000.0, *, limit: float | None = 5600.0,
         event_s: float = 0.0) -> MinuteRow:
    return MinuteRow(start_s, mean, mean * 0.9, mean * 60.0, limit, event_s)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HistoryStore]:
    with HistoryStore.open(tmp_path / "h" / "history.sqlite3") as s:
        yield s


# -- store ---------------------------------------------------------------------------------


def test_store_round_trip_on_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "history.sqlite3"
    rows = [_row(MONDAY + 60 * i, 1000.0 + i) for i in range(5)]
    rows[2] = _row(MONDAY + 120, 500.0, limit=None, event_s=12.5)
    with HistoryStore.open(path) as s:
        assert s.write(rows) == 5
        assert s.journal_mode == "wal"
        assert s.rows(MONDAY, MONDAY + 300) == rows
        assert s.rows(MONDAY + 60, MONDAY + 180) == rows[1:3]  # half-open
        assert s.latest_start_s() == MONDAY + 240
        assert s.count() == 5
    # WAL is a property of the file: another connection sees it too.
    other = sqlite3.connect(path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    with HistoryStore.open(path) as s:
        assert s.rows(0, 2**40) == rows
        series = s.series(MONDAY, MONDAY + 300)
    assert series.start_s.dtype == np.int64 and series.it_mean_w.dtype == np.float64
    assert series.start_s.tolist() == [r.start_s for r in rows]
    assert series.it_mean_w.tolist() == [r.it_mean_w for r in rows]
    assert series.it_p10_w.tolist() == [r.it_p10_w for r in rows]


def test_store_replaces_a_minute_and_reads_empty_ranges(store: HistoryStore) -> None:
    assert store.latest_start_s() is None
    assert len(store.series(0, 10).start_s) == 0
    store.write([_row(MONDAY, 100.0)])
    store.write([_row(MONDAY, 200.0)])
    assert [r.it_mean_w for r in store.rows(MONDAY, MONDAY + 60)] == [200.0]
    assert store.write([]) == 0


def test_prune_removes_only_rows_older_than_the_retention(store: HistoryStore) -> None:
    now = MONDAY + 10 * DAY
    store.write([_row(MONDAY + d * DAY) for d in range(10)])
    assert store.prune(now, retention_days=3.5) == 7  # days 0..6 start more than 3.5 d ago
    assert [r.start_s for r in store.rows(0, 2**40)] == [MONDAY + d * DAY for d in (7, 8, 9)]
    assert store.prune(now, retention_days=3.5) == 0
    with pytest.raises(ValueError):
        store.prune(now, retention_days=0)


def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    path.write_bytes(b"this is not a database, just some text " * 200)
    with pytest.raises(HistoryError) as e:
        HistoryStore.open(path)
    assert str(path) in str(e.value) and "not a SQLite database" in str(e.value)
    assert e.value.path == str(path)


def test_a_damaged_database_is_named_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    with HistoryStore.open(path) as s:
        s.write([_row(MONDAY + 60 * i) for i in range(3000)])
    (tmp_path / "history.sqlite3-wal").unlink(missing_ok=True)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page: 4 * page] = os.urandom(2 * page)  # leave the header, wreck table pages
    path.write_bytes(bytes(data))
    with pytest.raises(HistoryError) as e:
        HistoryStore.open(path)
    assert str(path) in str(e.value) and "corrupt" in str(e.value)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    HistoryStore.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(HistoryError, match="newer gridtao"):
        HistoryStore.open(path)


def test_a_full_disk_is_named(store: HistoryStore) -> None:
    # SQLite's page cap gives the real SQLITE_FULL a full disk gives.
    store._conn.execute("PRAGMA max_page_count = 8")
    with pytest.raises(HistoryError) as e:
        store.write([_row(MONDAY + 60 * i) for i in range(5000)])
    assert str(store.path) in str(e.value) and "disk full" in str(e.value)
    assert store.count() == 0  # one transaction: nothing half-written


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_a_read_only_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ro" / "history.sqlite3"
    HistoryStore.open(path).close()
    path.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        with pytest.raises(HistoryError) as e, HistoryStore.open(path) as s:
            s.write([_row(MONDAY)])
        assert str(path) in str(e.value)
    finally:
        path.parent.chmod(0o755)


def test_a_closed_store_and_a_bad_row_raise(store: HistoryStore) -> None:
    with pytest.raises(ValueError, match="multiple of 60"):
        MinuteRow(MONDAY + 1, 1.0, 1.0, 60.0, None, 0.0)
    with pytest.raises(ValueError, match="event_s"):
        MinuteRow(MONDAY, 1.0, 1.0, 60.0, None, 61.0)
    store.close()
    store.close()  # idempotent
    with pytest.raises(HistoryError, match="closed"):
        store.rows(0, 1)


# -- aggregator ----------------------------------------------------------------------------


def _feed(agg: MinuteAggregator, samples: Iterable[tuple[float, float]],
          limit_w: float | None = None, event: bool = False) -> list[MinuteRow]:
    rows: list[MinuteRow] = []
    for t, w in samples:
        rows += agg.add(t, w, limit_w, event)
    return rows


def _ramp_minute(start: int) -> list[tuple[float, float]]:
    """Two samples per second; second k of the minute averages 100 + 10 k W."""
    out: list[tuple[float, float]] = []
    for k in range(60):
        avg = 100.0 + 10.0 * k
        out += [(start + k, avg - 50.0), (start + k + 0.5, avg + 50.0)]
    return out


def test_aggregator_mean_p10_and_energy_by_hand() -> None:
    agg = MinuteAggregator()
    assert _feed(agg, _ramp_minute(MONDAY)) == []  # the minute is not over yet
    (row,) = agg.add(MONDAY + 60, 0.0, None, False)  # a sample in the next minute closes it
    assert row.start_s == MONDAY
    assert row.it_mean_w == pytest.approx(395.0)  # 100 + 10 * 29.5
    # 1-s averages 100, 110, ..., 690: linear 10th percentile at rank 0.1 * 59 = 5.9.
    assert row.it_p10_w == pytest.approx(159.0)
    assert row.energy_j == pytest.approx(395.0 * 60)
    assert row.limit_w is None and row.event_s == 0.0


def test_aggregator_counts_only_covered_time_across_a_gap() -> None:
    agg = MinuteAggregator(max_hold_s=2.0)
    rows = _feed(agg, [(MONDAY + 0.5 * i, 100.0) for i in range(60)])  # 0 .. 29.5 s
    rows += agg.add(MONDAY + 200.0, 300.0, None, False)  # 170 s later: a gap
    (row,) = rows  # the minute in the gap has no sample and no row
    # 59 samples hold 0.5 s each; the last holds max_hold_s = 2 s: 31.5 s covered.
    assert row.energy_j == pytest.approx(100.0 * 31.5)
    assert row.it_mean_w == pytest.approx(100.0)
    assert row.it_p10_w == pytest.approx(100.0)
    (last,) = agg.finish(MONDAY + 201.0)
    assert last.start_s == MONDAY + 180 and last.energy_j == pytest.approx(300.0)


def test_aggregator_ignores_a_clock_that_steps_back() -> None:
    plain, stepped = MinuteAggregator(), MinuteAggregator()
    samples = [*_ramp_minute(MONDAY), (MONDAY + 60.0, 1.0)]
    expected = _feed(plain, samples)
    rows: list[MinuteRow] = []
    for i, (t, w) in enumerate(samples):
        rows += stepped.add(t, w, None, False)
        if i == 30:
            rows += stepped.add(t - 3600.0, 9999.0, None, False)  # NTP stepped back an hour
            rows += stepped.add(t, 9999.0, None, False)  # a repeat of the same instant
    assert rows == expected
    assert stepped.ignored == 2
    assert stepped.add(float("nan"), 1.0, None, False) == []
    assert stepped.add(MONDAY + 61.0, -5.0, None, False) == []
    assert stepped.ignored == 4


def test_aggregator_limit_and_event_seconds() -> None:
    agg = MinuteAggregator()
    rows: list[MinuteRow] = []
    for i in range(120):
        t = MONDAY + 0.5 * i
        first_half = t < MONDAY + 30
        rows += agg.add(t, 1000.0, 4000.0 if first_half else None, not first_half)
    (row,) = rows + agg.add(MONDAY + 60.0, 1000.0, None, False)
    assert row.limit_w == pytest.approx(4000.0)  # the mean over the time it was known
    assert row.event_s == pytest.approx(30.0)


def test_a_long_hold_closes_several_minutes_at_once() -> None:
    agg = MinuteAggregator(max_hold_s=90.0)
    assert agg.add(MONDAY + 59.0, 600.0, None, False) == []
    rows = agg.add(MONDAY + 200.0, 600.0, None, False)  # held 59 .. 149
    assert [r.start_s for r in rows] == [MONDAY, MONDAY + 60, MONDAY + 120]
    assert [r.energy_j for r in rows] == pytest.approx([600.0, 36000.0, 17400.0])


# -- recorder -------------------------------------------------------------------------------


def _offer_minutes(rec: HistoryRecorder, start: int, minutes: int, w: float = 800.0) -> None:
    for i in range(minutes * 120):
        rec.offer(start + 0.5 * i, w, 5600.0, False)


def test_recorder_writes_completed_minutes_and_the_open_one_at_close(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    rec = HistoryRecorder(HistoryStore.open(path), clock=VirtualClock(wall_offset=MONDAY),
                          queue_size=10_000)
    _offer_minutes(rec, MONDAY, 2)
    rec.offer(MONDAY + 120.0, 800.0, 5600.0, False)
    rec.offer(MONDAY + 150.0, 800.0, 5600.0, False)  # the third minute, still open at close
    rec.close()
    assert rec.rows_written == 3 and rec.dropped == 0 and rec.errors == 0
    with HistoryStore.open(path) as s:
        rows = s.rows(0, 2**40)
    assert [r.start_s for r in rows] == [MONDAY, MONDAY + 60, MONDAY + 120]
    assert all(r.it_mean_w == pytest.approx(800.0) and r.limit_w == pytest.approx(5600.0)
               for r in rows)
    # The open minute: 2 s held after 120 s, and 150 s held for nothing (no later sample).
    assert rows[2].energy_j == pytest.approx(800.0 * 2.0)
    assert rec.offer(MONDAY + 500.0, 1.0, None, False) is False  # closed


def test_recorder_prunes_at_start_and_every_interval(tmp_path: Path) -> None:
    clock = VirtualClock(wall_offset=MONDAY + 40 * DAY)
    store = HistoryStore.open(tmp_path / "history.sqlite3")
    store.write([_row(MONDAY), _row(MONDAY + 10 * DAY)])
    rec = HistoryRecorder(store, clock=clock, retention_days=35, poll_s=0.01,
                          owns_store=False)
    wait_until(lambda: store.count() == 1, "the prune at start", timeout_s=30)
    clock.advance(20 * DAY)  # now day 60: the day-10 row is 50 days old
    wait_until(lambda: store.count() == 0, "the hourly prune", timeout_s=30)
    rec.close()
    store.count()  # not owned: still open


class _GatedStore(HistoryStore):
    """Writes block until ``gate`` is set; ``entered`` is set when the first write starts."""

    gate: threading.Event
    entered: threading.Event

    def commit(self, batch: Batch) -> int:
        self.entered.set()
        self.gate.wait(60)
        return super().commit(batch)


def test_offer_never_blocks_and_counts_what_it_drops(tmp_path: Path) -> None:
    store = _GatedStore.open(tmp_path / "history.sqlite3")
    assert isinstance(store, _GatedStore)
    store.gate, store.entered = threading.Event(), threading.Event()
    rec = HistoryRecorder(store, clock=VirtualClock(wall_offset=MONDAY), queue_size=8)
    try:
        for t in (MONDAY + 1.0, MONDAY + 61.0):  # closes a minute: the thread writes, stuck
            rec.offer(t, 500.0, None, False)
        wait_until(store.entered.is_set, "the writer thread to be stuck in a write",
                   timeout_s=30)
        accepted = [rec.offer(MONDAY + 62.0 + i, 500.0, None, False) for i in range(200)]
        assert accepted.count(True) == 8  # the queue's size; every other offer returned at once
        assert rec.dropped == 192
    finally:
        store.gate.set()
        rec.close()
    # The closed minute, then at close the open one (as a partial row).
    assert rec.rows_written == 2 and rec.errors == 0


class _FailingStore(HistoryStore):
    """Writes fail with ``problem`` while it is set."""

    problem: str | None = None

    def commit(self, batch: Batch) -> int:
        if self.problem is not None:
            raise HistoryError(f"{self.path}: writing: {self.problem}", path=self.path)
        return super().commit(batch)


def test_failed_writes_are_counted_and_logged_once_per_change(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gridtao.history")
    store = _FailingStore.open(tmp_path / "history.sqlite3")
    assert isinstance(store, _FailingStore)
    store.problem = "disk full"
    rec = HistoryRecorder(store, clock=VirtualClock(wall_offset=MONDAY))
    rec.offer(MONDAY + 60.0, 500.0, None, False)
    # One minute closed at a time: two separate failed writes.
    rec.offer(MONDAY + 120.0, 500.0, None, False)
    wait_until(lambda: rec.errors == 1, "a failed write", timeout_s=30)
    rec.offer(MONDAY + 180.0, 500.0, None, False)
    wait_until(lambda: rec.errors == 2, "a second failed write", timeout_s=30)
    store.problem = None
    rec.offer(MONDAY + 240.0, 500.0, None, False)
    wait_until(lambda: rec.rows_written == 1, "a write after the failures", timeout_s=30)
    rec.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "disk full" in errors[0].getMessage()
    assert any("writing again" in r.getMessage() for r in caplog.records)
    assert rec.rows_lost == 2


# -- CSV import -----------------------------------------------------------------------------


def _csv(tmp_path: Path, text: str, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_import_one_second_samples(tmp_path: Path, store: HistoryStore) -> None:
    lines = ["t,power_w,limit_w"]
    lines += [f"{MONDAY + i},{100 if i < 60 else 200},{'' if i < 60 else 5000}"
              for i in range(120)]
    summary = import_csv(_csv(tmp_path, "\n".join(lines) + "\n"), store)
    assert (summary.samples, summary.rows, summary.interval_s) == (120, 2, 1.0)
    first, second = store.rows(0, 2**40)
    assert (first.start_s, first.it_mean_w, first.energy_j) == (MONDAY, 100.0, 6000.0)
    assert first.limit_w is None
    # The last sample holds one interval, so the last minute is complete.
    assert (second.it_mean_w, second.energy_j, second.limit_w) == (200.0, 12000.0, 5000.0)


def test_import_iso_minutes_with_a_bom_and_blank_lines(tmp_path: Path,
                                                        store: HistoryStore) -> None:
    text = ("\ufeffTime , IT_W\n"
            "2025-11-24T00:00:00Z,1000\n"
            "\n"
            "2025-11-24T01:01:00+01:00,2000\n"  # 00:01 UTC
            "2025-11-24T00:02:00.000+00:00,3000\n")
    summary = import_csv(_csv(tmp_path, text), store)
    assert summary.interval_s == 60.0
    rows = store.rows(0, 2**40)
    assert [(r.start_s, r.it_mean_w, r.energy_j) for r in rows] == [
        (MONDAY, 1000.0, 60_000.0), (MONDAY + 60, 2000.0, 120_000.0),
        (MONDAY + 120, 3000.0, 180_000.0)]


@pytest.mark.parametrize("body,line,problem", [
    ("time,it_w\n1763942400,10\n1763942401,ten\n", 3, "not a number"),
    ("time,it_w\n1763942400,10\n\n1763942399,10\n", 4, "not after line 2"),
    ("time,it_w\n1763942400,-1\n", 2, ">= 0"),
    ("time,it_w\n2025-11-24T00:00:00,10\n", 2, "no timezone"),
    ("time,it_w\n1763942400000,10\n", 2, "milliseconds"),
    ("time,it_w\nyesterday,10\n", 2, "neither Unix seconds nor ISO 8601"),
    ("time,it_w,limit_w\n1763942400,10,0\n", 2, "limit_w must be > 0"),
    ("time,it_w\n1763942400\n", 2, "expected at least 2 columns"),
    ("when,it_w\n1763942400,10\n", 1, "no time column"),
    ("time,watts\n1763942400,10\n", 1, "no power column"),
])
def test_import_names_the_file_and_line_of_a_bad_row(
        tmp_path: Path, store: HistoryStore, body: str, line: int, problem: str) -> None:
    path = _csv(tmp_path, body)
    with pytest.raises(HistoryError) as e:
        import_csv(path, store)
    assert str(e.value).startswith(f"{path}: line {line}: ")
    assert problem in str(e.value)
    assert e.value.line == line and e.value.path == str(path)


def test_import_is_all_or_nothing(tmp_path: Path, store: HistoryStore) -> None:
    lines = ["time,it_w"] + [f"{MONDAY + i},100" for i in range(600)] + ["x,1"]
    with pytest.raises(HistoryError, match="line 602"):
        import_csv(_csv(tmp_path, "\n".join(lines)), store)
    assert store.count() == 0


@pytest.mark.parametrize("content,problem", [
    (bytes(range(256)) * 4, "not UTF-8 text"),
    (b"", "empty file"),
    (b"time,it_w\n", "no data rows"),
    (b'time,it_w\n"1763942400,10\n', "not valid CSV"),
])
def test_import_refuses_a_file_that_is_not_a_csv(tmp_path: Path, store: HistoryStore,
                                                 content: bytes, problem: str) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    with pytest.raises(HistoryError) as e:
        import_csv(path, store)
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value)
    with pytest.raises(HistoryError, match="cannot read"):
        import_csv(tmp_path / "missing.csv", store)


# -- synthetic history and the daily shape --------------------------------------------------


def _utc(start_s: int) -> datetime:
    return datetime.fromtimestamp(start_s, UTC)


def test_synthetic_history_is_deterministic_and_prefix_stable() -> None:
    week = synthetic_minutes(MONDAY, 7)
    assert len(week) == 7 * 1440 and week[0].start_s == MONDAY
    assert all(b.start_s - a.start_s == 60 for a, b in itertools.pairwise(week))
    assert synthetic_minutes(MONDAY, 7) == week
    assert synthetic_minutes(MONDAY, 2) == week[:2 * 1440]
    assert synthetic_minutes(MONDAY, 7, seed=1) != week
    assert synthetic_minutes(MONDAY + 59, 1)[0].start_s == MONDAY  # the minute holding start


def test_synthetic_history_follows_the_daily_shape() -> None:
    rows = synthetic_minutes(MONDAY, 14, seed=3)
    mean = np.array([r.it_mean_w for r in rows])
    p10 = np.array([r.it_p10_w for r in rows])
    hour = np.array([_utc(r.start_s).hour for r in rows])
    weekend = np.array([_utc(r.start_s).weekday() >= 5 for r in rows])
    night = (hour >= 2) & (hour < 6)
    afternoon = (hour >= 13) & (hour < 17)
    assert mean[night & ~weekend].mean() < 0.85 * mean[afternoon & ~weekend].mean()
    assert mean[afternoon & weekend].mean() < 0.9 * mean[afternoon & ~weekend].mean()
    assert np.all(p10 <= mean) and np.all(mean - p10 < 0.2 * mean)
    assert float((mean - p10).mean()) > 10.0  # below the mean, not equal to it
    assert np.all(mean >= 0.95 * 8 * 80.0) and np.all(mean <= 8 * 700.0)
    assert all(r.energy_j == pytest.approx(60 * r.it_mean_w) for r in rows)


def test_synthetic_history_has_training_jobs() -> None:
    # With inference switched off the draw is idle plus jobs: it must change level.
    rows = synthetic_minutes(MONDAY, 14, seed=5, shape=DailyShape.flat(0.0))
    levels = {round(r.it_mean_w / 100) for r in rows}
    assert len(levels) >= 3
    assert max(r.it_mean_w for r in rows) > 0.8 * 700 + 7 * 80  # at least one GPU training


def test_synthetic_history_rejects_bad_arguments() -> None:
    for kwargs in ({"days": 0}, {"days": 1, "gpus": 0}, {"days": 1, "idle_w": 800.0}):
        with pytest.raises(ValueError):
            synthetic_minutes(MONDAY, **kwargs)


def test_daily_shape_levels_weekends_and_offset() -> None:
    shape = DailyShape.default()
    assert shape.at(MONDAY + 4.5 * 3600) == pytest.approx(0.20)  # 04:30, a level's midpoint
    assert shape.at(MONDAY + 15 * 3600) == pytest.approx(1.0)  # between 14:30 and 15:30
    assert shape.at(MONDAY + 14 * 3600) == pytest.approx(0.975)  # halfway 13:30 -> 14:30
    assert shape.at(MONDAY + 5 * DAY + 14.5 * 3600) == pytest.approx(0.6)  # Saturday
    assert shape.is_weekend(MONDAY + 6 * DAY) and not shape.is_weekend(MONDAY + 4 * DAY)
    shifted = DailyShape.default(offset_s=10 * 3600)  # local = UTC + 10 h
    assert shifted.at(MONDAY + 4.5 * 3600) == pytest.approx(1.0)  # 14:30 local
    t = np.array([MONDAY + 3600 * h for h in range(48)])
    assert shape.at_array(t).tolist() == pytest.approx([shape.at(float(x)) for x in t])
    with pytest.raises(ValueError):
        DailyShape((0.5,) * 23)
    with pytest.raises(ValueError):
        DailyShape((1.5,) * 24)


def _mean_demand(workload_segments: Iterator[tuple[float, float]], seconds: float) -> float:
    energy = elapsed = 0.0
    while elapsed < seconds:
        dur, w = next(workload_segments)
        energy, elapsed = energy + dur * w, elapsed + dur
    return energy / elapsed


def _segments(kind: str, **kwargs: object) -> Iterator[tuple[float, float]]:
    wl = make_workload(kind, tdp_w=700.0, rng=random.Random(7), index=0, trace_data=None,
                       **kwargs)  # type: ignore[arg-type]
    while True:
        yield wl.next_segment()


def test_simulated_inference_follows_a_daily_shape_only_when_given_one() -> None:
    plain = inference(700.0, random.Random(7))
    unshaped = _segments("inference")
    assert [next(unshaped) for _ in range(200)] == [plain.next_segment() for _ in range(200)]
    shape = DailyShape.default()
    night = _mean_demand(_segments("inference", shape=shape, start_wall_s=MONDAY + 3 * 3600),
                         600)
    peak = _mean_demand(_segments("inference", shape=shape, start_wall_s=MONDAY + 14 * 3600),
                        600)
    assert night < 0.5 * peak
    training = _segments("training", shape=shape, start_wall_s=MONDAY + 3 * 3600)
    flat = _segments("training")
    assert [next(training) for _ in range(100)] == [next(flat) for _ in range(100)]


# -- the gridtao history commands ----------------------------------------------------------


def test_cli_generate_show_and_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The agent's own store (conftest: a state directory per test; the node is this host).
    db = Path(os.environ["STATE_DIRECTORY"]) / f"history-{default_node_id()}.sqlite3"
    assert main(["history", "generate", "--days", "2", "--seed", "4", "--gpus", "4"]) == 0
    assert "wrote 2880 synthetic minutes (4 GPUs of 700 W, seed 4)" in capsys.readouterr().out
    with HistoryStore.open(db) as s:
        assert s.count() == 2880
    # Refuses to overwrite what may be measurements, unless asked.
    assert main(["history", "generate", "--days", "1"]) == 2
    assert "--replace" in capsys.readouterr().err
    assert main(["history", "generate", "--days", "1", "--replace"]) == 0
    # Without --gpus, the configuration's simulated GPUs (the default: 8 of 700 W).
    assert "(8 GPUs of 700 W, seed 0)" in capsys.readouterr().out

    assert main(["history", "show", "--days", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "mean W" in out[1] and "p10 W" in out[1] and "energy kWh" in out[1]
    table = out[2:]
    assert 24 <= len(table) <= 26
    assert sum(int(line.split()[2]) for line in table) >= 1439  # minutes column

    csv_path = _csv(tmp_path, "t,it_w\n" + "".join(f"{MONDAY + i},250\n" for i in range(120)))
    other = tmp_path / "other.sqlite3"
    assert main(["history", "--store", str(other), "import", str(csv_path)]) == 0
    assert "120 samples every 1 s -> 2 minutes" in capsys.readouterr().out
    with HistoryStore.open(other) as s:
        assert [r.it_mean_w for r in s.rows(0, 2**40)] == [250.0, 250.0]


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "show"]) == 2
    assert "no history yet" in capsys.readouterr().err
    bad = _csv(tmp_path, "time,it_w\n1763942400,10\n1763942401,oops\n")
    assert main(["history", "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"gridtao: error: {bad}: line 3: power is not a number: 'oops'\n"
    assert main(["history", "generate", "--days", "-1"]) == 2
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"\x00junk" * 100)
    assert main(["history", "--store", str(junk), "show"]) == 2
    assert "not a SQLite database" in capsys.readouterr().err


def test_cli_bad_file_in_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    binary = tmp_path / "photo.csv"
    binary.write_bytes(bytes(range(256)) * 16)
    done = subprocess.run([sys.executable, "-m", "gridtao", "history", "import", str(binary)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == f"gridtao: error: {binary}: not UTF-8 text (is this a CSV file?)\n"


def test_cli_generate_follows_the_configured_daily_shape(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The simulator's ``daily_shape`` reaches ``history generate``: an inference load idle all
    day draws less than one busy all day, everything else (seed, jobs) the same."""
    means = {}
    for level in (0.0, 1.0):
        cfg = tmp_path / f"shape-{level}.yaml"
        cfg.write_text(yaml.safe_dump({"gpus": {"sim": {
            "daily_shape": "custom", "daily_levels": [level] * 24}}}))
        store = tmp_path / f"shape-{level}.sqlite3"
        assert main(["--config", str(cfg), "history", "--store", str(store), "generate",
                     "--days", "1", "--seed", "3"]) == 0
        capsys.readouterr()
        with HistoryStore.open(store) as s:
            rows = s.rows(0, 2**40)
        means[level] = sum(r.it_mean_w for r in rows) / len(rows)
    assert means[0.0] < means[1.0] - 100.0


def test_store_may_follow_the_action(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "after.sqlite3"
    assert main(["history", "generate", "--days", "1", "--store", str(store)]) == 0
    capsys.readouterr()
    with HistoryStore.open(store) as s:
        assert s.count() == 1440
    assert main(["history", "show", "--store", str(store)]) == 0
    assert str(store) in capsys.readouterr().out


def test_generate_takes_the_configurations_gpus(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A 4-GPU node's synthetic history is a 4-GPU node's: its draw never above 4 x 700 W."""
    cfg = tmp_path / "node.yaml"
    cfg.write_text("gpus: {backend: sim, sim: {count: 4, device: null}}\n")
    store = tmp_path / "h.sqlite3"
    assert main(["--config", str(cfg), "history", "--store", str(store), "generate",
                 "--days", "2"]) == 0
    assert "(4 GPUs of 700 W, seed 0)" in capsys.readouterr().out
    with HistoryStore.open(store) as s:
        rows = s.rows(0, 2**40)
    assert max(r.it_mean_w for r in rows) <= 4 * 700.0


def test_an_agent_whose_history_path_is_not_a_database_names_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database\n" * 100)
    cfg = tmp_path / "node.yaml"
    cfg.write_text("gpus: {backend: sim, sim: {device: null, count: 2}}\n"
                   f"mqtt: {{host: 127.0.0.1, port: 1}}\nhistory: {{path: {not_sqlite}}}\n")
    assert main(["--config", str(cfg), "run"]) == 2
    err = capsys.readouterr().err
    assert f"gridtao: error: {cfg}: history.path: {not_sqlite}: not a SQLite database" in err
