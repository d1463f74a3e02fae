"""An ack says only what the GPUs really did: no ``commanded_at`` unless a limit was written, the
failed GPUs by index, nothing taken when every GPU refused (the driver's NotSupported, as on
NVIDIA's mock NVML library, reproduced with the simulator's fault injection)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_intake import (
    DEFAULT_MW,
    DEMAND_W,
    MAX_PAYLOAD,
    TOPICS,
    Rig,
    _make_rig,
    open_rig,
)

from gridtao.config.agent import ProductConfig
from gridtao.hotpath.intake import Intake
from gridtao.products.portfolio import Portfolio, ProductMonitor

N = len(DEMAND_W)
rig_fixture = pytest.fixture(open_rig, name="rig")  # test_intake's rig


def _errors(rig: Rig, kind: str) -> float:
    total = 0.0
    for i in range(N):
        total += rig.registry.get_sample_value(
            "gridtao_gpu_errors_total", {"gpu": str(i), "kind": kind}) or 0.0
    return total


def test_the_start_probe_finds_gpus_that_refuse_writes_and_moves_no_limit(rig: Rig) -> None:
    rig.sim.inject_fault(1, "not_supported")
    before = rig.limits()
    faults = rig.island.probe_writes()
    assert faults == {1: "GpuNotSupported"}
    assert rig.island.write_faults() == {1: "GpuNotSupported"}
    assert rig.limits() == before


def test_a_cut_no_gpu_takes_is_refused_with_each_gpus_reason(rig: Rig) -> None:
    for i in range(N):
        rig.sim.inject_fault(i, "not_supported")
    ack = rig.dispatch({"id": "s1", "kind": "shed", "fraction": 0.3, "duration_s": 60})
    assert ack["accepted"] is False and ack["commanded_at"] is None
    assert ack["failed_gpus"] == list(range(N))
    assert isinstance(ack["reason"], str) and "no GPU took the new limit" in ack["reason"]
    assert "gpu 0:" in ack["reason"] and "gpu 3:" in ack["reason"]
    assert rig.count("dispatch", "rejected") == 1 and rig.count("dispatch", "accepted") == 0
    assert _errors(rig, "GpuNotSupported") == N  # event writes are counted too
    assert rig.limits() == [DEFAULT_MW] * N
    assert rig.activations == []  # nothing journaled, nothing metered
    rig.advance(10.0)  # the released latch does not come back as an event
    assert rig.island.view().event_id is None


def test_a_partial_write_names_the_failed_gpu_and_keeps_the_others_capped(rig: Rig) -> None:
    rig.sim.inject_fault(2, "lost")
    ack = rig.dispatch({"id": "s1", "kind": "shed", "fraction": 0.3, "duration_s": 60})
    assert ack["accepted"] is True and isinstance(ack["commanded_at"], float)
    assert ack["failed_gpus"] == [2]
    assert "gpu 2:" in str(ack["reason"])
    assert all(rig.backend.enforced_limit_mw(i) < DEFAULT_MW for i in (0, 1, 3))
    assert _errors(rig, "GpuLost") == 1


def test_an_event_that_writes_nothing_carries_no_commanded_at(rig: Rig) -> None:
    deep = rig.dispatch({"id": "deep", "kind": "shed", "fraction": 0.4, "duration_s": 60})
    assert deep["accepted"] is True and deep["commanded_at"] is not None
    sets = rig.sets()
    shallow = rig.dispatch({"id": "shallow", "kind": "cap", "node_w": 2000, "duration_s": 60})
    assert rig.sets() == sets  # nothing written: the deeper event already holds the GPUs
    assert shallow["accepted"] is True and shallow["commanded_at"] is None
    assert shallow["binding"] is False


def test_a_cap_above_every_resting_limit_writes_nothing_and_claims_no_command(
        rig: Rig) -> None:
    sets = rig.sets()
    ack = rig.dispatch({"id": "kw", "kind": "cap", "node_w": 3_000_000, "duration_s": 60})
    assert rig.sets() == sets  # the GPUs already hold less than that: nothing to write
    assert ack["accepted"] is True and ack["commanded_at"] is None
    assert ack["binding"] is False
    assert rig.limits() == [DEFAULT_MW] * N


def test_a_frequency_step_no_gpu_takes_is_acked_as_not_taken(rig: Rig) -> None:
    for i in range(N):
        rig.sim.inject_fault(i, "not_supported")
    acks = [o for o in rig.frequency(49.45) if o.topic == TOPICS.ack]
    assert acks, "the dip fired a level"
    body = json.loads(acks[0].payload)
    assert body["accepted"] is False and body["commanded_at"] is None
    assert body["source"] == "frequency" and body["failed_gpus"] == list(range(N))
    assert rig.count("frequency", "rejected") == 0  # the sample itself was valid


def test_a_node_that_must_actuate_and_cannot_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({
        "gpus": {"backend": "sim", "require_actuation": True,
                 "sim": {"count": 2, "faults": [{"kind": "not_supported"}]}},
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "metrics": {"enabled": False},
        "audit": {"enabled": False}, "journal": {"enabled": False},
    }))
    done = subprocess.run([sys.executable, "-m", "gridtao", "--config", str(cfg), "run"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "no GPU accepts power-limit writes (gpu 0: GpuNotSupported" in done.stderr
    assert "require_actuation" in done.stderr and "Traceback" not in done.stderr


def test_an_id_reused_with_a_different_body_is_rejected_and_a_retry_is_not(rig: Rig) -> None:
    first = rig.dispatch({"id": "e1", "kind": "shed", "fraction": 0.2, "duration_s": 60,
                          "issued_at": 1_763_900_000.0})
    assert first["accepted"] is True
    retry = rig.dispatch({"id": "e1", "kind": "shed", "fraction": 0.2, "duration_s": 60,
                          "issued_at": 1_763_900_001.0})  # re-stamped, same request
    assert retry == first
    reused = rig.dispatch({"id": "e1", "kind": "shed", "fraction": 0.5, "duration_s": 60})
    assert reused["accepted"] is False
    assert "reused with a different body (the first is still in force)" in str(reused["reason"])
    assert rig.count("dispatch", "duplicate") == 1 and rig.count("dispatch", "rejected") == 1
    assert rig.island.view().active_event_ids == ("e1",)
    # The refusal of a message under a live id says the event stands (anyone on the broker
    # can send one); the refusal of an id that holds nothing does not.
    assert reused["in_force"] is True
    junk = rig.dispatch(b'{"id": "e2", "kind": "shed"}')
    assert junk["accepted"] is False and "in_force" not in junk
    # A release's id holds no event: reused, its refusal does not claim one is in force.
    assert rig.dispatch({"id": "r1", "kind": "release", "ref": "e1"})["accepted"] is True
    again = rig.dispatch({"id": "r1", "kind": "release", "ref": "e9"})
    assert again["accepted"] is False and "in_force" not in again
    assert "(the first was acted on; an id is used once)" in str(again["reason"])


def test_stop_skips_what_the_gpus_already_hold_and_counts_a_real_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from gridtao.app.agent import Agent, AgentOptions
    from gridtao.clock import VirtualClock
    from gridtao.config.agent import load_config
    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.gpu.sim.nvml import SimNvml

    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({
        "gpus": {"sim": {"count": 3}}, "metrics": {"enabled": False},
        "audit": {"enabled": False}, "journal": {"enabled": False}}))
    cfg = load_config(path)
    sim = SimNvml.from_config(cfg.gpus.sim, VirtualClock(0.0))
    backend = NvmlBackend(sim)
    agent = Agent(cfg, backend=backend, clock=sim.clock,
                  options=AgentOptions(serve_metrics=False))
    try:
        for i in range(3):
            sim.inject_fault(i, "not_supported")  # writes refused: none is needed for 0 and 1
        assert agent.restore_initial_limits() == 0
        assert "could not restore" not in caplog.text
        sim.clear_faults()
        backend.set_limit_mw(2, 300_000)  # left capped, and then the GPU is lost
        sim.inject_fault(2, "lost")
        assert agent.restore_initial_limits() == 1
        assert "GPU 2: could not restore" in caplog.text
    finally:
        agent.island.close()
        backend.close()


def test_a_dry_run_acks_what_it_would_write_and_claims_no_command() -> None:
    from test_intake import SET, TRIGGERS

    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.hotpath.intake import Intake
    from gridtao.products.frequency import FrequencyMonitor
    from gridtao.safety.island import SafetyIsland

    base = _make_rig()
    backend = NvmlBackend(base.sim, dry_run=True)
    island = SafetyIsland(backend, clock=base.clock, release_rate_per_s=0.2, max_event_s=600.0,
                          dry_run=True)
    try:
        island.start()
        intake = Intake(island, TOPICS, clock=base.clock, monitor=FrequencyMonitor(TRIGGERS),
                        max_payload_bytes=4096)
        sets = base.sim.call_count(SET)
        (out,) = intake.on_message(
            TOPICS.dispatch, json.dumps({"id": "d1", "kind": "shed", "fraction": 0.3,
                                         "duration_s": 60}).encode(),
            received_at=base.clock.now(), received_wall=base.clock.wall())
        ack = json.loads(out.payload)
        assert ack["accepted"] is True and ack["dry_run"] is True
        assert ack["commanded_at"] is None
        assert base.sim.call_count(SET) == sets
    finally:
        island.close()
        base.island.close()
        base.backend.close()


def test_sigterm_while_waiting_for_the_broker_at_start_stops_at_once(tmp_path: Path) -> None:
    import signal
    import socket
    import time

    with socket.socket() as s:  # a loopback port nothing listens on: the broker is "down"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({
        "gpus": {"backend": "sim", "sim": {"count": 2}},
        "mqtt": {"host": "127.0.0.1", "port": port, "node_id": "sigterm-at-start"},
        "metrics": {"enabled": False},
        "audit": {"enabled": False}, "journal": {"enabled": False}}))
    proc = subprocess.Popen([sys.executable, "-m", "gridtao", "--config", str(cfg), "run"],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "connecting to the broker" in line:
                break
        time.sleep(0.5)  # well into the start's wait for the broker
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0
    # Without the abort the start waits out its 10 s broker timeout first; 5 s leaves room for
    # a loaded CI machine and still fails that.
    assert waited < 5.0, waited


@pytest.mark.parametrize("host", ["192.0.2.1", "256.256.256.256"])
def test_a_metrics_address_the_agent_cannot_listen_on_is_one_line(
    tmp_path: Path, host: str,
) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({
        "gpus": {"backend": "sim", "sim": {"count": 2}},
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "metrics": {"enabled": True, "host": host, "port": 9},
        "audit": {"enabled": False}, "journal": {"enabled": False},
    }))
    done = subprocess.run([sys.executable, "-m", "gridtao", "--log-level", "warning",
                           "--config", str(cfg), "run"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"metrics.host/metrics.port {host}:9: cannot listen there" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_metrics_port_in_use_fails_the_start_before_anything_is_recorded(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "node.yaml"
        audit, journal = tmp_path / "audit.jsonl", tmp_path / "journal.json"
        cfg.write_text(yaml.safe_dump({
            "gpus": {"backend": "sim", "sim": {"count": 2}},
            "mqtt": {"host": "127.0.0.1", "port": 1},
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": port},
            "audit": {"path": str(audit)}, "journal": {"path": str(journal)},
        }))
        done = subprocess.run([sys.executable, "-m", "gridtao", "--log-level", "warning",
                               "--config", str(cfg), "run"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"127.0.0.1:{port}: cannot listen there" in done.stderr
    # No run is recorded that never ran, and no journal claims GPUs were touched.
    assert not audit.exists() or "agent_start" not in audit.read_text()
    assert not journal.exists()


def test_the_start_probe_never_lifts_caps_a_crashed_run_left() -> None:
    from gridtao.clock import VirtualClock
    from gridtao.config.agent import SimConfig
    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.gpu.sim.nvml import SimNvml
    from gridtao.safety.island import SafetyIsland

    clock = VirtualClock(0.0)
    sim = SimNvml.from_config(SimConfig(count=2, noise_w=0.0), clock)
    backend = NvmlBackend(sim)
    backend.set_limit_mw(0, 358_000)  # what the crashed run's event left on GPU 0
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=600.0,
                          resting_mw=[700_000, 700_000])  # what that run found at its start
    try:
        island.start()
        assert island.probe_writes() == {}
        assert backend.enforced_limit_mw(0) == 358_000  # held for the recovery to re-hold
    finally:
        island.close()
        backend.close()


def test_writes_the_island_stopped_waiting_for_are_not_a_refusal() -> None:
    from types import MappingProxyType

    from gridtao.gpu.backend import GpuNotSupported
    from gridtao.safety.errors import WriteTimeout
    from gridtao.safety.latch import Activation

    def act(*errors: Exception) -> Activation:
        return Activation("e", "shed", 1e6, 7e5, (350_000, 350_000), 1.0, 1.0,
                          errors=MappingProxyType(dict(enumerate(errors))))

    timed_out = act(WriteTimeout("late", index=0), WriteTimeout("late", index=1))
    assert not timed_out.refused  # they may still land: never acked as refused
    assert not timed_out.commanded  # nor as commanded: nothing is known to be in force
    mixed = act(GpuNotSupported("no", index=0), WriteTimeout("late", index=1))
    assert not mixed.refused
    assert act(GpuNotSupported("no", index=0), GpuNotSupported("no", index=1)).refused


def test_a_release_ack_claims_no_command_and_reached_keeps_the_first_acks_fields(
    rig: Rig,
) -> None:
    rig.dispatch({"id": "deep", "kind": "shed", "fraction": 0.4, "duration_s": 60})
    shallow = rig.dispatch({"id": "shallow", "kind": "cap", "node_w": 2000, "duration_s": 60})
    assert shallow["binding"] is False
    reached = rig.intake.reached_ack("shallow", rig.clock.wall())
    assert reached is not None
    body = json.loads(reached.payload)
    assert body["binding"] is False and body["commanded_at"] is None and body["reached_at"]
    release = rig.dispatch({"id": "r1", "kind": "release", "ref": "deep"})
    assert release["accepted"] is True and release["commanded_at"] is None


def test_reject_and_duplicate_acks_are_expendable_activation_acks_are_not(rig: Rig) -> None:
    (accepted,) = rig.send(TOPICS.dispatch, {"id": "a1", "kind": "shed", "fraction": 0.3,
                                             "duration_s": 60})
    (rejected,) = rig.send(TOPICS.dispatch, b"{not json")
    (duplicate,) = rig.send(TOPICS.dispatch, {"id": "a1", "kind": "shed", "fraction": 0.3,
                                              "duration_s": 60})
    assert not accepted.expendable
    assert rejected.expendable and duplicate.expendable


def test_in_force_is_said_only_of_a_demand_response_event_still_held() -> None:
    rig = _make_rig()
    try:
        monitor = ProductMonitor([], Portfolio([ProductConfig(kind="dr", capacity_w=500.0)],
                                               ramp_out_per_s=0.2))
        rig.intake = Intake(rig.island, TOPICS, clock=rig.clock, monitor=monitor, dr=monitor,
                            max_payload_bytes=MAX_PAYLOAD)
        later = rig.clock.wall() + 600.0
        assert rig.dispatch({"id": "d1", "kind": "dr", "reduction_w": 200.0, "duration_s": 60,
                             "start_at": later})["accepted"] is True
        assert rig.dispatch({"id": "d1", "kind": "shed"})["in_force"] is True  # queued
        reused = rig.dispatch({"id": "d1", "kind": "dr", "reduction_w": 100.0,
                               "duration_s": 60, "start_at": later})
        assert reused["in_force"] is True and "the first is still in force" in str(reused["reason"])
        assert rig.dispatch({"id": "r1", "kind": "release", "ref": "d1"})["accepted"] is True
        assert "in_force" not in rig.dispatch({"id": "d1", "kind": "shed"})  # cancelled
    finally:
        rig.close()
