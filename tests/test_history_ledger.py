"""The energy and work ledger in the minute history (gridtao/history/rows.py, gpuenergy.py,
workcount.py, ledgerdb.py and the recorder's side): each GPU's energy and each work source's
work per minute, through restarts, counter resets and a schema-1 file. Expected values are
computed by hand from the readings fed in."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gridtao.app.readback import ReadBack
from gridtao.clock import VirtualClock
from gridtao.history import (
    Batch,
    GpuEnergyAggregator,
    GpuMinuteRow,
    HistoryError,
    HistoryRecorder,
    HistoryStore,
    MinuteRow,
    WorkAggregator,
    WorkMinuteRow,
)
from gridtao.history.rows import merge_gpu

MONDAY = 1_763_942_400  # 2025-11-24 00:00:00 UTC
GPUS = ((0, "GPU-aaaa"), (1, "GPU-bbbb"))


def _sum(rows: list[GpuMinuteRow], gpu: str | None = None) -> float:
    return sum(r.energy_j for r in rows if gpu is None or r.gpu == gpu)


def _rounds(agg: GpuEnergyAggregator, t0: float, t1: float, *, w: tuple[float, float],
            mj0: tuple[int, int], period: float = 0.5) -> tuple[int, int]:
    """Rounds every ``period`` s over [t0, t1] at constant draws ``w``; counters from ``mj0``;
    returns the counters at ``t1``."""
    n = round((t1 - t0) / period)
    mj = mj0
    for k in range(n + 1):
        mj = (mj0[0] + round(w[0] * k * period * 1000), mj0[1] + round(w[1] * k * period * 1000))
        agg.add(t0 + k * period, GPUS, mj, (w[0] * 1000, w[1] * 1000))
    return mj


# -- the schema ----------------------------------------------------------------------------


def test_a_schema_1_file_is_migrated_and_its_minutes_kept(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    conn = sqlite3.connect(path)  # a file as gridtao with schema 1 wrote it
    conn.execute("CREATE TABLE minutes (start_s INTEGER PRIMARY KEY, it_mean_w REAL NOT NULL, "
                 "it_p10_w REAL NOT NULL, energy_j REAL NOT NULL, limit_w REAL, "
                 "event_s REAL NOT NULL) WITHOUT ROWID")
    conn.execute("INSERT INTO minutes VALUES (?, 900.0, 850.0, 54000.0, 5600.0, 0.0)",
                 (MONDAY,))
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with HistoryStore.open(path) as s:
        assert s.rows(0, 2**40) == [MinuteRow(MONDAY, 900.0, 850.0, 54000.0, 5600.0, 0.0)]
        assert s.gpu_rows(0, 2**40) == [] and s.work_rows(0, 2**40) == []
        assert s.checkpoints() == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


def test_merged_minutes_add_up_and_overlaps_are_not_summed(tmp_path: Path) -> None:
    with HistoryStore.open(tmp_path / "h.sqlite3") as s:
        a = GpuMinuteRow(MONDAY, "GPU-aaaa", 0, 3000.0, 20.0, 0.0, "counter")
        b = GpuMinuteRow(MONDAY, "GPU-aaaa", 0, 6000.0, 30.0, 1.0, "power")
        s.commit(Batch(gpus=[a]))
        s.commit(Batch(gpus=[b]))
        assert s.gpu_rows(0, 2**40) == [
            GpuMinuteRow(MONDAY, "GPU-aaaa", 0, 9000.0, 50.0, 1.0, "mixed")]
        # 50 s stored + 40 s more cannot both be the same minute: the larger piece stays.
        s.commit(Batch(gpus=[GpuMinuteRow(MONDAY, "GPU-aaaa", 0, 1.0, 40.0, 0.0, "counter")]))
        assert s.gpu_rows(0, 2**40)[0].energy_j == 9000.0
        w1 = WorkMinuteRow(MONDAY, "chat", "vllm", "m", "generation", 100.0, 25.0, (0, 1))
        w2 = WorkMinuteRow(MONDAY, "chat", "vllm", "m", "generation", 140.0, 35.0, (0, 1))
        s.commit(Batch(work=[w1]))
        s.commit(Batch(work=[w2]))
        assert s.work_rows(0, 2**40) == [
            WorkMinuteRow(MONDAY, "chat", "vllm", "m", "generation", 240.0, 60.0, (0, 1))]
        # Node minutes: 20 s at 600 W then 40 s at 900 W -> 60 s, 48 kJ, 800 W.
        s.commit(Batch(minutes=[MinuteRow(MONDAY, 600.0, 590.0, 12000.0, 4000.0, 0.0)]))
        s.commit(Batch(minutes=[MinuteRow(MONDAY, 900.0, 880.0, 36000.0, 5500.0, 10.0)]))
        row = s.rows(0, 2**40)[0]
        assert row.energy_j == 48000.0 and row.it_mean_w == pytest.approx(800.0)
        assert row.it_p10_w == 590.0 and row.event_s == 10.0
        assert row.limit_w == pytest.approx((4000.0 * 20 + 5500.0 * 40) / 60)
    with pytest.raises(ValueError, match="covered_s"):
        merge_gpu(a, GpuMinuteRow(MONDAY, "GPU-aaaa", 0, 1.0, 61.0, 0.0, "counter"))


def test_prune_removes_old_ledger_rows(tmp_path: Path) -> None:
    with HistoryStore.open(tmp_path / "h.sqlite3") as s:
        s.commit(Batch(gpus=[GpuMinuteRow(MONDAY, "GPU-aaaa", 0, 1.0, 1.0, 0.0, "counter"),
                             GpuMinuteRow(MONDAY + 86_400 * 10, "GPU-aaaa", 0, 1.0, 1.0, 0.0,
                                          "counter")],
                       work=[WorkMinuteRow(MONDAY, "x", "custom", "", "samples", 1.0, 1.0, ())]))
        assert s.prune(MONDAY + 86_400 * 12, 5) == 2
        assert [r.start_s for r in s.gpu_rows(0, 2**40)] == [MONDAY + 86_400 * 10]
        assert s.work_rows(0, 2**40) == []


def test_a_bad_stored_ledger_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    with HistoryStore.open(path) as s:
        s.commit(Batch(gpus=[GpuMinuteRow(MONDAY, "GPU-aaaa", 0, 1.0, 1.0, 0.0, "counter")]))
    conn = sqlite3.connect(path)
    conn.execute("UPDATE gpu_minutes SET method = 'guessed'")
    conn.commit()
    conn.close()
    with HistoryStore.open(path) as s, pytest.raises(HistoryError, match="GPU minute"):
        s.gpu_rows(0, 2**40)


# -- each GPU's energy --------------------------------------------------------------------


def test_counter_energy_per_gpu_and_minute_by_hand() -> None:
    agg = GpuEnergyAggregator()
    # 300 W and 500 W from 00:00:50 to 00:01:20: 10 s in the first minute, 20 s in the next.
    _rounds(agg, MONDAY + 50, MONDAY + 80, w=(300.0, 500.0), mj0=(1_000_000, 7_000_000))
    rows, points = agg.take()
    by = {(r.start_s - MONDAY, r.gpu): r for r in rows}
    assert by[(0, "GPU-aaaa")].energy_j == pytest.approx(3000.0)
    assert by[(60, "GPU-aaaa")].energy_j == pytest.approx(6000.0)
    assert by[(0, "GPU-bbbb")].energy_j == pytest.approx(5000.0)
    assert by[(60, "GPU-bbbb")].energy_j == pytest.approx(10000.0)
    assert {r.method for r in rows} == {"counter"} and {r.power_s for r in rows} == {0.0}
    assert by[(0, "GPU-aaaa")].covered_s == pytest.approx(10.0)
    assert [(p.wall_s, p.value) for p in points] == [(MONDAY + 80, 10_000_000.0),
                                                      (MONDAY + 80, 22_000_000.0)]
    assert agg.take() == ([], points)  # nothing counted since


def test_a_counter_that_goes_back_is_a_reset_measured_by_power() -> None:
    agg = GpuEnergyAggregator()
    agg.add(MONDAY + 10.0, GPUS[:1], (5_000_000,), (400_000.0,))
    agg.add(MONDAY + 10.5, GPUS[:1], (5_200_000,), (400_000.0,))  # 200 J: counter
    # The driver reloaded: the counter starts again near 0. Power 400 W then 600 W.
    agg.add(MONDAY + 11.0, GPUS[:1], (1_000,), (600_000.0,))
    agg.add(MONDAY + 11.5, GPUS[:1], (301_000,), (600_000.0,))  # 300 J: counter again
    (row,), _ = agg.take()
    assert agg.counter_resets == 1
    # The reset interval by power: (400 + 600) / 2 W x 0.5 s = 250 J.
    assert row.energy_j == pytest.approx(200.0 + 250.0 + 300.0)
    assert row.method == "mixed" and row.power_s == pytest.approx(0.5)
    assert row.covered_s == pytest.approx(1.5)


def test_a_64_bit_wrap_is_counted_through_and_told_from_a_reset() -> None:
    """NVML's counter is an unsigned 64-bit mJ count: from 2^64 - 100 J it wraps to 250 J in
    0.5 s at 700 W (350 J); a reset from there (to near 0, an increase through 2^64 of far more
    than a GPU draws) is not a wrap, nor is a fall to near 0 from anywhere else."""
    top = 1 << 64
    agg = GpuEnergyAggregator()
    agg.add(MONDAY + 10.0, GPUS[:1], (top - 100_000,), (700_000.0,))
    agg.add(MONDAY + 10.5, GPUS[:1], (250_000,), (700_000.0,))  # wrapped: 350 J by counter
    agg.add(MONDAY + 11.0, GPUS[:1], (600_000,), (700_000.0,))  # 350 J
    (row,), points = agg.take()
    assert (agg.counter_wraps, agg.counter_resets) == (1, 0)
    assert row.energy_j == pytest.approx(700.0) and row.method == "counter"
    assert row.power_s == 0.0 and row.covered_s == pytest.approx(1.0)
    assert points[0].value == 600_000.0
    # Resets: near 2^64 down to 10^9 mJ (a wrap would be 10^6 J in 0.5 s), and an ordinary
    # value down to near 0. Both measured by power (700 W x 0.5 s).
    agg = GpuEnergyAggregator()
    for t, mj in ((10.0, top - 100_000), (10.5, 10**9), (11.0, 10**9 + 350_000),
                  (11.5, 1_000)):
        agg.add(MONDAY + t, GPUS[:1], (mj,), (700_000.0,))
    (row,), _ = agg.take()
    assert (agg.counter_wraps, agg.counter_resets) == (0, 2)
    assert row.energy_j == pytest.approx(3 * 350.0) and row.method == "mixed"
    assert row.power_s == pytest.approx(1.0)


class _Readings:
    """What ReadBack reads: scripted energy counters (mJ per GPU, one tuple a round) and an
    island with nothing to refresh."""

    def __init__(self, rounds: list[tuple[int, int]]) -> None:
        self.rounds = rounds

    def energy_mj(self, index: int) -> int:
        return self.rounds[0][index]

    def refresh_enforced(self) -> list[object]:
        return []

    def enforced_mw(self) -> tuple[int, ...]:
        return (700_000, 700_000)


def test_the_node_power_of_the_read_back_goes_through_a_wrap_and_skips_a_reset() -> None:
    """Two GPUs at 400 W and 300 W, read every 0.5 s: GPU 0's counter wraps through 2^64 in
    the second round (the node's 700 W is reported), then GPU 1's is reset (that round is
    skipped: the node's power over it is unknown)."""
    top = 1 << 64
    clock = VirtualClock()
    fake = _Readings([(top - 100_000, 5_000_000), (100_000, 5_150_000), (300_000, 1_000),
                      (500_000, 151_000)])
    readings: list[float] = []
    rb = ReadBack(fake, fake, [0, 1], clock=clock,  # type: ignore[arg-type]
                  on_reading=lambda wall, it_w, limit_w: readings.append(it_w))
    for _ in range(4):
        rb.read()
        fake.rounds.pop(0)
        clock.advance(0.5)
    assert readings == [pytest.approx(700.0), pytest.approx(700.0)]


def test_a_wrap_across_a_restart_is_bridged(tmp_path: Path) -> None:
    """The agent stopped 40 J before the counter's 2^64 and came back 10 s later, past it:
    the 10 s at 600 W are bridged through the wrap (stored checkpoints are REAL: a reading
    that close to 2^64 is kept to within 2 J)."""
    top = 1 << 64
    path = tmp_path / "h.sqlite3"
    rec = _recorder(path, MONDAY)
    _feed(rec, MONDAY + 10.0, MONDAY + 12.0, 600.0, top - 1_240_000)
    rec.close()
    rec = _recorder(path, MONDAY + 22.0)
    _feed(rec, MONDAY + 22.0, MONDAY + 24.0, 600.0, 5_960_000)
    rec.close()
    with HistoryStore.open(path) as store:
        rows = store.gpu_rows(MONDAY, MONDAY + 60)
    assert _sum(rows) == pytest.approx(600.0 * 14.0, abs=3.0)
    assert {r.method for r in rows} == {"mixed"}


def test_without_a_counter_power_is_integrated_and_long_gaps_are_not() -> None:
    agg = GpuEnergyAggregator(max_hold_s=2.0)
    agg.add(MONDAY + 1.0, GPUS[:1], (None,), (100_000.0,))
    agg.add(MONDAY + 2.0, GPUS[:1], (None,), (300_000.0,))  # 200 J by power
    agg.add(MONDAY + 9.0, GPUS[:1], (None,), (300_000.0,))  # 7 s without a round: nothing
    agg.add(MONDAY + 9.5, GPUS[:1], (None,), (float("nan"),))  # unknown power: nothing
    (row,), points = agg.take()
    assert row.energy_j == pytest.approx(200.0) and row.covered_s == pytest.approx(1.0)
    assert row.method == "power" and row.power_s == pytest.approx(1.0)
    assert points[0].value is None  # nothing to carry on from


def _recorder(path: Path, wall: float) -> HistoryRecorder:
    return HistoryRecorder(HistoryStore.open(path), clock=VirtualClock(wall_offset=wall),
                           queue_size=100_000, poll_s=0.01)


def _feed(rec: HistoryRecorder, t0: float, t1: float, w: float, mj0: int) -> int:
    """Rounds every 0.5 s on one GPU at ``w`` watts, the node's draw alongside; returns the
    counter at ``t1``."""
    n = round((t1 - t0) / 0.5)
    mj = mj0
    for k in range(n + 1):
        mj = mj0 + round(w * 0.5 * k * 1000)
        rec.offer_gpus(t0 + 0.5 * k, GPUS[:1], (mj,), (w * 1000,))
        rec.offer(t0 + 0.5 * k, w, None, False)
    return mj


def test_a_restart_mid_minute_keeps_the_minutes_energy(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    rec = _recorder(path, MONDAY)
    # 00:00:10-00:01:30 at 400 W, stop; start again at 00:01:40 (10 s down, the counter ran
    # on at 400 W) until 00:02:20.
    end = _feed(rec, MONDAY + 10, MONDAY + 90, 400.0, 2_000_000)
    rec.close()
    rec = _recorder(path, MONDAY + 100)
    last = _feed(rec, MONDAY + 100, MONDAY + 140, 400.0, end + 4_000_000)
    rec.close()
    assert rec.bridged_s == pytest.approx(10.0)
    with HistoryStore.open(path) as s:
        rows = s.gpu_rows(0, 2**40)
        node = {r.start_s - MONDAY: r for r in s.rows(0, 2**40)}
    # Everything the counter counted from the first round to the last, once.
    assert _sum(rows) == pytest.approx((last - 2_000_000) / 1000.0)
    by = {r.start_s - MONDAY: r for r in rows}
    assert by[60].energy_j == pytest.approx(400.0 * 60)  # the minute of the restart, whole
    assert by[60].covered_s == pytest.approx(60.0) and by[60].method == "mixed"
    assert by[0].energy_j == pytest.approx(400.0 * 50) and by[0].method == "counter"
    assert by[120].energy_j == pytest.approx(400.0 * 20)
    # The node's minute of the restart holds both agents' parts: 01:00-01:30 (the last sample
    # holds nothing after it) and 01:40-02:00; the 10 s between were not sampled.
    assert node[60].energy_j == pytest.approx(400.0 * (30.0 + 20.0))
    assert node[60].it_mean_w == pytest.approx(400.0)


def test_a_crash_loses_nothing_the_counter_counted(tmp_path: Path) -> None:
    """No close: what was not written when the agent died is bridged by the counter from the
    last written reading."""
    path = tmp_path / "history.sqlite3"
    first = GpuEnergyAggregator()
    _rounds(first, MONDAY + 5, MONDAY + 65, w=(250.0, 0.0), mj0=(10_000_000, 0))
    rows, points = first.take()
    with HistoryStore.open(path) as s:
        s.commit(Batch(gpus=rows, checkpoints=points))
    _rounds(first, MONDAY + 65, MONDAY + 100, w=(250.0, 0.0), mj0=(25_000_000, 0))  # lost
    with HistoryStore.open(path) as s:
        second = GpuEnergyAggregator()
        second.resume(s.checkpoints())
        _rounds(second, MONDAY + 130, MONDAY + 150, w=(250.0, 0.0), mj0=(41_250_000, 0))
        rows, points = second.take()
        s.commit(Batch(gpus=rows, checkpoints=points))
        stored = s.gpu_rows(0, 2**40)
    assert _sum(stored, "GPU-aaaa") == pytest.approx(250.0 * 145)
    assert second.bridged_s == pytest.approx(65.0 * 2)  # both GPUs bridged 00:01:05-00:02:10


def test_a_driver_reload_while_the_agent_was_down_counts_no_negative_energy(
        tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    with HistoryStore.open(path) as s:
        first = GpuEnergyAggregator()
        _rounds(first, MONDAY, MONDAY + 30, w=(200.0, 200.0), mj0=(9_000_000, 9_000_000))
        rows, points = first.take()
        s.commit(Batch(gpus=rows, checkpoints=points))
        second = GpuEnergyAggregator()
        second.resume(s.checkpoints())
        _rounds(second, MONDAY + 40, MONDAY + 50, w=(200.0, 200.0), mj0=(5_000, 5_000))
        rows, points = second.take()
        s.commit(Batch(gpus=rows, checkpoints=points))
        assert second.counter_resets == 2  # one per GPU, across the restart
        assert _sum(s.gpu_rows(0, 2**40)) == pytest.approx(2 * 200.0 * 40)  # the gap uncovered


def test_a_reboot_while_the_agent_was_down_bridges_nothing(tmp_path: Path) -> None:
    """After a reboot the counter starts again from 0 and may already read more than the last
    checkpoint: that is not the energy of the downtime. Checkpoints carry their boot."""
    path = tmp_path / "history.sqlite3"
    with HistoryStore.open(path) as s:
        first = GpuEnergyAggregator(boot="boot-a")
        _rounds(first, MONDAY, MONDAY + 30, w=(200.0, 200.0), mj0=(1_000_000, 1_000_000))
        rows, points = first.take()
        s.commit(Batch(gpus=rows, checkpoints=points))
        second = GpuEnergyAggregator(boot="boot-b")
        second.resume(s.checkpoints())
        # Up again 10 min later, the new boot's counters past the old checkpoints already.
        _rounds(second, MONDAY + 630, MONDAY + 640, w=(200.0, 200.0), mj0=(90_000_000,) * 2)
        rows, points = second.take()
        s.commit(Batch(gpus=rows, checkpoints=points))
        assert second.bridged_s == 0.0
        assert _sum(s.gpu_rows(0, 2**40)) == pytest.approx(2 * 200.0 * 40)  # no 10 min bridged


# -- work ----------------------------------------------------------------------------------


def test_work_increments_spread_over_minutes_and_through_a_server_restart() -> None:
    agg = WorkAggregator()
    gen, pre = ("llama", "generation"), ("llama", "prompt")
    agg.add(MONDAY + 50, "chat", "vllm", (0, 1), {gen: 1000.0, pre: 50.0})
    agg.add(MONDAY + 70, "chat", "vllm", (0, 1), {gen: 1400.0, pre: 90.0})  # 20 s: 400, 40
    agg.add(MONDAY + 75, "chat", "vllm", (0, 1), {gen: 30.0, pre: 95.0})  # restarted: 30
    rows, points = agg.take()
    by = {(r.start_s - MONDAY, r.kind): r for r in rows}
    assert by[(0, "generation")].units == pytest.approx(200.0)
    assert by[(60, "generation")].units == pytest.approx(200.0 + 30.0)
    assert by[(60, "generation")].covered_s == pytest.approx(15.0)
    assert by[(0, "prompt")].units == pytest.approx(20.0)
    assert by[(60, "prompt")].units == pytest.approx(20.0 + 5.0)
    assert by[(0, "generation")].gpus == (0, 1) and by[(0, "generation")].source_kind == "vllm"
    assert agg.resets == 1
    assert sorted(p.value or 0.0 for p in points) == [30.0, 95.0]


def test_the_recorder_carries_work_through_its_restart(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    rec = _recorder(path, MONDAY)
    for k in range(13):  # every 5 s from 00:00:00 to 00:01:00, 10 samples/s
        rec.offer_work(MONDAY + 5 * k, "train", "custom", (2,), {("", "samples"): 50.0 * k})
    rec.close()
    rec = _recorder(path, MONDAY + 90)
    rec.offer_work(MONDAY + 90, "train", "custom", (2,), {("", "samples"): 900.0})
    rec.offer_work(MONDAY + 125, "train", "custom", (2,), {("", "samples"): 1250.0})
    rec.close()
    with HistoryStore.open(path) as s:
        rows = s.work_rows(0, 2**40)
    assert sum(r.units for r in rows) == pytest.approx(1250.0)
    assert [r.start_s - MONDAY for r in rows] == [0, 60, 120]
    assert rows[1].units == pytest.approx(600.0) and rows[1].covered_s == pytest.approx(60.0)
    assert rows[1].gpus == (2,) and rows[1].kind == "samples" and rows[1].model == ""
