"""Limits set from outside the agent, the device's own edge cases, and the audit-trail witness.

The island against simulated GPUs in virtual time: a limit the island did not write is adopted
as the GPU's resting limit and never written over, in every state; the agent's own writes are
never taken for someone else's. Then the machine-wide device's open racing a destroy, a
half-created file, and the witness's rules on hand-made audit trails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gridtao.clock import MonotonicClock, VirtualClock, boot_id
from gridtao.config.agent import SimConfig
from gridtao.config.paths import sim_device_path
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim import shared
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.records.witness import witness_limits
from gridtao.safety.island import SafeMode, SafetyIsland

W = 1000
N = 2
DEFAULT_MW = 700 * W
DRAW_MW = [600 * W, 600 * W]


def _rig() -> tuple[VirtualClock, NvmlBackend, SafetyIsland]:
    clock = VirtualClock(100.0)
    cfg = SimConfig(count=N, set_latency_ms=0.0, read_latency_ms=0.0, noise_w=0.0)
    backend = NvmlBackend(SimNvml.from_config(cfg, clock))
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.5, max_event_s=60.0)
    island.start()
    island.update_draw(DRAW_MW)
    return clock, backend, island


def _operator(backend: NvmlBackend, index: int, mw: int) -> None:
    """``nvidia-smi -i index -pl``: a write that does not go through the island."""
    backend.set_limit_mw(index, mw)


def test_an_outside_limit_becomes_the_resting_limit_and_is_not_written_back() -> None:
    _, backend, island = _rig()
    assert island.refresh_enforced() == []  # nothing moved
    _operator(backend, 0, 450 * W)
    (change,) = island.refresh_enforced()
    assert (change.index, change.from_mw, change.to_mw, change.during_event) == (
        0, DEFAULT_MW, 450 * W, False)
    assert island.resting_mw == (450 * W, DEFAULT_MW)
    assert island.refresh_enforced() == []  # reported once
    assert backend.enforced_limit_mw(0) == 450 * W
    island.close()


def test_the_islands_own_writes_are_never_taken_for_someone_elses() -> None:
    clock, _, island = _rig()
    island.trigger_shed("e1", 0.3)
    assert island.refresh_enforced() == []
    assert island.apply_limits([500 * W, 500 * W], island.view().generation)
    assert island.refresh_enforced() == []
    island.release("e1")
    clock.advance(3.0)
    island.tick()
    assert island.refresh_enforced() == []
    island.close()


@pytest.mark.parametrize("mode", ["default", "hold"])
def test_in_a_safe_state_an_event_ends_at_the_operators_limit_not_above(mode: SafeMode) -> None:
    clock, backend, island = _rig()
    island.trigger_shed("e1", 0.3)  # caps ~420 W
    island.enter_safe_state(mode)
    _operator(backend, 0, 300 * W)
    assert [c.index for c in island.refresh_enforced()] == [0]
    island.release("e1")
    clock.advance(3.0)
    island.tick()
    assert island.view().event_id is None
    assert backend.enforced_limit_mw(0) <= 300 * W
    island.close()


def test_after_stop_watching_a_changed_limit_is_only_read() -> None:
    _, backend, island = _rig()
    island.stop_watching()
    _operator(backend, 1, 400 * W)
    assert island.refresh_enforced() == []
    assert island.enforced_mw()[1] == 400 * W
    assert island.resting_mw == (DEFAULT_MW, DEFAULT_MW)
    island.close()


# ---------------------------------------------------------------- the device's edge cases


def _open() -> NvmlBackend:
    return NvmlBackend(SimNvml.from_config(SimConfig(count=N, noise_w=0.0), MonotonicClock(),
                                           device_path=sim_device_path("edge")))


def test_an_open_racing_a_destroy_opens_the_new_device(monkeypatch: pytest.MonkeyPatch) -> None:
    _open().set_limit_mw(0, 300 * W)
    real_lock = shared._lock
    raced: list[bool] = []

    def destroy_first(fd: int, start: int, length: int) -> None:
        if not raced:  # destroyed between this process's open and its lock
            raced.append(True)
            shared.DeviceFile.destroy(sim_device_path("edge"))
        real_lock(fd, start, length)

    monkeypatch.setattr(shared, "_lock", destroy_first)
    late = _open()
    monkeypatch.setattr(shared, "_lock", real_lock)
    assert raced
    late.set_limit_mw(1, 250 * W)
    seen = _open()  # everyone else sees the device the late opener drives
    assert seen.enforced_limit_mw(1) == 250 * W
    assert seen.enforced_limit_mw(0) == DEFAULT_MW  # the destroyed one's limit is gone


def test_a_half_created_device_file_is_created_again() -> None:
    path = sim_device_path("edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 8192)  # sized, header never written: a crash mid-creation
    assert shared.DeviceFile.peek(path) is None
    assert _open().enforced_limit_mw(0) == DEFAULT_MW


# ---------------------------------------------------------------- the witness


UUIDS = ("GPU-a", "GPU-b")


def _trail(path: Path, *records: tuple[str, dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for seq, (kind, fields) in enumerate(records, start=1):
            f.write(json.dumps({"seq": seq, "t": 0.0, "kind": kind, "fields": fields}) + "\n")
        f.write('{"seq": 99, "kind": "mess')  # a torn last write
    return path


def _start(**extra: Any) -> tuple[str, dict[str, Any]]:
    return ("agent_start", {"node": "n1", "pid": 7, "boot_id": boot_id(),
                            "gpus": [{"uuid": u} for u in UUIDS],
                            "initial_limits_mw": [DEFAULT_MW, 600 * W]} | extra)


def _vouched(trail: Path, found: tuple[int, int] = (300 * W, 300 * W)) -> tuple[int | None, ...]:
    return witness_limits(trail, node_id="n1", uuids=UUIDS, found_mw=found,
                          current_boot=boot_id()).limits_mw


def test_the_witness_vouches_for_a_run_that_never_stopped(tmp_path: Path) -> None:
    trail = _trail(tmp_path / "a.jsonl", _start(), ("limits", {}))
    assert _vouched(trail) == (DEFAULT_MW, 600 * W)
    assert _vouched(trail, (DEFAULT_MW, 650 * W)) == (None, None)  # not below: left


def test_the_witness_follows_outside_changes_after_the_start(tmp_path: Path) -> None:
    trail = _trail(tmp_path / "a.jsonl", _start(),
                   ("limit_changed_outside", {"uuid": "GPU-a", "to_mw": 500 * W}))
    assert _vouched(trail) == (500 * W, 600 * W)


def test_a_stop_that_failed_to_restore_still_vouches(tmp_path: Path) -> None:
    failed = _trail(tmp_path / "f.jsonl", _start(),
                    ("agent_stop", {"restore_failed": 1, "limits_restored_mw": []}))
    assert _vouched(failed) == (DEFAULT_MW, 600 * W)
    clean = _trail(tmp_path / "c.jsonl", _start(),
                   ("agent_stop", {"restore_failed": 0, "limits_restored_mw": []}))
    assert _vouched(clean) == (None, None)


@pytest.mark.parametrize("start", [
    _start(boot_id="another-boot"), _start(dry_run=True), _start(node="n2")],
    ids=["other boot", "dry run", "other node"])
def test_the_witness_vouches_for_nothing_it_cannot_prove(
        tmp_path: Path, start: tuple[str, dict[str, Any]]) -> None:
    assert _vouched(_trail(tmp_path / "a.jsonl", start)) == (None, None)


def test_the_witness_reads_the_rotated_file_when_the_live_one_has_no_run(
        tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    _trail(tmp_path / "audit.jsonl.000000000001", _start())
    _trail(live, ("file_start", {"reason": "rotated"}), ("limits", {}))
    assert _vouched(live) == (DEFAULT_MW, 600 * W)
    assert witness_limits(None, node_id="n1", uuids=UUIDS, found_mw=(1, 1)).vouched == ()
