"""The latency bench end to end at a tiny size: real broker, agent processes, both baselines.

Checks the report's shape and internal consistency, never its speed (shared CI machines).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from broker import MosquittoBroker

from gridtao.bench.baselines import BaselineNode
from gridtao.bench.latency import agent_config, judge_targets, run_latency_bench
from gridtao.bench.render import markdown, plot
from gridtao.cli.main import main
from gridtao.config.agent import Config, SimConfig
from gridtao.telemetry.runinfo import provenance

KEYS = ("publish_to_command_ms", "receive_to_command_ms", "trigger_to_target_ms")


def test_latency_bench_reports_every_measure(tmp_path: Path) -> None:
    result = run_latency_bench(Config(), triggers=2, gpus=2, baseline_triggers=1,
                               progress=lambda _line: None)
    assert result["triggers"] == 2 and result["gpus"] == 2
    for section in (result, result["under_load"]):
        for key in KEYS:
            stats = section[key]
            assert set(stats) == {"p50", "p99", "max"}
            assert 0 < stats["p50"] <= stats["p99"] <= stats["max"]
    # Each trigger was measured: receive -> command is part of publish -> command.
    idle = result["samples"]["idle"]
    assert len(idle["publish_to_command_ms"]) == 2
    for total, part in zip(idle["publish_to_command_ms"], idle["receive_to_command_ms"],
                           strict=True):
        assert part <= total
    # Target reached after command, and never before the simulated hardware could respond.
    for ms in idle["trigger_to_target_ms"]:
        assert ms > result["simulated_hardware_response"]["cap_down_tau_ms"] / 2
    # The hardware's share is what is left of trigger -> target after publish -> command.
    for t2t, p2c, hw in zip(idle["trigger_to_target_ms"], idle["publish_to_command_ms"],
                            idle["command_to_target_ms"], strict=True):
        assert hw == pytest.approx(t2t - p2c, abs=1e-6)
    # Two triggers are too few for a p99: the p99 targets are not judged, and said so ...
    few = result["targets"]
    assert few["publish_to_command_p99_ms"]["met"] is None
    assert few["trigger_to_target_p99_ms"]["met"] is None
    assert few["trigger_to_target_p99_ms"]["under_load"]["met"] is None
    assert isinstance(few["speedup_vs_sequential_subprocess_p50"]["met"], bool)
    # ... and with enough of them (the same figures) they are.
    targets = judge_targets(result | {"triggers": 20})
    hw99 = result["command_to_target_ms"]["p99"]
    assert targets["trigger_to_target_p99_ms"]["limit"] == pytest.approx(hw99 + 5.0)
    assert targets["trigger_to_target_p99_ms"]["met"] == (
        result["trigger_to_target_ms"]["p99"] <= hw99 + 5.0)
    p2c99 = max(result["publish_to_command_ms"]["p99"],
                result["under_load"]["publish_to_command_ms"]["p99"])
    assert targets["publish_to_command_p99_ms"]["met"] == (p2c99 <= 2.0)
    assert all(isinstance(t["met"], bool) for t in targets.values())
    r2c = targets["receive_to_command_p99_ms"]
    assert r2c["met"] == (result["receive_to_command_ms"]["p99"] <= 1.0
                          and result["under_load"]["receive_to_command_ms"]["p99"] <= 1.5)
    # The same driver calls on bare threads, measured in the run (no gridtao code).
    bare = result["bare_thread_fanout_ms"]
    assert r2c["bare_thread_fanout_p99"] == bare["p99"] >= bare["p50"] >= 0.2
    over = targets["publish_to_command_over_transport_p99_ms"]
    assert over["value"] == pytest.approx(result["publish_to_command_ms"]["p99"]
                                          - result["broker_hop_ms"]["p99"])
    assert over["met"] == (over["value"] <= 1.0)
    loaded = targets["trigger_to_target_p99_ms"]["under_load"]
    assert loaded["met"] == (result["under_load"]["trigger_to_target_ms"]["p99"]
                             <= result["under_load"]["command_to_target_ms"]["p99"] + 5.0)
    for name in ("sequential_subprocess", "polling_1s"):
        base = result["baselines"][name]
        assert base["triggers"] == 1
        assert base["publish_to_command_ms"]["p50"] > 0
    result |= provenance("gridtao bench latency --triggers 2 --gpus 2")  # as the command adds
    text = markdown(result, "gridtao bench latency --triggers 2 --gpus 2")
    assert "sequential_subprocess" in text and "transport floor" in text
    assert "reference: 2 driver calls on bare threads" in text
    assert "command_to_target_ms" in text and "Latency targets, judged by" in text
    assert "**not judged** (a p99 needs at least 20 triggers)" in text
    # What BENCHMARKS.md promises of every result: command, machine, date, commit, versions.
    assert f"commit {result['commit']}" in text and "- versions: " in text and "numpy" in text
    # Triggers that found the node in its band already are counted (each phase, a count).
    early = result["in_band_at_command"]
    assert set(early) == {"idle", "under_load"} and all(
        0 <= n <= 2 and n == sum(ms < 20.0 for ms in result["samples"][phase][
            "command_to_target_ms"]) for phase, n in early.items())
    # ... and what load the triggers met, and what each asked.
    assert result["load"]["trigger"] == {"kind": "shed", "fraction": 0.3, "duration_s": 0.35,
                                         "every_s": 2.5}
    assert (f"- load: the simulated GPUs' {Config().gpus.sim.workload} workload; each trigger "
            "a shed of 30% for 0.35 s") in text
    png = tmp_path / "lat.png"
    plot(result, png)
    assert png.stat().st_size > 1000
    json.dumps(result)  # the JSON written by --json must serialise


def test_real_gpus_are_refused_without_allow_actuation(
        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "latency", "--backend", "nvml", "--triggers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--allow-actuation" in err and "power limits" in err


def _driver_present() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


@pytest.mark.skipif(_driver_present(), reason="would write limits on this machine's GPUs")
def test_real_gpus_without_a_driver_is_one_line_and_nothing_runs(
        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "latency", "--backend", "nvml", "--allow-actuation", "--triggers", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "broker" not in err  # refused before a broker or an agent started


def test_on_real_gpus_the_agent_must_be_able_to_write_limits(tmp_path: Path) -> None:
    section = agent_config(Config(), 1883, 8, workdir=tmp_path, backend="nvml")["gpus"]
    assert section == {"backend": "nvml", "require_actuation": True}
    assert agent_config(Config(), 1883, 3, workdir=tmp_path)["gpus"]["sim"]["count"] == 3


def test_the_baseline_node_puts_back_the_limits_it_found() -> None:
    node = BaselineNode(SimConfig(count=2), band_fraction=0.05)
    try:
        resting = dict(node.resting_mw)
        _, caps = node.caps_for(0.3)
        assert all(cap <= resting[i] for i, cap in zip(node.indices, caps, strict=True))
        node.backend.set_limit_mw(0, node.backend.power_limits(0).min_mw)
        node.restore()
        assert {i: node.backend.enforced_limit_mw(i) for i in node.indices} == resting
    finally:
        node.close()


def test_with_the_planner_the_agent_plans_from_a_seeded_history(tmp_path: Path) -> None:
    from gridtao.config.agent import config_from_mapping
    from gridtao.history import HistoryStore

    data = agent_config(Config(), 1883, 4, workdir=tmp_path, planner=True)
    cfg = config_from_mapping(data, source="<bench agent>")  # a configuration the agent takes
    assert cfg.planner.enabled and cfg.planner.period_s == 10.0
    assert [p.kind for p in cfg.products] == ["dr"]  # no second frequency response
    with HistoryStore.open(tmp_path / "history.sqlite3") as store:
        assert store.count() == 14 * 1440
    assert json.loads((tmp_path / "signals.json").read_text())["version"] == 1


def test_island_alone_emulation_slows_tier_1_and_loads_another_process(tmp_path: Path) -> None:
    from gridtao.bench.latency import AgentProcess

    data = agent_config(Config(), 1883, 2, workdir=tmp_path, island_alone=True)
    assert data["control"]["fast_hz"] == 1.0
    assert agent_config(Config(), 1883, 2, workdir=tmp_path)["control"]["fast_hz"] == 100.0
    cfg = tmp_path / "never-read.yaml"  # the agent fails at once: only the burner matters here
    agent = AgentProcess(cfg, busy_load=0.5, log_path=tmp_path / "a.log", load_elsewhere=True)
    try:
        assert agent.burner is not None and agent.burner.poll() is None
        assert isinstance(agent.proc.args, list) and "--busy-load" not in agent.proc.args
    finally:
        agent.stop()
    assert agent.burner.poll() is not None


def test_the_bench_waits_for_its_own_agents_status_not_the_one_left_before(
        mqtt_broker: MosquittoBroker) -> None:
    """The idle phase's agent leaves its retained status on the broker; the loaded phase's
    agent is up only once a status with its own pid says so (a dispatch sent earlier was lost:
    no ack)."""
    import threading

    from gridtao.bench.latency import wait_online
    from gridtao.transport.localbroker import Publisher

    topic = "gridtao/bench/nodes/bench/status"
    with Publisher(mqtt_broker.host, mqtt_broker.port) as pub:
        pub.send(topic, json.dumps({"online": True, "instance": {"pid": 1}}).encode(),
                 retain=True)
        with pytest.raises(TimeoutError):
            wait_online(mqtt_broker, topic, 4242, timeout_s=0.5)
        later = threading.Timer(0.3, lambda: pub.send(topic, json.dumps(
            {"online": True, "instance": {"pid": 4242}}).encode(), retain=True))
        later.start()
        try:
            wait_online(mqtt_broker, topic, 4242, timeout_s=10.0)
        finally:
            later.join()
