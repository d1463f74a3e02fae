"""``gridtao report energy`` (gridtao/records/report/, gridtao/cli/report.py): every figure
checked against hand computation from known minutes and known audit records.

The history is written with the store's API; the audit trail with the real writer (virtual
clock, so each record's ``t`` is known). The facility model is set in a configuration file
(losses 5 %, COP 4, cooling lag 120 s, 100 W fixed), and the meter figures are computed here
in closed form: a constant draw ``P`` after a step from a settled cooling ``c0`` gives cooling
``P/COP + (c0 - P/COP) e^(-t/tau)``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trails import virtual_trail

from gridtao.cli.main import main
from gridtao.clock import VirtualClock
from gridtao.config.agent import AuditConfig
from gridtao.history import HistoryStore, MinuteRow, synthetic_minutes
from gridtao.records.audit import AuditTrail, canonical
from gridtao.records.audit_verify import verify_files

T0 = 1_772_323_200  # 2026-03-01T00:00:00Z, a UTC midnight
KWH = 3.6e6
LOSSES, COP, TAU, FIXED = 0.05, 4.0, 120.0, 100.0
FROM, TO = "2026-03-01T00:30Z", str(T0 + 8100)  # 00:30 to 02:15 UTC: two hours cut


def rel(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def cooling_j(p_w: float, c0_w: float, t0_s: float, t1_s: float) -> float:
    """Integral (J) over [t0, t1] of cooling after a step to draw ``p_w`` at t = 0 from a
    cooling of ``c0_w``."""
    target = p_w / COP
    return target * (t1_s - t0_s) + (c0_w - target) * TAU * (math.exp(-t0_s / TAU)
                                                              - math.exp(-t1_s / TAU))


def _minutes() -> list[MinuteRow]:
    """1200 W from 23:00 to 01:00 (00:40-00:44 under an event); 1800 W 01:00-02:00 with 01:20-
    01:25 missing; 600 W 02:00-03:00 with 02:10 covered for 30 s only."""
    rows = []
    for i in range(-60, 180):
        start = T0 + 60 * i
        if 80 <= i < 85:
            continue
        watts = 1200.0 if i < 60 else 1800.0 if i < 120 else 600.0
        energy = watts * (30 if i == 130 else 60)
        event = 60.0 if 40 <= i < 45 else 0.0
        rows.append(MinuteRow(start, watts, watts * 0.9, energy, 5600.0, event))
    return rows


def _trail(path: Path, *, rotate_bytes: int | None = None, padding: int = 0) -> None:
    """Node n1's audit trail, written by the real writer: e0 (over before the window), e2
    (starts before it), e1 (inside), d1 (tier 2's demand response, 01:29-01:44), e3 (never
    ended). ``padding`` records after e0 push the rest into a rotated file."""
    def energy(event: str, start: float, end: float, method: str, drawn: float, ref: float,
               meter: float, meter_not: float) -> dict[str, object]:
        return {"event": event, "kind": "dispatch", "started_at": T0 + start,
                "ended_at": T0 + end, "duration_s": end - start, "method": method,
                "it_drawn_j": drawn, "it_reference_j": ref, "it_not_drawn_j": ref - drawn,
                "meter_drawn_j": meter, "meter_not_drawn_j": meter_not}

    with virtual_trail(path, T0, rotate_bytes=rotate_bytes) as at:
        at(0, "agent_start", {"node": "n1", "pid": 1})
        # e0: over before the window.
        at(600, "event_started", {"event": "e0", "kind": "dispatch", "commanded_at": T0 + 600.0,
                                  "baseline_mw": 1_200_000, "target_mw": 900_000})
        at(660, "event_ended", {"event": "e0", "why": "duration over"})
        at(661, "event_energy", energy("e0", 600, 660, "counter", 60_000, 72_000, 70_000, 9_000))
        for k in range(padding):  # pushes what follows into a rotated file
            at(700 + k, "message", {"topic": "dispatch", "id": f"x{k}", "result": "rejected",
                                    "reason": "padding " * 20})
        # e2: starts before the window, ends inside it.
        at(1700, "event_started", {"event": "e2", "kind": "dispatch", "commanded_at": T0 + 1700.0,
                                   "baseline_mw": 1_200_000, "target_mw": 800_000})
        at(1900, "event_released", {"event": "e2", "why": "duration over"})
        at(1902, "event_ended", {"event": "e2", "why": "duration over"})
        at(1902.5, "event_energy",
           energy("e2", 1700, 1902, "mixed", 180_000, 242_400, 200_000, 70_000))
        # e1: inside the window.
        at(2400.5, "event_started", {"event": "e1", "kind": "dispatch", "level": None,
                                     "commanded_at": T0 + 2400.25, "received_at": T0 + 2400.2,
                                     "baseline_mw": 1_200_000, "target_mw": 800_000})
        at(2700, "event_released", {"event": "e1", "why": "duration over"})
        at(2702, "event_ended", {"event": "e1", "why": "duration over"})
        at(2702.5, "event_energy",
           energy("e1", 2400.25, 2702, "counter", 250_000, 362_100, 300_000, 150_000)
           | {"overlapped": ["ffr-2"]})
        # d1: a demand-response event of tier 2: ramps from 01:29, done at 01:44.
        at(5000, "dr_scheduled", {"event": "d1", "start_at": T0 + 5400, "duration_s": 600})
        at(5001, "dr_state", {"event": "d1", "from": None, "to": "scheduled", "reduction_w": 0})
        for t, was, now in ((5340, "scheduled", "ramping"), (5400, "ramping", "active"),
                            (6000, "active", "recovering"), (6240, "recovering", "done"),
                            (6241, "done", "ended")):
            at(t, "dr_state", {"event": "d1", "from": was, "to": now, "reduction_w": 500.0})
        # e3: started, never ended in the trail (the agent stopped).
        at(8000, "event_started", {"event": "e3", "kind": "frequency", "level": "ffr",
                                   "commanded_at": T0 + 8000.0, "baseline_mw": 600_000,
                                   "target_mw": 300_000})


@dataclasses.dataclass
class Site:
    config: Path
    history: Path
    audit: Path

    def args(self, *extra: str) -> list[str]:
        return ["--config", str(self.config), "report", "energy", "--from", FROM, "--to", TO,
                "--history", str(self.history), "--audit", str(self.audit), *extra]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    config = tmp_path / "site.yaml"
    config.write_text(f"facility:\n  losses_fraction: {LOSSES}\n  cop: {COP}\n"
                      f"  cooling_tau_s: {TAU}\n  fixed_w: {FIXED}\n")
    history = tmp_path / "history-n1.sqlite3"
    with HistoryStore.open(history) as store:
        store.write(_minutes())
    audit = tmp_path / "audit-n1.jsonl"
    _trail(audit)
    yield Site(config, history, audit)


def _json(capsys: pytest.CaptureFixture[str], args: list[str], status: int = 0
          ) -> dict[str, Any]:
    assert main(args) == status
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


# ---- the minute history ------------------------------------------------------------------


def test_hourly_and_daily_energy_at_it_and_at_the_meter(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, site.args("--format", "json"))
    assert doc["window"]["from_s"] == T0 + 1800 and doc["window"]["to_s"] == T0 + 8100
    assert doc["facility"] == {"losses_fraction": LOSSES, "cop": COP, "cooling_tau_s": TAU,
                               "fixed_w": FIXED, "settle_at": "meter"}
    (node,) = doc["nodes"]
    assert node["node"] == "n1"
    h0, h1, h2 = node["hours"]
    # 00:30-01:00 (the window cuts the hour): 1200 W settled.
    assert (h0["start"], h0["end"]) == ("2026-03-01T00:30:00Z", "2026-03-01T01:00:00Z")
    assert rel(h0["it_kwh"], 1200 * 1800 / KWH)
    assert rel(h0["meter_kwh"], 1800 * (1200 * (1 + LOSSES) + 1200 / COP + FIXED) / KWH)
    assert (h0["minutes"], h0["missing_minutes"], h0["coverage"]) == (30, 0, 1.0)
    assert rel(h0["event_minutes"], 5.0) and rel(h0["mean_it_w"], 1200.0)
    # 01:00-02:00: a step to 1800 W; 01:20-01:25 missing; after it cooling starts settled.
    it1 = 1800 * 55 * 60
    cool1 = cooling_j(1800, 300, 0, 1200) + 1800 / COP * 2100
    assert rel(h1["it_kwh"], it1 / KWH)
    assert rel(h1["meter_kwh"], (it1 * (1 + LOSSES) + cool1 + FIXED * 3300) / KWH)
    assert (h1["minutes"], h1["missing_minutes"], h1["partial_minutes"]) == (55, 5, 0)
    assert rel(h1["coverage"], 3300 / 3600) and rel(h1["covered_s"], 3300)
    # 02:00-02:15 (cut): a step down to 600 W; 02:10 covered for 30 s of its 60.
    it2 = 600 * (900 - 30)
    cool2 = cooling_j(600, 450, 0, 900) - 0.5 * cooling_j(600, 450, 600, 660)
    assert rel(h2["it_kwh"], it2 / KWH)
    assert rel(h2["meter_kwh"], (it2 * (1 + LOSSES) + cool2 + FIXED * 870) / KWH)
    assert (h2["minutes"], h2["missing_minutes"], h2["partial_minutes"]) == (15, 0, 1)
    assert rel(h2["coverage"], 870 / 900) and rel(h2["mean_it_w"], 600.0)
    # The day and the window: the sums.
    (day,) = node["days"]
    for span in (day, node["total"]):
        assert rel(span["it_kwh"], (1200 * 1800 + it1 + it2) / KWH)
        assert rel(span["meter_kwh"], h0["meter_kwh"] + h1["meter_kwh"] + h2["meter_kwh"])
        assert (span["minutes"], span["missing_minutes"]) == (100, 5)
    # The gap, reported, not filled.
    assert node["gaps"] == [{"start": "2026-03-01T01:20:00Z", "end": "2026-03-01T01:25:00Z",
                             "start_s": T0 + 4800, "end_s": T0 + 5100, "minutes": 5}]
    assert any("misses 5 of the window's minutes" in w for w in doc["warnings"])


def test_a_window_cutting_a_minute_counts_its_share(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    args = site.args("--format", "json")
    args[args.index(FROM)] = "2026-03-01T01:30:00+01:00"  # 00:30:00Z
    args[args.index(TO)] = "2026-03-01T00:45:30Z"
    doc = _json(capsys, args)
    (hour,) = doc["nodes"][0]["hours"]
    assert rel(hour["it_kwh"], 1200 * 930 / KWH) and rel(hour["expected_s"], 930)
    assert hour["minutes"] == 16 and rel(hour["coverage"], 1.0)


def test_the_report_equals_the_history(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Over two days of synthetic minutes with some dropped, every hour's IT energy is the sum
    of its stored minutes' energy_j."""
    start = T0 - 2 * 86_400
    rows = [r for i, r in enumerate(synthetic_minutes(start, 2.0, gpus=4, seed=3))
            if i % 97 != 5]
    history = tmp_path / "h.sqlite3"
    with HistoryStore.open(history) as store:
        store.write(rows)
    since = start + 17 * 60
    doc = _json(capsys, ["report", "energy", "--from", str(since), "--to", str(T0),
                         "--history", str(history), "--format", "json"])
    (node,) = doc["nodes"]
    assert node["node"] == "h"
    assert len(node["hours"]) == 48 and len(node["days"]) == 2
    for span in [*node["hours"], *node["days"], node["total"]]:
        inside = [r for r in rows if span["start_s"] <= r.start_s < span["end_s"]]
        assert math.isclose(span["it_kwh"] * KWH, math.fsum(r.energy_j for r in inside),
                            rel_tol=1e-12)
        slots = round((span["end_s"] - span["start_s"]) / 60)
        assert span["minutes"] == len(inside)
        assert span["missing_minutes"] == slots - len(inside)
    assert sum(g["minutes"] for g in node["gaps"]) == node["total"]["missing_minutes"] > 0


# ---- events --------------------------------------------------------------------------------


def test_events_of_the_window_with_their_energy(site: Site,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, site.args("--format", "json"))
    events = {e["id"]: e for e in doc["events"]}
    assert list(events) == ["e2", "e1", "d1", "e3"]  # e0 ended before the window
    e1 = events["e1"]
    assert (e1["kind"], e1["source"], e1["node"], e1["method"]) == (
        "dispatch", "island", "n1", "counter")
    assert (e1["start"], e1["end"]) == ("2026-03-01T00:40:00.250Z", "2026-03-01T00:45:02Z")
    assert rel(e1["duration_s"], 301.75) and e1["why_ended"] == "duration over"
    assert rel(e1["it_drawn_kwh"], 250_000 / KWH)
    assert rel(e1["it_reference_kwh"], 362_100 / KWH)
    assert rel(e1["it_not_drawn_kwh"], 112_100 / KWH)
    assert rel(e1["meter_drawn_kwh"], 300_000 / KWH)
    assert rel(e1["meter_not_drawn_kwh"], 150_000 / KWH)
    assert rel(e1["baseline_w"], 1200.0) and rel(e1["target_w"], 800.0)
    assert e1["partly_outside_window"] is False and e1["verified"] is True
    assert e1["overlapped"] == ["ffr-2"] and events["e2"]["overlapped"] == []
    assert e1["work_lost"]["available"] is False and e1["work_lost"]["sources"] == []
    assert "no work counters" in e1["work_lost"]["reason"]
    # The minute history over its span (1200 W throughout, settled).
    assert rel(e1["history"]["it_kwh"], 1200 * 301.75 / KWH)
    assert rel(e1["history"]["meter_kwh"],
               301.75 * (1200 * (1 + LOSSES) + 1200 / COP + FIXED) / KWH)
    assert events["e2"]["partly_outside_window"] is True
    assert events["e2"]["method"] == "mixed"
    assert rel(events["e2"]["it_not_drawn_kwh"], 62_400 / KWH)
    # Tier 2's demand-response event: its span from the trail, its energy from the history
    # only (no event_energy, no reference).
    d1 = events["d1"]
    assert (d1["kind"], d1["source"], d1["start_s"], d1["end_s"]) == (
        "dr", "tier 2", T0 + 5340, T0 + 6240)
    assert d1["it_drawn_kwh"] is None and d1["it_not_drawn_kwh"] is None
    assert rel(d1["history"]["it_kwh"], 1800 * 900 / KWH)
    assert rel(d1["history"]["meter_kwh"],
               900 * (1800 * (1 + LOSSES) + 1800 / COP + FIXED) / KWH)
    # e3 never ended in the trail.
    e3 = events["e3"]
    assert e3["end"] is None and e3["history"] is None and e3["partly_outside_window"]
    assert e3["level"] == "ffr"
    assert doc["work"]["available"] is False and "no work minutes" in doc["work"]["reason"]
    assert doc["audit"][0]["intact"] is True and doc["audit"][0]["node"] == "n1"


def test_per_gpu_and_work_are_said_to_be_unavailable_without_their_rows(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, site.args("--format", "json"))
    assert doc["per_gpu"]["available"] is False and doc["per_gpu"]["gpus"] == []
    assert "no GPU minutes in the window" in doc["per_gpu"]["reason"]
    assert "no work minutes in the window" in doc["work"]["reason"]
    assert "NVML energy counters" in doc["method"]["IT energy (history)"]
    assert doc["method"]["read_back_period_s"] == 0.5
    assert main(site.args()) == 0
    md = capsys.readouterr().out
    for heading in ("## Energy by node", "## Energy by hour", "## Energy by day",
                    "## Gaps in the history", "## Energy by GPU", "## Events",
                    "## Energy per token and per sample", "## Method and uncertainty"):
        assert heading in md, heading
    assert "| n1 | 2026-03-01 01:20:00 | 2026-03-01 01:25:00 | 5 |" in md
    assert "modelled" in md and "No GPU minutes in the window" in md
    assert "overlapped ffr-2: do not add their not drawn" in md
    assert "| n1 | e1 | dispatch | 2026-03-01 00:40:00.250 | 2026-03-01 00:45:02 | 0.0694 |" in md


def test_a_broken_hash_chain_is_reported_and_exits_1(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    lines = site.audit.read_bytes().splitlines(keepends=True)
    k = next(i for i, raw in enumerate(lines) if b'"event":"e1"' in raw
             and b'"kind":"event_energy"' in raw)
    record = json.loads(lines[k])
    record["fields"]["it_drawn_j"] = 1.0  # someone lowers what was drawn
    lines[k] = canonical(record) + b"\n"
    site.audit.write_bytes(b"".join(lines))
    assert not verify_files([site.audit]).ok
    doc = _json(capsys, site.args("--format", "json"), status=1)
    (trail,) = doc["audit"]
    assert trail["intact"] is False and trail["verified"] == k
    assert trail["problem"] == f"{site.audit}:{k + 1}: seq {k}: hash mismatch (record edited)"
    events = {e["id"]: e for e in doc["events"]}
    assert events["e2"]["verified"] is True  # every record of it precedes the break
    assert events["e1"]["verified"] is False and events["d1"]["verified"] is False
    assert any("hash chain is broken" in w for w in doc["warnings"])
    assert main(site.args()) == 1
    captured = capsys.readouterr()
    assert "UNVERIFIED (chain broken)" in captured.out and "BROKEN at" in captured.out
    assert captured.err.startswith("gridtao: warning: audit trail")


# ---- formats, defaults, errors -----------------------------------------------------------


def test_csv_tables(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, site.args("--format", "json"))
    assert main(site.args("--format", "csv")) == 0
    hours = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [h["start"] for h in hours] == [h["start"] for h in doc["nodes"][0]["hours"]]
    for row, h in zip(hours, doc["nodes"][0]["hours"], strict=True):
        assert float(row["it_kwh"]) == h["it_kwh"]
        assert float(row["meter_kwh_modelled"]) == h["meter_kwh"]
        assert int(row["missing_minutes"]) == h["missing_minutes"]
    assert main(site.args("--format", "csv", "--table", "events")) == 0
    events = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [e["id"] for e in events] == ["e2", "e1", "d1", "e3"]
    assert float(events[1]["it_not_drawn_kwh"]) == 112_100 / KWH
    assert events[2]["it_drawn_kwh"] == ""
    assert events[2]["work_lost"].startswith("unavailable: the history holds no work counters")
    assert main(site.args("--format", "csv", "--table", "gaps")) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        f"n1,2026-03-01T01:20:00Z,2026-03-01T01:25:00Z,{T0 + 4800.0},{T0 + 5100.0},5")


def test_plot(site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str],
              monkeypatch: pytest.MonkeyPatch) -> None:
    from gridtao.telemetry import plotting

    png = tmp_path / "energy.png"
    if plotting.available():
        assert main(site.args("--plot", str(png))) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert capsys.readouterr().err == f"plot: {png}\n"
    monkeypatch.setattr(plotting, "available", lambda: False)
    assert main(site.args("--plot", str(tmp_path / "other.png"))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gridtao: error: --plot: plots need "
                                                   "matplotlib")


def test_defaults_are_the_agents_own_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDTAO_NODE_ID", "n7")
    state = Path(os.environ["STATE_DIRECTORY"])
    args = ["report", "energy", "--from", FROM, "--to", TO, "--format", "json"]
    assert main(args) == 2
    assert capsys.readouterr().err == (f"gridtao: error: {state}/history-n7.sqlite3: no such "
                                       "history (gridtao history import or generate, or run "
                                       "the agent; --history FILE names another)\n")
    with HistoryStore.open(state / "history-n7.sqlite3") as store:
        store.write(_minutes())
    doc = _json(capsys, args)
    assert doc["nodes"][0]["node"] == "n7" and doc["events"] == []
    assert doc["notes"] == [f"no audit trail at {state}/audit-n7.jsonl: no events reported "
                            "(--audit FILE... names one)"]
    # The trail, rotated: the live file and the rotated one are both read.
    _trail(state / "audit-n7.jsonl", rotate_bytes=4096, padding=40)
    assert len(list(state.glob("audit-n7.jsonl.*"))) >= 1
    doc = _json(capsys, args)
    (trail,) = doc["audit"]
    assert trail["intact"] and len(trail["files"]) >= 2
    assert [e["id"] for e in doc["events"]] == ["e2", "e1", "d1", "e3"]


def test_bad_arguments_are_one_line_and_exit_2(site: Site, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--from", "yesterday"], "gridtao: error: --from: not a time: 'yesterday' (ISO 8601 "
                                  "with a zone, e.g. 2026-03-01T00:00Z, or Unix seconds)"),
        (["--from", "2026-03-01T00:30"], "gridtao: error: --from: '2026-03-01T00:30' has no "
                                         "time zone (add Z or an offset such as +01:00)"),
        (["--from", "1772323200000"], "gridtao: error: --from: '1772323200000': Unix seconds "
                                      "must fall in 2000-2100"),
        (["--to", "2026-03-01T00:00Z"], "gridtao: error: --to (2026-03-01T00:00Z) must be "
                                        "after --from (2026-03-01T00:30Z)"),
        (["--format", "md", "--table", "days"],
         "gridtao: error: --table applies to --format csv only"),
    ]
    for extra, expected in cases:
        args = site.args()
        for option, value in zip(extra[::2], extra[1::2], strict=True):
            if option in args:
                args[args.index(option) + 1] = value
            else:
                args += [option, value]
        assert main(args) == 2, extra
        captured = capsys.readouterr()
        assert captured.err == expected + "\n" and captured.out == ""
    missing = tmp_path / "nope.jsonl"
    args = site.args()
    args[args.index(str(site.audit))] = str(missing)
    assert main(args) == 2
    assert capsys.readouterr().err == (f"gridtao: error: {missing}: cannot read: No such file "
                                       "or directory\n")
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"\x00junk" * 100)
    args = site.args()
    args[args.index(str(site.history))] = str(junk)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a SQLite database" in err


def test_in_a_real_process(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    inside = _json(capsys, site.args("--format", "json"))
    done = subprocess.run([sys.executable, "-m", "gridtao", *site.args("--format", "json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outside = json.loads(done.stdout)
    for doc in (inside, outside):
        doc.pop("generated_at")
    assert outside == inside
    bad = subprocess.run([sys.executable, "-m", "gridtao", *site.args(), "--from", "soon"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr == ("gridtao: error: --from: not a time: 'soon' (ISO 8601 with a zone, "
                          "e.g. 2026-03-01T00:00Z, or Unix seconds)\n")


def test_several_nodes(site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "history-n2.sqlite3"
    with HistoryStore.open(other) as store:
        store.write([MinuteRow(T0 + 60 * i, 500.0, 450.0, 500.0 * 60, None, 0.0)
                     for i in range(200)])
    args = site.args("--format", "json", "--history", str(site.history))
    args[args.index(str(site.history))] = str(other)  # n2 first, then n1
    doc = _json(capsys, args)
    n2, n1 = doc["nodes"]
    assert (n2["node"], n1["node"]) == ("n2", "n1")
    assert rel(n2["total"]["it_kwh"], 500 * 6300 / KWH) and n2["gaps"] == []
    assert rel(n2["total"]["meter_kwh"], 6300 * (500 * (1 + LOSSES) + 500 / COP + FIXED) / KWH)
    # The trail is n1's: its events are measured against n1's history, not n2's.
    e1 = next(e for e in doc["events"] if e["id"] == "e1")
    assert e1["node"] == "n1" and rel(e1["history"]["it_kwh"], 1200 * 301.75 / KWH)
    args[args.index("json")] = "csv"
    assert main([*args, "--table", "nodes"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["node"], float(r["it_kwh"])) for r in rows] == [
        ("n2", n2["total"]["it_kwh"]), ("n1", n1["total"]["it_kwh"])]


def test_an_event_left_open_by_a_crash_ends_with_the_run(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """e5 and e6 start at 00:10 and the agent crashes; it restarts at 00:20. An event it does
    not hold again was over by then, before the window; one it holds again (recovery) runs
    on, here until 00:35."""
    def report(*, recovery: bool, ended: bool) -> list[dict[str, Any]]:
        audit = tmp_path / f"audit-n1.{recovery}.{ended}.jsonl"
        clock = VirtualClock(wall_offset=T0)
        trail = AuditTrail(AuditConfig(enabled=True, path=str(audit)), clock=clock)
        trail.start()
        records: list[tuple[float, str, dict[str, object]]] = [
            (0, "agent_start", {"node": "n1"}),
            (600, "event_started", {"event": "e5", "kind": "dispatch", "commanded_at": T0 + 600}),
            (601, "event_started", {"event": "e6", "kind": "dispatch", "commanded_at": T0 + 601}),
            (1200, "agent_start", {"node": "n1", "previous_run_crashed": True})]
        if recovery:
            records.append((1201, "recovery", {"action": "held events again",
                                               "restored": [{"event": "e6", "hold_s": 900}]}))
        if ended:
            records.append((2100, "event_ended", {"event": "e6", "why": "duration over"}))
        for t, kind, fields in records:
            clock.advance(t - clock.now())
            trail.record(kind, fields)
        trail.close()
        args = site.args("--format", "json")
        args[args.index(str(site.audit))] = str(audit)
        events: list[dict[str, Any]] = _json(capsys, args)["events"]
        return events

    assert report(recovery=False, ended=False) == []
    (e6,) = report(recovery=True, ended=True)
    assert (e6["id"], e6["start_s"], e6["end_s"]) == ("e6", T0 + 601, T0 + 2100)
    assert e6["partly_outside_window"] is True and e6["restarted_at"] is None
    assert rel(e6["history"]["it_kwh"], 1200 * 1499 / KWH)
    (e6,) = report(recovery=True, ended=False)
    assert e6["end"] is None and e6["history"] is None


def test_a_whole_minute_a_rounding_error_short_of_60_s_is_whole() -> None:
    """``energy_j / it_mean_w`` of a whole minute can come out 59.99999999999999 s: not a
    minute covered in part (the report would warn of partial minutes in a whole window)."""
    from gridtao.records.report.minutes import covered_s

    mean_w = 1.0 / 3.0 * 2990.0
    row = MinuteRow(0, mean_w, mean_w, mean_w * 60.0 * (1 - 1e-16), None, 0.0)
    assert row.energy_j / row.it_mean_w < 60.0  # the case: a rounding error short
    assert covered_s(row) == 60.0
    assert covered_s(dataclasses.replace(row, energy_j=mean_w * 30.0)) == pytest.approx(30.0)
    assert covered_s(dataclasses.replace(row, energy_j=mean_w * 59.99)) == pytest.approx(59.99)


def test_generated_and_imported_minutes_are_said_not_measured(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A history the planner was tried on (``history generate``) or seeded from a trace
    (``history import``) holds minutes no agent measured: a report over them says so."""
    import time

    store = tmp_path / "h.sqlite3"
    assert main(["history", "--store", str(store), "generate", "--days", "1"]) == 0
    now = time.time()
    start = int(now) // 60 * 60 - 3 * 86_400
    trace = tmp_path / "trace.csv"
    trace.write_text("time,it_w\n" + "".join(f"{start + 60 * k},{2000 + k}\n" for k in range(30)))
    assert main(["history", "--store", str(store), "import", str(trace)]) == 0
    capsys.readouterr()
    frm = datetime_iso(start - 3600)
    assert main(["report", "energy", "--history", str(store), "--from", frm,
                 "--to", datetime_iso(now), "--format", "json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    said = [w for w in warnings if "not measured by an agent" in w]
    assert len(said) == 2, warnings
    assert "were generated by gridtao history generate (synthetic, seed 0)" in said[1]
    assert f"were imported from {trace}" in said[0]
    # A window that holds none of them says nothing of them.
    capsys.readouterr()
    assert main(["report", "energy", "--history", str(store), "--from", datetime_iso(start - 7200),
                 "--to", datetime_iso(start - 3600), "--format", "json"]) == 0
    assert not [w for w in json.loads(capsys.readouterr().out)["warnings"]
                if "not measured by an agent" in w]


def datetime_iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")
