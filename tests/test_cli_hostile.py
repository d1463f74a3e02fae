"""Hostile arguments and files to the commands that read them: each is one line on stderr and
exit 2, never a traceback, a hang or unbounded memory, and nothing is written first."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gridtao.cli import main as cli

Setup = Callable[[Path], list[str]]


def _fifo(tmp: Path) -> Path:
    path = tmp / "fifo"
    os.mkfifo(path)  # whoever opens it to read would wait for a writer forever
    return path


def _history(tmp: Path) -> Path:
    store = tmp / "g.sqlite3"
    assert cli.main(["history", "--store", str(store), "generate", "--days", "1"]) == 0
    return store


def _year_9999(tmp: Path) -> list[str]:
    csv = tmp / "h.csv"
    csv.write_text("time,it_w\n9999-12-31T23:59:59+00:00,5\n")
    return ["history", "--store", str(tmp / "h.sqlite3"), "import", str(csv)]


def _deep_payload(tmp: Path) -> list[str]:
    assert cli.main(["keygen", "--alg", "hmac", "--out", str(tmp / "k")]) == 0
    return ["sign", "--key", str(tmp / "k.hmac"), "--alg", "hmac", "--kid", "x",
            "[" * 5000 + "]" * 5000]


def _plan_by(tmp: Path) -> list[str]:
    cfg = tmp / "p.yaml"
    cfg.write_text("products: [{kind: dr, capacity_w: 1500}]\n"
                   "gpus: {backend: sim, sim: {device: null}}\n")
    return ["--config", str(cfg), "plan", "--store", str(_history(tmp)),
            "--by", "0001-01-01T00:00+14:00", "--work-kwh", "1"]


def _plan(tmp: Path, *more: str) -> list[str]:
    cfg = tmp / "p.yaml"
    cfg.write_text("products: [{kind: dr, capacity_w: 1500}]\n"
                   "gpus: {backend: sim, sim: {device: null}}\n")
    return ["--config", str(cfg), "plan", "--store", str(_history(tmp)), *more]


def _report(tmp: Path, *more: str) -> list[str]:
    return ["report", "energy", "--history", str(_history(tmp)), "--from", "2026-12-01T00:00Z",
            "--to", "2026-12-02T00:00Z", *more]


CASES: dict[str, tuple[Setup, str]] = {
    # Outputs that cannot be written: said before any work, not as a traceback after it.
    "plan --json into no folder": (lambda t: _plan(t, "--json", str(t / "none" / "p.json")),
                                   "no folder"),
    "plan --json onto a folder": (lambda t: _plan(t, "--json", str(t)), "is a folder"),
    "plan --plot into no folder": (lambda t: _plan(t, "--plot", str(t / "none" / "p.png")),
                                   "no folder"),
    "report --plot into no folder": (
        lambda t: _report(t, "--plot", str(t / "none" / "e.png")), "no folder"),
    "compliance --json into no folder": (lambda t: [
        "bench", "compliance", "--product", "ffr", "--json", str(t / "none" / "c.json")],
        "--json"),
    "report from far in the future": (lambda t: [
        "report", "energy", "--history", str(_history(t)), "--from", "2026-12-01T00:00Z",
        "--to", "9999-12-31T23:59Z"], "the time must fall in 2000-2100"),
    "report over six years": (lambda t: [
        "report", "energy", "--history", str(_history(t)), "--from", "2020-12-01T00:00Z",
        "--to", "2026-12-31T23:59Z"], "spans more than 366 days"),
    "history import of year 9999": (_year_9999, "is not a time this history can hold"),
    "history import of a FIFO": (lambda t: [
        "history", "--store", str(t / "h.sqlite3"), "import", str(_fifo(t))],
        "not a regular file"),
    "prequalify score of a FIFO": (lambda t: [
        "prequalify", "score", "--product", "ffr", str(_fifo(t))], "not a regular file"),
    "keygen into no file name": (lambda t: ["keygen", "--out", ""], "names no file"),
    "sign nested too deeply": (_deep_payload, "nested too deeply"),
    "plan by year 1": (_plan_by, "the time must fall in 2000-2100"),
    "latency bench without baselines": (lambda t: [
        "bench", "latency", "--triggers", "1", "--baseline-triggers", "0"],
        "--baseline-triggers must be in 1..1000"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_argument_is_one_line_and_exit_2(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup, words = CASES[case]
    argv = setup(tmp_path)
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gridtao: error: ") and err.count("\n") == 1, err
    assert words in err
    store = tmp_path / "h.sqlite3"
    if store.exists():  # a refused import wrote nothing
        with sqlite3.connect(store) as db:
            tables = {r[0] for r in db.execute("select name from sqlite_master")}
            if "minutes" in tables:
                assert db.execute("select count(*) from minutes").fetchone() == (0,)
