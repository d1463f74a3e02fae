"""How nodes' draws move together: the estimator and `gridtao history correlation`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from gridtao.cli.main import main
from gridtao.gpu.sim.daily import DailyShape
from gridtao.history import HistoryStore, synthetic_minutes
from gridtao.history.correlation import (
    MIN_HOURS,
    SiteCorrelation,
    draw_correlation,
    equicorrelation,
    hourly_residuals,
)
from gridtao.history.rows import MinuteRow

START = 1_796_000_400 // 604_800 * 604_800  # a week's start: whole weeks of hours


def _node(seed: int, days: float = 28, scale: float = 1.0) -> list[MinuteRow]:
    rows = synthetic_minutes(START, days, seed=seed, shape=DailyShape.default())
    if scale == 1.0:
        return rows
    return [dataclasses.replace(r, it_mean_w=r.it_mean_w * scale) for r in rows]


def test_independent_nodes_measure_near_zero_and_a_node_with_itself_one() -> None:
    nodes = {f"n{s}": _node(s) for s in range(4)}
    found = draw_correlation(nodes)
    assert len(found.pairs) == 6 and all(p.hours > 600 for p in found.pairs)
    assert found.common_hours > 600
    assert found.rho is not None and abs(found.rho) < 0.1
    assert found.upper is not None and found.rho < found.upper < 0.3
    assert found.suggested is not None and found.upper <= found.suggested < found.upper + 0.05
    same = draw_correlation({"a": nodes["n0"], "b": nodes["n0"]})
    assert same.rho == pytest.approx(1.0) and same.suggested == 1.0
    assert draw_correlation(nodes, seed=0) == found  # the same inputs, the same figures


def test_the_site_figure_weighs_nodes_by_their_swings() -> None:
    # two large nodes moving as one, eight small independent ones: the pairs' plain mean is
    # low, but the site's sum swings as the two large ones do
    big = _node(1, scale=10.0)
    nodes = {"big1": big, "big2": big} | {f"s{i}": _node(10 + i) for i in range(8)}
    found = draw_correlation(nodes)
    plain = np.mean([p.rho for p in found.pairs if p.rho is not None])
    assert plain < 0.1 and found.rho is not None and found.rho > 0.3
    # the formula it inverts: the spread of the sum, with that rho, is the sum's own
    r = np.array([[1.0, -1.0, 2.0, 0.0], [2.0, -2.0, 4.0, 0.0], [0.5, 0.5, -0.5, -0.5]])
    rho = equicorrelation(r)
    assert rho is not None
    sd = r.std(axis=1)
    combined = (1 - rho) * (sd ** 2).sum() + rho * sd.sum() ** 2
    assert combined == pytest.approx(r.sum(axis=0).var())


def test_the_shared_weekly_shape_is_taken_out_and_activated_hours_left_out() -> None:
    rows = _node(0, days=14)
    residuals = hourly_residuals(rows)
    assert len(residuals) == 14 * 24
    # two samples per hour of the week: each residual is half their difference, both signs
    assert residuals[START] == pytest.approx(-residuals[START + 7 * 86_400])
    capped = [dataclasses.replace(r, event_s=30.0) if START <= r.start_s < START + 3600 else r
              for r in rows]
    assert START not in hourly_residuals(capped)
    # an hour of the week seen once in the window tells nothing: not counted
    assert hourly_residuals(_node(0, days=6)) == {}


def test_too_few_hours_in_common_measure_nothing_and_suggest_nothing() -> None:
    a = _node(1, days=14)
    late = [dataclasses.replace(r, start_s=r.start_s + (14 * 86_400 - (MIN_HOURS - 1) * 3600))
            for r in _node(2, days=14)]
    found = draw_correlation({"a": a, "b": late})
    (pair,) = found.pairs
    assert pair.rho is None and found.rho is None and found.suggested is None


def test_the_suggestion_rounds_up_to_a_twentieth_within_zero_and_one() -> None:
    def site(upper: float) -> SiteCorrelation:
        return SiteCorrelation((), {}, 100, 0.0, upper)

    assert site(0.101).suggested == 0.15
    assert site(0.1).suggested == 0.1
    assert site(-0.3).suggested == 0.0
    assert site(1.2).suggested == 1.0


def test_the_cli_prints_every_pair_and_the_value_to_configure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for seed in (1, 2, 3):
        path = tmp_path / f"node{seed}.sqlite3"
        with HistoryStore.open(path) as store:
            store.write(_node(seed))
        paths.append(path)
    assert main(["history", "correlation", f"gpu-a={paths[0]}", str(paths[1]),
                 str(paths[2])]) == 0
    out = capsys.readouterr().out
    assert "gpu-a" in out and "node2" in out and "node3" in out
    assert "site.market.pooling_correlation:" in out and "39 of 40" in out
    assert main(["history", "correlation", "--days", "10", str(paths[0]), str(paths[1])]) == 0
    assert "less than two weeks" in capsys.readouterr().err
    assert main(["history", "correlation", str(paths[0])]) == 2
    assert "two nodes or more" in capsys.readouterr().err
    assert main(["history", "correlation", str(paths[0]), str(tmp_path / "none.sqlite3")]) == 2
    assert "no such history file" in capsys.readouterr().err
    assert main(["history", "correlation", f"x={paths[0]}", f"x={paths[1]}"]) == 2
    assert "named twice" in capsys.readouterr().err
    # the copies are read only: left byte for byte, no journal files made beside them
    before = {p: p.read_bytes() for p in paths}
    listing = sorted(x.name for x in tmp_path.iterdir())
    assert main(["history", "correlation", *map(str, paths)]) == 0
    assert {p: p.read_bytes() for p in paths} == before
    assert sorted(x.name for x in tmp_path.iterdir()) == listing
    other = tmp_path / "other.sqlite3"
    other.write_bytes(b"")
    assert main(["history", "correlation", str(paths[0]), str(other)]) == 2
    assert "not a gridtao history" in capsys.readouterr().err


def test_the_cli_reads_the_same_files_the_same_in_any_time_zone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The days resampled are the nodes' local days (``--tz-offset-h``, their planner's), not
    the local days of the machine running the command."""
    paths = []
    for seed in (4, 5):
        path = tmp_path / f"node{seed}.sqlite3"
        with HistoryStore.open(path) as store:
            store.write(_node(seed))
        paths.append(str(path))

    def run(*options: str, zone: str = "UTC0") -> str:
        monkeypatch.setenv("TZ", zone)  # POSIX zones: no tzdata needed
        time.tzset()
        assert main(["history", "correlation", *options, *paths]) == 0
        return capsys.readouterr().out

    try:
        utc = run()
        assert "UTC+0 h" in utc
        assert run(zone="IST-5:30") == utc
        shifted = run("--tz-offset-h", "5.5")
        assert "UTC+5.5 h" in shifted
        assert shifted.splitlines()[1:] != utc.splitlines()[1:]  # other days resampled
        for bad in ("15", "nan", "east"):
            assert main(["history", "correlation", "--tz-offset-h", bad, *paths]) == 2
            assert "--tz-offset-h" in capsys.readouterr().err
    finally:
        monkeypatch.undo()  # TZ as it was, then read again
        time.tzset()
