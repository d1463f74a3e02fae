"""Every subcommand's ``--help`` renders: argparse formats help lazily, so a stray ``%`` in a
help string only breaks when an operator asks for help."""

from __future__ import annotations

import argparse

import pytest

from gridtao.cli.main import build_parser


def _subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(_subparsers(sub, (*path, name)))
    return found


PARSERS = _subparsers(build_parser())


def test_walk_finds_nested_commands() -> None:
    names = {" ".join(path) for path, _ in PARSERS}
    assert {"run", "demo", "bench latency", "bench compliance", "prequalify"} <= names


@pytest.mark.parametrize("path,parser", PARSERS, ids=[" ".join(p) or "gridtao" for p, _ in PARSERS])
def test_help_renders(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "usage:" in text


def test_bench_pue_offers_the_harness_scenarios() -> None:
    # The CLI declares them without importing the harness; they must not drift apart.
    from gridtao.bench.pue import SCENARIOS
    from gridtao.cli.bench import PUE_SCENARIOS

    assert set(PUE_SCENARIOS) == set(SCENARIOS)
