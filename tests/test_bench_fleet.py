"""bench/fleet.py end to end at a tiny size: the JSON's shape, every node commanded in every
trial, no frequency sample lost, the site acks counted, every figure positive and finite. No
speed is asserted (a shared machine's timings are not the harness's to promise)."""

from __future__ import annotations

import importlib.util
import json
import math
from typing import Any

import pytest

from gridtao.bench import fleetsite
from gridtao.bench.fleet import main
from gridtao.bench.fleetreport import markdown

NODES, TRIALS = 5, 3
SITE = importlib.util.find_spec("gridtao.site.coordinator") is not None


def _positive(stats: dict[str, float]) -> None:
    assert set(stats) >= {"p50", "p99"}
    for value in stats.values():
        assert math.isfinite(value) and value > 0, stats


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fleet")
    args = ["--nodes", str(NODES), "--trials", str(TRIALS), "--frequency-s", "1.5",
            "--json", str(out / "fleet.json"), "--markdown", str(out / "fleet.md")]
    assert main(args if SITE else [*args, "--no-site"]) == 0
    assert "| publish -> every node commanded |" in (out / "fleet.md").read_text()
    loaded: dict[str, Any] = json.loads((out / "fleet.json").read_text())
    return loaded


def test_shape_and_provenance(result: dict[str, Any]) -> None:
    assert result["nodes"] == NODES
    for key in ("publish_to_all_commanded_ms", "broker_fanout_ms",
                "site_ack_after_last_node_ms", "ratio_to_broker_fanout", "dispatch",
                "frequency", "broker_fanout", "site", "cpu", "peak_rss_mib", "reference",
                "date", "machine", "commit", "command"):
        assert key in result, key
    assert result["command"].startswith("gridtao bench fleet --nodes 5")
    assert result["reference"]["mean_ms"] == 5.7  # context, never the baseline


def test_every_node_commanded_in_every_trial(result: dict[str, Any]) -> None:
    d = result["dispatch"]
    assert d["trials"] == d["all_commanded_trials"] == TRIALS
    assert d["incomplete"] == [] and result["every_node_commanded_every_trial"]
    for key in ("publish_to_all_commanded_ms", "publish_to_all_received_ms"):
        _positive(d[key])
    _positive(result["publish_to_all_commanded_ms"])
    assert result["broker_fanout"]["lost"] == 0
    _positive(result["broker_fanout_ms"])
    assert all(v is not None and v > 0 for v in result["ratio_to_broker_fanout"].values())


def test_no_frequency_sample_lost(result: dict[str, Any]) -> None:
    f = result["frequency"]
    assert f["samples"] == 15
    assert f["lost_samples"] == f["deliveries_missing"] == f["refused"] == 0
    _positive(f["publish_to_all_received_ms"])


def test_site_ack_after_the_last_node(result: dict[str, Any]) -> None:
    if not SITE:
        assert result["site_ack_after_last_node_ms"] is None
        return
    site = result["site"]
    assert site["events"] == site["site_acks"] == site["site_acks_every_node_accepted"] == TRIALS
    assert site["dispatch"]["all_commanded_trials"] == TRIALS
    _positive(site["publish_to_site_ack_ms"])
    assert result["site_ack_after_last_node_ms"] is not None
    for value in result["site_ack_after_last_node_ms"].values():
        assert math.isfinite(value)  # may be ~0: both acks are seen by the same subscriber
    assert site["coordinator_exit_status"] == 0
    assert result["cpu"]["site"]["coordinator_cpu_pct"] >= 0


def test_several_sizes_render_one_table(result: dict[str, Any]) -> None:
    both = {"nodes": [NODES, NODES], "runs": [result, result]} | {
        k: result[k] for k in ("reference", "date", "machine", "commit", "command")}
    text = markdown(both)
    assert text.count(f"### {NODES} nodes") == 2
    assert "| nodes | commanded p50 |" in text


def test_missing_coordinator_is_said_not_faked(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main(["--nodes", "1", "--trials", "1"]) == 2
    assert "--no-site" in capsys.readouterr().err


def test_measure_site_refuses_without_the_coordinator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(fleetsite.CoordinatorMissing, match="not in this installation"):
        fleetsite.check_available()


def test_bad_options_exit_2() -> None:
    for argv in (["--nodes", "0"], ["--nodes", "ten"], ["--trials", "0"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
