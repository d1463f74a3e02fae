"""Tier 3 in the running agent: history recorded from the GPU read-backs, a planning round from
history and signals published retained and audited, and a failed round that never takes the
agent down. A real Mosquitto; the planner's round is called directly (it runs hourly)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from broker import MosquittoBroker, Subscriber
from nodes import merge, running, steady_sim
from waiting import wait_until

from gridtao.app.readback import ReadBack
from gridtao.cli.main import main
from gridtao.clock import MonotonicClock, VirtualClock
from gridtao.config.agent import Config, SimConfig, config_from_mapping
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.history import HistoryStore, MinuteRow
from gridtao.history.synth import synthetic_minutes

N = 4
DAY_S = 86_400


class _Limits:
    """The island as ReadBack sees it: enforced limits to refresh and read."""

    def refresh_enforced(self) -> list[object]:
        return []  # no limit changed from outside

    def enforced_mw(self) -> tuple[int, ...]:
        return (700_000, 700_000)


def test_read_backs_give_the_node_power_from_the_energy_counters() -> None:
    clock = VirtualClock()
    sim = SimNvml.from_config(SimConfig(count=2, noise_w=0.0), clock)
    for i in range(2):
        sim.set_demand_w(i, 400.0)
    readings: list[tuple[float, float, float]] = []
    rb = ReadBack(NvmlBackend(sim), _Limits(), [0, 1], clock=clock,  # type: ignore[arg-type]
                  on_reading=lambda *r: readings.append(r))
    clock.advance(5.0)  # the draw settles at the demand
    rb.read()  # the first round only starts the counters' interval
    assert readings == []
    clock.advance(0.5)
    rb.read()
    (wall, it_w, limit_w), = readings
    assert it_w == pytest.approx(800.0, rel=0.02) and limit_w == 1400.0
    assert wall == clock.wall()


def _signals(now: float, hours: int = 72) -> dict[str, Any]:
    start = int(now) // 3600 * 3600
    return {"version": 1, "issued_at": now, "source": "test", "start": start, "mtu_s": 3600,
            "energy_price_eur_per_mwh": [60.0] * hours,
            "reserve_price_eur_per_mw_h": {"ffr": [20.0] * hours},
            "carbon_g_per_kwh": [150.0] * hours}


def _config(broker: MosquittoBroker, tmp: Path, **planner: Any) -> Config:
    config_file = tmp / "agent.yaml"
    config_file.write_text("# the test's mapping stands in for this file\n")
    return config_from_mapping(merge({}, {
        "gpus": {"sim": {"count": N, "noise_w": 0.0, "seed": 5}},
        "mqtt": {"port": broker.port, "node_id": "plan", "prefix": "gridtao/e2e-plan",
                 "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "metrics": {"enabled": False},
        "safety": {"triggers": []},
        "products": [{"kind": "ffr", "capacity_w": 400, "threshold_hz": 49.5}],
        "history": {"path": str(tmp / "history.sqlite3")},
        "planner": {"enabled": True, "period_s": 3600, **planner},
    }), source=str(config_file))


def test_a_round_publishes_the_plan_retained_and_audits_it(mqtt_broker: MosquittoBroker,
                                                            tmp_path: Path) -> None:
    now = time.time()
    with HistoryStore.open(tmp_path / "history.sqlite3") as store:
        store.write(synthetic_minutes(int(now) // 60 * 60 - 14 * DAY_S, 14, gpus=N, seed=2))
    (tmp_path / "signals.json").write_text(json.dumps(_signals(now)))
    cfg = _config(mqtt_broker, tmp_path, signals_file="signals.json")
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    with running(mqtt_broker, cfg, sim, serve=True) as node:
        wait_until(lambda: node.agent.status_link.is_connected, "the controller's connection",
                   timeout_s=10.0)
        state = node.agent.planning.plan_once()
        assert state.name == "planned", getattr(state, "reason", None)
        plan = state.plan
        assert plan is not None and plan.forecast.horizon == 24
        offers = plan.result.offers_w["ffr"]
        # Never more than enrolled, never more than the forecast's low quantile over the floor.
        assert offers.max() <= 400.0 + 1e-6
        with Subscriber(mqtt_broker.host, mqtt_broker.port, node.topics.plan) as sub:
            retained = json.loads(sub.wait(1, 10.0)[0].payload)
        assert retained["state"] == "planned" and retained["mtu_s"] == 3600
        assert retained["offers_w"]["ffr"] == [round(float(x), 1) for x in offers]
        assert len(retained["forecast_w"]["p10_w"]) == 24
        kinds = [r["kind"] for r in node.audit()]
        assert "plan" in kinds
        # Prometheus: the state, the plan's age, what is armed (nothing awarded yet: the
        # configured capacity).
        assert node.value("gridtao_plan_state", state="planned") == 1.0
        assert node.value("gridtao_plan_state", state="no_plan") == 0.0
        assert 0.0 <= node.value("gridtao_plan_age_seconds") < 60.0
        assert node.value("gridtao_capacity_armed_watts", product="ffr") == 400.0


def test_a_round_without_history_offers_nothing_and_says_why(mqtt_broker: MosquittoBroker,
                                                             tmp_path: Path) -> None:
    cfg = _config(mqtt_broker, tmp_path)
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    with running(mqtt_broker, cfg, sim, serve=True) as node:
        wait_until(lambda: node.agent.status_link.is_connected, "the controller's connection",
                   timeout_s=10.0)
        state = node.agent.planning.plan_once()
        assert state.name == "no_plan"
        with Subscriber(mqtt_broker.host, mqtt_broker.port, node.topics.plan) as sub:
            retained = json.loads(sub.wait(1, 10.0)[0].payload)
        assert retained["state"] == "no_plan" and "history" in retained["reason"]
        assert retained["offers_w"] == {}


def test_gridtao_plan_prints_the_hourly_table_and_writes_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    store = tmp_path / "h.sqlite3"
    with HistoryStore.open(store) as db:
        db.write(synthetic_minutes(int(now) // 60 * 60 - 14 * DAY_S, 14, gpus=8, seed=2))
    (tmp_path / "signals.json").write_text(json.dumps(_signals(now)))
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "gpus": {"backend": "sim"}, "safety": {"triggers": []},
        "products": [{"kind": "ffr", "capacity_w": 400, "threshold_hz": 49.5}]}))
    out_json, out_png = tmp_path / "plan.json", tmp_path / "plan.png"
    rc = main(["--config", str(cfg), "plan", "--store", str(store), "--horizon-h", "12",
               "--signals", str(tmp_path / "signals.json"), "--json", str(out_json),
               "--plot", str(out_png)])
    captured = capsys.readouterr()
    text = captured.out
    assert rc == 0, captured.err
    assert "plan for 12 MTUs of 3600 s" in text and "ffr" in text and "total: revenue" in text
    assert "ceiling W" in text and "shed Wh" in text
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000
    data = json.loads(out_json.read_text())
    assert len(data["hours"]) == 12 and data["status"] == "optimal"
    for hour in data["hours"]:
        assert 0.0 <= hour["offers_w"]["ffr"] <= 400.0 + 1e-6
        assert hour["p10_w"] <= hour["p50_w"] <= hour["p90_w"]
        assert hour["work_shed_wh"] >= 0.0
    # The hours' work shed adds up to the plan's.
    assert sum(h["work_shed_wh"] for h in data["hours"]) == pytest.approx(
        data["work_shed_wh"], abs=0.1 * len(data["hours"]))
    # Not enough history: one line, exit 2.
    empty = tmp_path / "empty.sqlite3"
    HistoryStore.open(empty).close()
    assert main(["--config", str(cfg), "plan", "--store", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "history" in err[0]
    # A day of history only: one line naming the store and how to fill it.
    short = tmp_path / "short.sqlite3"
    with HistoryStore.open(short) as db:
        db.write(synthetic_minutes(int(now) // 60 * 60 - 6 * 3600, 0.25, gpus=8, seed=2))
    assert main(["--config", str(cfg), "plan", "--store", str(short)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(short) in err[0] and "gridtao history import" in err[0], err
    # A signals file that is not there: the configuration file, the key and the path.
    cfg.write_text(yaml.safe_dump({
        "gpus": {"backend": "sim"}, "safety": {"triggers": []},
        "planner": {"signals_file": "nosignals.json"},
        "products": [{"kind": "ffr", "capacity_w": 400, "threshold_hz": 49.5}]}))
    assert main(["--config", str(cfg), "plan", "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{cfg}: planner.signals_file: {tmp_path / 'nosignals.json'}" \
        in err[0], err


def test_minutes_cut_by_an_event_are_gaps_to_the_forecast(tmp_path: Path) -> None:
    from gridtao.app.planning import natural_history
    from gridtao.history import MinuteRow

    path = tmp_path / "h.sqlite3"
    with HistoryStore.open(path) as db:
        db.write([MinuteRow(60 * k, 3000.0, 2900.0, 180_000.0, 5600.0, 0.0) for k in range(3)]
                 + [MinuteRow(180, 1500.0, 1400.0, 90_000.0, 2000.0, 42.0)])
    t, mean, p10 = natural_history(path, 0, 600)
    assert t.tolist() == [0, 60, 120] and mean.tolist() == [3000.0] * 3
    assert p10.tolist() == [2900.0] * 3


def test_signals_on_the_topic_reach_the_plan_and_bad_ones_are_refused_and_said(
        mqtt_broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No signals file: the first round plans without prices and says so. A retained document
    on ``{prefix}/signals`` is taken and priced into the next round; a stale one and a
    malformed one are refused with their reason and leave the last good one in force."""
    now = time.time()
    first = int(now) // 60 * 60 - 14 * DAY_S
    with HistoryStore.open(tmp_path / "history.sqlite3") as store:  # a steady 2400 W node
        store.write([MinuteRow(first + 60 * k, 2400.0, 2380.0, 2400.0 * 60, 2800.0, 0.0)
                     for k in range(14 * 1440)])
    cfg = _config(mqtt_broker, tmp_path)
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    with running(mqtt_broker, cfg, sim, serve=True) as node, \
            caplog.at_level(logging.WARNING, logger="gridtao.tier3"):
        planning = node.agent.planning
        wait_until(lambda: node.agent.status_link.is_connected, "the controller's connection",
                   timeout_s=10.0)
        bare = planning.plan_once().plan
        assert bare is not None and bare.result.offers_w["ffr"].max() == 0.0
        assert any("no price or carbon signals" in n for n in bare.summary()["notes"])
        good = _signals(time.time())
        node.send(node.topics.signals, good)
        wait_until(lambda: planning.signals(time.time()) is not None, "the signals taken",
                   timeout_s=10.0)
        priced = planning.plan_once().plan
        assert priced is not None and priced.result.offers_w["ffr"].max() > 0.0
        assert not any("no price" in n for n in priced.summary()["notes"])
        taken = planning.signals(time.time())
        stamp = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime())
        no_interval = (  # an ENTSO-E period of resolution PT0M: no interval to divide by
            "<Publication_MarketDocument><type>A44</type><createdDateTime>" + stamp
            + "</createdDateTime><TimeSeries><currency_Unit.name>EUR</currency_Unit.name>"
            "<price_Measure_Unit.name>MWH</price_Measure_Unit.name><curveType>A01</curveType>"
            "<Period><timeInterval><start>" + stamp + "</start><end>" + stamp + "</end>"
            "</timeInterval><resolution>PT0M</resolution><Point><position>1</position>"
            "<price.amount>5</price.amount></Point></Period></TimeSeries>"
            "</Publication_MarketDocument>").encode()
        for bad, why in ((good | {"issued_at": time.time() - 3 * DAY_S}, "stale"),
                         (b"{not json", "not valid JSON"),
                         (no_interval, "is no interval"),
                         (b"[" * 1500 + b"]" * 1500, "nested too deeply")):
            node.send(node.topics.signals, bad)
            wait_until(lambda why=why: any(  # type: ignore[misc]
                "refused" in r.getMessage() and why in r.getMessage()
                for r in caplog.records), f"the refusal ({why})", timeout_s=10.0)
            assert planning.signals(time.time()) == taken


def test_gridtao_plan_with_a_work_requirement(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``--work-kwh E --by TIME``: a requirement the forecast can meet gives a plan that says
    it; one it cannot (more energy than the node could draw by then) is refused in one line;
    one option without the other is a usage error."""
    now = time.time()
    store = tmp_path / "h.sqlite3"
    first = int(now) // 60 * 60 - 14 * DAY_S
    with HistoryStore.open(store) as db:  # a steady 2400 W node
        db.write([MinuteRow(first + 60 * k, 2400.0, 2380.0, 2400.0 * 60, 2800.0, 0.0)
                  for k in range(14 * 1440)])
    (tmp_path / "signals.json").write_text(json.dumps(_signals(now)))
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "gpus": {"backend": "sim", "sim": {"count": N}}, "safety": {"triggers": []},
        "products": [{"kind": "ffr", "capacity_w": 400, "threshold_hz": 49.5}]}))
    base = ["--config", str(cfg), "plan", "--store", str(store), "--horizon-h", "6",
            "--signals", str(tmp_path / "signals.json")]
    by = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 4 * 3600))
    assert main([*base, "--work-kwh", "2", "--by", by]) == 0
    assert "note: work requirement: at least 2 kWh of IT energy for the jobs by" in \
        capsys.readouterr().out
    # 2400 W for at most 4 h is under 10 kWh: 50 kWh cannot be met, and the line says what can.
    assert main([*base, "--work-kwh", "50", "--by", by]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no plan: --work-kwh 50 by --by" in err[0], err
    assert "expected to draw at most" in err[0] and "kWh by then" in err[0], err
    # A deadline before the first MTU planned (the one under way is not planned).
    assert main([*base, "--work-kwh", "1", "--by", "2020-01-01T00:00Z"]) == 2
    assert "before the first market time unit planned" in capsys.readouterr().err
    assert main([*base, "--work-kwh", "2"]) == 2
    assert "--work-kwh and --by go together" in capsys.readouterr().err
    assert main([*base, "--work-kwh", "2", "--by", "tomorrow"]) == 2
    assert "--by: not a time" in capsys.readouterr().err
    # A signals file given on the command line and refused: the option and the file named.
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(_signals(now - 5 * DAY_S)))
    base[base.index("--signals") + 1] = str(stale)
    assert main(base) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"gridtao: error: --signals: {stale}: refused: stale"), line


def test_an_award_whose_handling_fails_is_refused_and_the_next_is_heard(
        mqtt_broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message no parser foresaw must not end the loop that hears awards and signals: it is
    refused (an award with an ack), recorded, and the next one is handled as usual."""
    import gridtao.app.planning as planning_module
    from gridtao.app.arming import take_award as real
    calls: list[int] = []

    def failing_once(payload: bytes, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OverflowError("a case no parser foresaw")
        return real(payload, **kw)

    monkeypatch.setattr(planning_module, "take_award", failing_once)
    cfg = _config(mqtt_broker, tmp_path)
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    with running(mqtt_broker, cfg, sim, serve=True) as node, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, node.topics.ack) as acks:
        wait_until(lambda: node.agent.status_link.is_connected, "the controller's connection",
                   timeout_s=10.0)
        award = {"id": "a1", "start": 3600, "mtu_s": 3600, "capacity_w": {"ffr": [100]}}
        node.send(node.topics.award, award)
        first = json.loads(acks.wait(1, timeout=10.0)[0].payload)
        assert first["accepted"] is False and first["kind"] == "award" and first["id"] == "a1"
        assert "could not be handled: OverflowError" in first["reason"]
        node.send(node.topics.award, award | {"id": "a2"})
        second = json.loads(acks.wait(2, timeout=10.0)[1].payload)
        assert second["id"] == "a2" and second["accepted"] is True, second
