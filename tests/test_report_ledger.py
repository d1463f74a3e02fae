"""``gridtao report energy``'s ledger figures: energy by GPU, J/token and J/sample, and each
event's work lost, checked against values computed here by hand from the rows written.

The node (window 00:00-02:00 UTC): GPU 0 at 300 W and GPU 1 at 500 W (GPU 1 has no rows
01:00-01:05; one of its minutes measured by power), GPU 2 at 200 W (01:30 bridged). Source
``chat`` (vLLM, GPUs 0 and 1, model ``llama``): 100 generated and 20 prompt tokens a second,
except 00:30-00:40 (100 and 110 a second, alternating) and the minutes of event e1 (00:40:30-
00:42:15: 3000, 1200 and 4000 tokens); no counts at 01:02. Source ``train`` (custom, GPU 2): 2
samples a second, 1 a second in 00:40-00:41. Events: e0 00:33:10-00:33:40, e1, e2 01:02-01:03.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from trails import virtual_trail

from gridtao.cli.main import main
from gridtao.history import Batch, GpuMinuteRow, HistoryStore, MinuteRow, WorkMinuteRow
from gridtao.history.rows import GpuMethod

T0 = 1_772_323_200  # 2026-03-01T00:00:00Z
KWH = 3.6e6
W = {0: 300.0, 1: 500.0, 2: 200.0}
UUID = {0: "GPU-0000", 1: "GPU-1111", 2: "GPU-2222"}
E1 = (T0 + 2430.0, T0 + 2535.0)  # 00:40:30 to 00:42:15
CHAT_E1 = {40: 3000.0, 41: 1200.0, 42: 4000.0}  # tokens in e1's minutes


def _chat_per_s(minute: int) -> float:
    if 30 <= minute < 40:
        return 100.0 if minute % 2 == 0 else 110.0
    return 100.0


def _rows() -> tuple[list[MinuteRow], list[GpuMinuteRow], list[WorkMinuteRow]]:
    nodes, gpus, work = [], [], []
    for i in range(-20, 125):
        start = T0 + 60 * i
        nodes.append(MinuteRow(start, 1000.0, 950.0, 60_000.0, None, 0.0))
        for g in (0, 1, 2):
            if g == 1 and 60 <= i < 65:
                continue
            method: GpuMethod = ("power" if (g, i) == (1, 10) else "bridged"
                                 if (g, i) == (2, 90) else "counter")
            gpus.append(GpuMinuteRow(start, UUID[g], g, W[g] * 60, 60.0,
                                     60.0 if method == "power" else 0.0, method))
        if i != 62:
            tokens = CHAT_E1.get(i, _chat_per_s(i) * 60)
            work.append(WorkMinuteRow(start, "chat", "vllm", "llama", "generation", tokens,
                                      60.0, (0, 1)))
            work.append(WorkMinuteRow(start, "chat", "vllm", "llama", "prompt", 1200.0, 60.0,
                                      (0, 1)))
        work.append(WorkMinuteRow(start, "train", "custom", "", "samples",
                                  60.0 if 40 <= i < 42 else 120.0, 60.0, (2,)))
    return nodes, gpus, work


def _trail(path: Path) -> None:
    spans = (("e0", 1990.0, 2020.0), ("e1", 2430.0, 2535.0), ("e2", 3720.0, 3780.0))
    with virtual_trail(path, T0) as at:
        at(0, "agent_start", {"node": "n1", "pid": 1})
        for name, a, b in spans:
            at(b + 1, "event_energy", {"event": name, "kind": "dispatch",
                                       "started_at": T0 + a, "ended_at": T0 + b,
                                       "duration_s": b - a, "method": "counter",
                                       "it_drawn_j": 1.0, "it_reference_j": 2.0,
                                       "it_not_drawn_j": 1.0, "meter_drawn_j": 1.0,
                                       "meter_not_drawn_j": 1.0})


@pytest.fixture
def args(tmp_path: Path) -> list[str]:
    history = tmp_path / "history-n1.sqlite3"
    nodes, gpus, work = _rows()
    with HistoryStore.open(history) as store:
        store.commit(Batch(nodes, gpus, work))
    audit = tmp_path / "audit-n1.jsonl"
    _trail(audit)
    config = tmp_path / "c.yaml"
    config.write_text("facility:\n  cop: 4.0\n")
    return ["--config", str(config), "report", "energy", "--from", "2026-03-01T00:00Z",
            "--to", "2026-03-01T02:00Z", "--history", str(history), "--audit", str(audit)]


def _json(capsys: pytest.CaptureFixture[str], args: list[str]) -> dict[str, Any]:
    assert main([*args, "--format", "json"]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def test_energy_by_gpu_by_hand(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, args)
    assert doc["format_version"] == 2 and doc["per_gpu"]["available"] is True
    gpus = {g["index"]: g for g in doc["per_gpu"]["gpus"]}
    assert [gpus[i]["gpu"] for i in (0, 1, 2)] == [UUID[0], UUID[1], UUID[2]]
    assert close(gpus[0]["total"]["energy_kwh"], 300.0 * 7200 / KWH)
    assert close(gpus[1]["total"]["energy_kwh"], 500.0 * 60 * 115 / KWH)
    first, second = gpus[1]["hours"]
    assert close(first["energy_kwh"], 500.0 * 3600 / KWH) and first["method"] == "mixed"
    assert close(first["power_s"], 60.0) and close(first["coverage"], 1.0)
    assert second["minutes"] == 55 and close(second["coverage"], 55 / 60)
    assert close(second["mean_w"], 500.0) and second["method"] == "counter"
    assert gpus[2]["hours"][1]["method"] == "mixed" and close(gpus[2]["hours"][1]["bridged_s"],
                                                              60.0)
    assert close(gpus[2]["days"][0]["energy_kwh"], 200.0 * 7200 / KWH)


def test_joules_per_token_and_per_sample_by_hand(args: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, args)
    per = {e["source"]: e for e in doc["work"]["per_unit"]}
    chat, train = per["chat"], per["train"]
    # chat: the minutes with counts and both GPUs' energy: 120 less 01:00-01:05 (GPU 1).
    used = [i for i in range(120) if not 60 <= i < 65]
    tokens = sum(CHAT_E1.get(i, _chat_per_s(i) * 60) for i in used)
    joules = len(used) * (300.0 + 500.0) * 60
    assert chat["minutes"] == 115 and chat["counted_minutes"] == 119
    assert close(chat["units"], tokens) and close(chat["energy_kwh"], joules / KWH)
    assert close(chat["joules_per_unit"], joules / tokens)
    # At the meter: the GPUs' energy through the facility model's steady state (the test's
    # configuration: the default 3 % losses, cooling at COP 4).
    assert close(chat["joules_per_unit_meter"], joules / tokens * (1.0 + 0.03 + 1.0 / 4.0))
    assert close(chat["prompt_tokens"], 1200.0 * 115)
    assert chat["unit"] == "token" and chat["models"] == ["llama"] and chat["gpus"] == [0, 1]
    assert "4 of its 119 minutes" in chat["note"]
    samples = 120 * 118 + 60 * 2
    assert close(train["joules_per_unit"], 200.0 * 7200 / samples)
    assert train["unit"] == "samples" and train["prompt_tokens"] is None


def test_work_lost_per_event_by_hand(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, args)
    events = {e["id"]: e for e in doc["events"]}
    lost = {s["source"]: s for s in events["e1"]["work_lost"]["sources"]}
    chat = lost["chat"]
    # Reference: 00:30-00:40 without 00:33 (event e0's minute): nine minutes.
    ref = [_chat_per_s(i) for i in range(30, 40) if i != 33]
    rate = sum(ref) / len(ref)
    mean = rate  # every reference minute is fully covered
    s = math.sqrt(sum((r - mean) ** 2 for r in ref) / (len(ref) - 1))
    assert chat["reference_minutes"] == 9 and close(chat["reference_rate_per_s"], rate)
    assert close(chat["reference_std_per_s"], s)
    assert chat["event_minutes"] == 3 and close(chat["expected"], rate * 180)
    assert close(chat["done"], 8200.0) and close(chat["lost"], rate * 180 - 8200.0)
    assert close(chat["lost_std"], s * math.sqrt(3 * 60**2 + 180**2 / 9))
    assert close(chat["lost_fraction"], (rate * 180 - 8200.0) / (rate * 180))
    assert (chat["model"], chat["unit"]) == ("llama", "token")
    train = lost["train"]  # a steady 2 a second before: no spread
    assert close(train["expected"], 360.0) and close(train["done"], 60.0 + 60.0 + 120.0)
    assert close(train["lost"], 120.0) and train["lost_std"] == 0.0
    # e2's minute has no chat counts: said, and train still measured.
    e2 = events["e2"]["work_lost"]
    assert e2["available"] is True and [s["source"] for s in e2["sources"]] == ["train"]
    assert e2["unavailable"] == [{"source": "chat/llama",
                                  "reason": "its counters miss 1 of the event's 1 minutes"}]


def test_csv_and_markdown_carry_the_ledger(args: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, args)
    assert main([*args, "--format", "csv", "--table", "work"]) == 0
    work = {r["source"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    per = {e["source"]: e for e in doc["work"]["per_unit"]}
    assert float(work["chat"]["joules_per_unit"]) == per["chat"]["joules_per_unit"]
    assert work["chat"]["gpus"] == "0 1"
    assert main([*args, "--format", "csv", "--table", "work_lost"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    e1 = {r["source"]: r for r in rows if r["event"] == "e1"}
    (chat,) = next(s for s in doc["events"] if s["id"] == "e1")["work_lost"]["sources"][:1]
    assert float(e1["chat"]["lost"]) == chat["lost"]
    assert [r["unavailable"] for r in rows if r["event"] == "e2" and r["source"] == "chat/llama"
            ] == ["its counters miss 1 of the event's 1 minutes"]
    assert main([*args, "--format", "csv", "--table", "gpu_hours"]) == 0
    hours = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(hours) == 6 and float(hours[0]["energy_kwh"]) == 300.0 * 3600 / KWH
    assert main([*args, "--format", "csv", "--table", "events"]) == 0
    events = {r["id"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert events["e1"]["work_lost"].startswith("chat/llama: ")
    assert main(args) == 0
    md = capsys.readouterr().out
    assert "| n1 | 0 | GPU-0000 | window | 0.6000 | 300.0 | 100.0% | counter |" in md
    assert "| n1 | 0 | GPU-0000 | 2026-03-01 00:00 | 0.3000 | 300.0 | 100.0% | counter |" in md
    assert "### Work lost by event" in md and "| n1 | e1 | chat/llama |" in md
    assert (f"| {per['chat']['joules_per_unit']:.4f} | "
            f"{per['chat']['joules_per_unit_meter']:.4f} | 115 of 119 |") in md
    assert float(work["chat"]["joules_per_unit_meter"]) == per["chat"]["joules_per_unit_meter"]


def test_the_plot_carries_the_gpus_and_work(args: list[str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from gridtao.telemetry import plotting

    if not plotting.available():
        pytest.skip("matplotlib is not installed")
    plain, ledger = tmp_path / "plain.png", tmp_path / "ledger.png"
    assert main([*args, "--plot", str(ledger)]) == 0
    history = args[args.index("--history") + 1]
    with HistoryStore.open(tmp_path / "bare.sqlite3") as store:
        store.commit(Batch(_rows()[0]))
    bare = [str(tmp_path / "bare.sqlite3") if a == history else a for a in args]
    assert main([*bare, "--plot", str(plain)]) == 0
    capsys.readouterr()
    from PIL import Image

    # The GPUs' axis below the node's: a taller figure than the node alone.
    assert Image.open(ledger).size[1] > Image.open(plain).size[1]


def test_the_live_ledger_and_its_prometheus_families_by_hand() -> None:
    from prometheus_client import CollectorRegistry

    from gridtao.records.liveledger import LiveLedger
    from gridtao.work.collectors import LedgerCollector

    _, gpus, work = _rows()
    live = LiveLedger(lambda a, b: [r for r in gpus if a <= r.start_s < b],
                      lambda a, b: [r for r in work if a <= r.start_s < b])
    registry = CollectorRegistry()
    LedgerCollector(live.per_unit, live.lost_totals, registry=registry)
    live.event_over(T0 + 1990.0, T0 + 2020.0)  # e0: chat did more than its reference
    live.event_over(*E1)
    live.after_write(T0 + 60 * 43 + 5)  # e1's last minute (00:42) not safely written yet
    assert live.lost_totals() == {("chat", "token"): 0.0, ("train", "samples"): 0.0}
    assert live.measured == 1
    live.after_write(T0 + 60 * 50 + 5)
    ref = [_chat_per_s(i) for i in range(30, 40) if i != 33]
    lost = sum(ref) / len(ref) * 180 - 8200.0
    assert live.lost_totals() == pytest.approx({("chat", "token"): lost,
                                                ("train", "samples"): 120.0})
    assert live.measured == 2 and live.unmeasured == 0

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    # 00:45-00:50: 800 W for 100 tokens a second, 200 W for 2 samples a second.
    assert value("gridtao_work_joules_per_token", source="chat", model="llama") == 8.0
    assert value("gridtao_work_joules_per_unit", source="train", unit="samples") == 100.0
    assert value("gridtao_work_lost_total", source="chat", unit="token") == pytest.approx(lost)


def test_the_work_lost_counters_are_exported_at_0_before_any_event() -> None:
    """A counter present from the start (Prometheus: ``increase()`` over its first event)."""
    from prometheus_client import CollectorRegistry

    from gridtao.records.liveledger import LiveLedger
    from gridtao.records.report.work import source_units
    from gridtao.work.collectors import LedgerCollector

    assert source_units("vllm", ()) == ("token",)
    assert source_units("custom", ("train_samples_total", "steps")) == ("train_samples", "steps")
    live = LiveLedger(lambda a, b: [], lambda a, b: [],
                      units=[("chat", "token"), ("train", "train_samples")])
    registry = CollectorRegistry()
    LedgerCollector(live.per_unit, live.lost_totals, registry=registry)
    for source, unit in (("chat", "token"), ("train", "train_samples")):
        assert registry.get_sample_value("gridtao_work_lost_total",
                                         {"source": source, "unit": unit}) == 0.0
    assert registry.get_sample_value("gridtao_work_lost_total",
                                     {"source": "other", "unit": "token"}) is None


def test_the_log_says_why_the_work_lost_to_an_event_was_not_measured(
        caplog: pytest.LogCaptureFixture) -> None:
    from gridtao.records.liveledger import LiveLedger

    _, gpus, work = _rows()  # the history starts 20 minutes before T0
    live = LiveLedger(lambda a, b: [r for r in gpus if a <= r.start_s < b],
                      lambda a, b: [r for r in work if a <= r.start_s < b])
    with caplog.at_level(logging.INFO, logger="gridtao.records"):
        live.event_over(T0 - 60 * 18 + 10, T0 - 60 * 18 + 40)  # 2 minutes of history before it
        live.after_write(T0 - 60 * 10)
    assert live.unmeasured == 1
    (line,) = [r.getMessage() for r in caplog.records if "not measured" in r.getMessage()]
    assert "chat/llama: 2 reference minutes in the 600 s before the event" in line, line
    assert "train: 2 reference minutes" in line and "see unavailable" not in line


def test_a_configured_work_source_that_counted_nothing_is_said(
        args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """This node's configuration names a source the history has no minutes of (down all the
    window): the report says so instead of leaving it out silently."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "facility": {"cop": 4.0}, "mqtt": {"node_id": "n1"},
        "work": {"sources": [
            {"name": "chat", "url": "http://127.0.0.1:9/metrics", "kind": "vllm", "gpus": [0, 1]},
            {"name": "ghost", "url": "http://127.0.0.1:9/metrics", "kind": "vllm",
             "gpus": [2]}]}}))
    doc = _json(capsys, args)
    notes = [n for n in doc["notes"] if "counted nothing" in n]
    assert len(notes) == 1 and "'ghost'" in notes[0], doc["notes"]


def test_a_minute_that_mixed_two_methods_makes_its_span_mixed() -> None:
    from gridtao.records.report.gpus import gpu_energy

    rows = [GpuMinuteRow(60 * k, "GPU-a", 0, 600.0 * 60, 60.0, 0.0, "counter")
            for k in range(10)]
    # A restart within minute 10: part bridged, part counted; the row does not split them.
    rows.append(GpuMinuteRow(600, "GPU-a", 0, 500.0 * 60, 60.0, 0.0, "mixed"))
    (whole,) = gpu_energy("n", rows, 0.0, 660.0)
    assert whole.total.method == "mixed" and whole.total.mixed_s == pytest.approx(60.0)
    (counted,) = gpu_energy("n", rows[:10], 0.0, 600.0)
    assert counted.total.method == "counter"


def test_gpus_bridged_over_the_agents_downtime_say_why_they_cover_more_than_the_node(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The agent down 30 of 120 minutes: its node minutes miss them, its GPUs' counters
    bridged them. The report says why the GPUs' kWh sum above the node's IT kWh."""
    history = tmp_path / "n1.sqlite3"
    nodes, gpus = [], []
    for i in range(120):
        start = T0 + 60 * i
        down = 60 <= i < 90
        if not down:
            nodes.append(MinuteRow(start, 500.0, 480.0, 30_000.0, None, 0.0))
        gpus.append(GpuMinuteRow(start, UUID[0], 0, 500.0 * 60, 60.0, 0.0,
                                 "bridged" if down else "counter"))
    with HistoryStore.open(history) as store:
        store.commit(Batch(nodes, gpus, []))
    assert main(["report", "energy", "--from", "2026-03-01T00:00Z", "--to", "2026-03-01T02:00Z",
                 "--history", str(history), "--format", "json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    (note,) = [n for n in notes if "went on counting" in n]
    assert note.startswith("node n1: its GPUs' energy covers 100% of the window and its IT "
                           "history 75%")
