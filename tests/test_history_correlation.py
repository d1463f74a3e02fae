"""How nodes' draws move together: the estimator and `gridtao history correlation`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gridtao.cli.main import main
from gridtao.gpu.sim.daily import DailyShape
from gridtao.history import HistoryStore, synthetic_minutes
from gridtao.history.correlation import (
    MIN_HOURS,
    PairCorrelation,
    SiteCorrelation,
    draw_correlation,
    hourly_residuals,
)
from gridtao.history.rows import MinuteRow

START = 1_796_000_400 // 604_800 * 604_800  # a week's start: whole weeks of hours


def _node(seed: int, days: float = 28) -> list[MinuteRow]:
    return synthetic_minutes(START, days, seed=seed, shape=DailyShape.default())


def test_independent_nodes_measure_near_zero_and_a_node_with_itself_one() -> None:
    nodes = {f"n{s}": _node(s) for s in range(4)}
    found = draw_correlation(nodes)
    assert len(found.pairs) == 6 and all(p.hours > 600 for p in found.pairs)
    assert found.mean_rho is not None and abs(found.mean_rho) < 0.15
    same = draw_correlation({"a": nodes["n0"], "b": nodes["n0"]})
    assert same.mean_rho == pytest.approx(1.0) and same.suggested == 1.0


def test_a_node_that_follows_another_measures_high() -> None:
    a, b = _node(1), _node(2)
    # c: half of a's own swings on b's: the two move together, partly
    c = [dataclasses.replace(x, it_mean_w=0.5 * x.it_mean_w + 0.5 * y.it_mean_w)
         for x, y in zip(a, b, strict=True)]
    found = draw_correlation({"a": a, "c": c})
    assert found.mean_rho is not None and 0.5 < found.mean_rho < 0.95


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
    assert pair.rho is None and found.mean_rho is None and found.suggested is None


def test_the_suggestion_rounds_up_to_a_twentieth_within_zero_and_one() -> None:
    def site(*rhos: float) -> SiteCorrelation:
        return SiteCorrelation(tuple(PairCorrelation("a", str(i), 100, r)
                                     for i, r in enumerate(rhos)), {})

    assert site(0.101).suggested == 0.15
    assert site(0.1).suggested == 0.1
    assert site(-0.3, -0.1).suggested == 0.0
    assert site(0.2, 0.4).suggested == pytest.approx(0.3)


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
    assert "site.market.pooling_correlation:" in out
    assert main(["history", "correlation", str(paths[0])]) == 2
    assert "two nodes or more" in capsys.readouterr().err
    assert main(["history", "correlation", str(paths[0]), str(tmp_path / "none.sqlite3")]) == 2
    assert "no such history file" in capsys.readouterr().err
    assert main(["history", "correlation", f"x={paths[0]}", f"x={paths[1]}"]) == 2
    assert "named twice" in capsys.readouterr().err
