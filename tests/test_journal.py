"""The state journal alone: format, atomic writes, the lock, the writer, recovery arithmetic."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gridtao.clock import VirtualClock
from gridtao.config.agent import SimConfig
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.records.journal import (
    Journal,
    JournalError,
    JournalEvent,
    JournalState,
    from_json,
    load_journal,
    plan_recovery,
    to_json,
)
from gridtao.records.ledger import TICK_MARGIN_S
from gridtao.safety.island import SafetyIsland

T0 = 1_763_900_000.0
N = 2


def _event(event_id: str = "e1", *, started: float = T0, hold_until: float | None = T0 + 600,
           ) -> JournalEvent:
    return JournalEvent(event_id, "shed", 800_000.0, 1_200_000.0, (600_000.0, 600_000.0),
                        (400_000, 400_000), started, hold_until)


def _state(*events: JournalEvent, alive: float = T0) -> JournalState:
    return JournalState(node="n1", gpu_uuids=("GPU-a", "GPU-b"),
                        initial_limits_mw=(700_000, 650_000), first_started_wall=T0 - 100,
                        alive_wall=alive, pid=42, events=events)


def test_state_round_trips_through_json() -> None:
    state = _state(_event("e1"), _event("e2", hold_until=None),
                   dataclasses.replace(_event("e3"), received_wall=T0 - 0.01,
                                       reached_wall=T0 + 0.08, reached_power_w=3698.7),
                   dataclasses.replace(_event("e4"), commanded=False))
    assert from_json(to_json(state)) == state


def test_a_journal_written_before_receipt_and_reach_were_kept_still_reads() -> None:
    """The times an event's acks keep across a restart are optional in the file: a journal of
    an earlier version reads with them unknown, and a present one must be a number."""
    body = json.loads(to_json(_state(_event("e1"))))
    assert "received_wall" not in body["events"][0] and "reached_wall" not in body["events"][0]
    (ev,) = from_json(json.dumps(body).encode()).events
    assert (ev.received_wall, ev.reached_wall, ev.reached_power_w) == (None, None, None)
    assert ev.commanded
    for key, bad in (("reached_wall", "soon"), ("commanded", "no")):
        with pytest.raises(ValueError, match=key):
            from_json(json.dumps(body | {"events": [body["events"][0] | {key: bad}]}).encode())


@pytest.mark.parametrize("damage", [
    b"", b"{", b"[]", b'{"version": 99}',
    b'{"version": 1, "node": "n", "pid": 1, "gpu_uuids": ["a"], "initial_limits_mw": [1, 2],'
    b' "first_started_wall": 0, "alive_wall": 0, "events": []}',
    b'{"version": 1, "node": "n", "pid": 1, "gpu_uuids": ["a"], "initial_limits_mw": [NaN],'
    b' "first_started_wall": 0, "alive_wall": 0, "events": []}',
])
def test_an_unreadable_journal_is_an_error_naming_the_file(tmp_path: Path, damage: bytes) -> None:
    path = tmp_path / "j.json"
    path.write_bytes(damage)
    with pytest.raises(JournalError, match=str(path)):
        load_journal(path)


def test_no_journal_means_a_clean_last_stop(tmp_path: Path) -> None:
    assert load_journal(tmp_path / "none.json") is None


def _running(path: Path, heartbeat_s: float) -> tuple[VirtualClock, Journal]:
    """A journal at ``path``, opened and writing, on a virtual clock at T0."""
    clock = VirtualClock(wall_offset=T0)
    journal = Journal(path, clock=clock, heartbeat_s=heartbeat_s)
    journal.open(_state(alive=clock.wall()))
    journal.start()
    return clock, journal


def test_the_writer_keeps_the_latest_state_and_a_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    clock, journal = _running(path, 0.05)
    journal.add_event(_event("e1"))
    journal.add_event(_event("e2", started=T0 + 1))
    journal.remove_event("e1")
    assert journal.flush()
    loaded = load_journal(path)
    assert loaded is not None and [e.event_id for e in loaded.events] == ["e2"]
    clock.advance(30.0)
    deadline = time.monotonic() + 10
    while (j := load_journal(path)) is None or j.alive_wall < T0 + 30:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.02)
    journal.close(clean=False)
    assert load_journal(path) is not None  # a crash-like stop leaves it for the next start
    journal2 = Journal(path, clock=clock, heartbeat_s=1.0)
    journal2.open(_state())
    journal2.close(clean=True)
    assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temp files, no lock left


def test_a_clean_stop_that_cannot_remove_its_journal_marks_it_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state folder the agent can no longer change (made read-only while it ran): the clean
    stop writes its journal over with no event and ``stopped``, and the next start does not
    take it for a crash (it held the event again, for an event already acked as ended)."""
    path = tmp_path / "j.json"
    _, journal = _running(path, 1.0)
    journal.add_event(_event("e1"))
    assert journal.flush()
    real_unlink = Path.unlink

    def refused(self: Path, missing_ok: bool = False) -> None:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    journal.close(clean=True)
    left = load_journal(path)
    assert left is not None and left.stopped and left.events == ()
    assert from_json(to_json(left)).stopped


def test_readers_never_see_a_partial_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    journal = Journal(path, clock=VirtualClock(wall_offset=T0), heartbeat_s=1.0)
    journal.open(_state())
    journal.start()
    stop = threading.Event()
    seen: list[int] = []
    errors: list[Exception] = []

    def read() -> None:
        while not stop.is_set():
            try:
                state = load_journal(path)
                assert state is not None
                seen.append(len(state.events))
            except Exception as e:
                errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        journal.add_event(_event(f"e{i}", started=T0 + i))
        if i % 10 == 0:
            journal.flush()
    journal.flush()
    stop.set()
    reader.join()
    final = load_journal(path)  # the reader may have stopped just before the last flush landed
    journal.close(clean=True)
    assert not errors, errors[:3]
    assert seen and final is not None and len(final.events) == 200
    assert all(0 <= n <= 200 for n in seen)


def test_one_journal_one_agent(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    first = Journal(path, clock=VirtualClock(), heartbeat_s=1.0)
    first.lock()
    with pytest.raises(JournalError, match="in use by another gridtao agent") as refused:
        Journal(path, clock=VirtualClock(), heartbeat_s=1.0).lock()
    # It names the key and the holder (this process holds the first lock).
    said = str(refused.value)
    assert said.startswith("journal.path: ") and f"(pid {os.getpid()})" in said
    assert "mqtt.node_id" in said
    first.close(clean=True)
    Journal(path, clock=VirtualClock(), heartbeat_s=1.0).lock()  # released


def test_a_start_that_fails_after_locking_leaves_no_lock_and_keeps_an_older_journal(
        tmp_path: Path) -> None:
    """The agent locked the journal and then failed to start (an audit trail it cannot open):
    the lock file goes, a journal a crashed run left stays for the next start to read."""
    path = tmp_path / "j.json"
    path.write_bytes(to_json(_state(alive=T0)))
    journal = Journal(path, clock=VirtualClock(), heartbeat_s=1.0)
    journal.lock()
    journal.close(clean=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.json"]


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time; f = open(sys.argv[1], 'a+b'); "
         "fcntl.flock(f.fileno(), fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(path) + ".lock"],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(JournalError):
            Journal(path, clock=VirtualClock(), heartbeat_s=1.0).lock()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    journal = Journal(path, clock=VirtualClock(), heartbeat_s=1.0)
    journal.lock()
    journal.close(clean=True)


# ---- recovery arithmetic ---------------------------------------------------------------------

BOUND_S = 300.0
RAMP_S = 5.0
MAX_EVENT_S = 3600.0


def _plan(state: JournalState, now: float) -> tuple[dict[str, float], dict[str, str]]:
    plan = plan_recovery(state, now_wall=now, max_capped_after_crash_s=BOUND_S,
                         max_event_s=MAX_EVENT_S, ramp_s=RAMP_S)
    return ({e.event_id: hold for e, hold in plan.restore}, dict(plan.expired))


def test_recovery_holds_the_rest_of_an_event_within_the_bound() -> None:
    restore, expired = _plan(_state(_event("short", hold_until=T0 + 60),
                                    _event("long", hold_until=T0 + 6000)), T0 + 10)
    assert restore["short"] == pytest.approx(50.0)  # its own duration, ramp after as usual
    assert restore["long"] == pytest.approx(BOUND_S - 10 - RAMP_S)  # released by crash + bound
    assert not expired


def test_recovery_restores_nothing_past_its_end_or_the_bound() -> None:
    restore, expired = _plan(_state(_event("over", hold_until=T0 + 60),
                                    _event("long", hold_until=T0 + 6000)), T0 + 400)
    assert not restore
    assert expired == {"over": "its duration is over", "long": "crash bound is over"}


def test_recovery_respects_max_event_s() -> None:
    started = T0 - MAX_EVENT_S + 20
    restore, _ = _plan(_state(_event("old", started=started, hold_until=None)), T0)
    assert restore["old"] == pytest.approx(20 - RAMP_S)


@pytest.mark.parametrize("jump_s", [-86_400.0, -1.0, 0.0, 5.0])
def test_a_wall_clock_jump_never_lengthens_a_recovered_hold(jump_s: float) -> None:
    restore, expired = _plan(_state(_event("e", hold_until=T0 + 86_400)), T0 + jump_s)
    assert restore["e"] <= BOUND_S - RAMP_S
    assert not expired


def test_a_wall_clock_jump_forward_expires_the_event() -> None:
    restore, expired = _plan(_state(_event("e", hold_until=T0 + 10 * 86_400)), T0 + 86_400)
    assert not restore and "e" in expired


def test_journal_file_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    journal = Journal(path, clock=VirtualClock(wall_offset=T0), heartbeat_s=1.0)
    journal.open(_state(_event("e1")))
    data = json.loads(path.read_text())
    assert data["initial_limits_mw"] == [700_000, 650_000]
    assert data["events"][0]["id"] == "e1" and data["events"][0]["caps_mw"] == [400_000] * N
    journal.close(clean=True)


def test_a_recovered_event_is_fully_released_within_the_crash_bound() -> None:
    """GPUs drawing 400 W under 700 W limits, FFR's 20 %/s: a recovered cut's release gives
    back its reduction and then rises from the draw to the resting limits. The plan leaves
    room for both (the island's ``release_bound_s``), so the limits are back 30 s after the
    crash at the latest."""
    gpus, w, bound_s = 4, 1000, 30.0
    clock = VirtualClock(1000.0)
    backend = NvmlBackend(SimNvml.from_config(
        SimConfig(count=gpus, noise_w=0.0, read_latency_ms=0, set_latency_ms=0), clock))
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=3600)
    island.start()
    basis = (400.0 * w,) * gpus
    crash_wall = clock.wall()
    ev = JournalEvent("e1", "shed", target_mw=0.8 * sum(basis), baseline_mw=sum(basis),
                      basis_mw=basis, caps_mw=(320 * w,) * gpus, started_wall=crash_wall - 10,
                      hold_until_wall=crash_wall + 3600)
    state = JournalState(node="n", gpu_uuids=tuple(f"u{i}" for i in range(gpus)),
                         initial_limits_mw=(700 * w,) * gpus,
                         first_started_wall=crash_wall - 100, alive_wall=crash_wall,
                         events=(ev,))
    clock.advance(1.0)  # restarted 1 s after the crash
    plan = plan_recovery(state, now_wall=clock.wall(), max_capped_after_crash_s=bound_s,
                         max_event_s=3600, ramp_s=island.release_bound_s + TICK_MARGIN_S)
    ((_, hold_s),) = plan.restore
    try:
        island.update_draw(basis)
        island.trigger_cap("e1", ev.target_mw / 1000.0)
        t0 = clock.now()
        while clock.now() - t0 < hold_s:
            clock.advance(0.01)
            island.tick()
        island.release("e1")
        while island.view().event_id is not None and clock.wall() - crash_wall < 3 * bound_s:
            clock.advance(0.01)
            island.tick()
        assert [backend.enforced_limit_mw(i) for i in range(gpus)] == [700 * w] * gpus
        assert clock.wall() - crash_wall <= bound_s
    finally:
        island.close()
        backend.close()
