"""Every subcommand's ``--help`` renders: argparse formats help lazily, so a stray ``%`` in a
help string only breaks when an operator asks for help."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gridtao.cli.main import build_parser, main


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


def test_config_and_log_level_are_accepted_after_the_command_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["gpus", "--config", str(missing)]) == 2
    assert f"{missing}: file not found" in capsys.readouterr().err
    assert main(["gpus", "--bogus"]) == 2


def test_bench_help_lists_every_harness(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ("latency", "pue", "compliance", "fanout", "overhead"):
        assert f"\n    {name}" in out, name


def test_every_option_has_help_text() -> None:
    def missing(parser: argparse.ArgumentParser, path: str) -> list[str]:
        out: list[str] = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    out += missing(child, f"{path} {name}")
            elif action.help is None:
                out.append(f"{path} {action.option_strings or action.dest}")
        return out

    assert missing(build_parser(), "gridtao") == []


def test_a_products_former_short_name_says_its_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "compliance", "--product", "fcr-d", "--list"]) == 2
    assert "'fcr-d' is now 'fcr-d-up'" in capsys.readouterr().err
    assert main(["bench", "compliance", "--product", "fcr-d-up", "--list"]) == 0


def test_common_options_work_after_nested_commands_and_outputs_are_checked_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "nope.yaml"
    for argv in (["bench", "latency", "--config", str(missing)],
                 ["audit", "verify", "--config", str(missing), "x.jsonl"]):
        assert main(argv) == 2
        assert f"{missing}: file not found" in capsys.readouterr().err
    assert main(["bench", "latency", "--json", str(tmp_path / "no" / "x.json")]) == 2
    assert f"no folder {tmp_path / 'no'}" in capsys.readouterr().err  # before a 5-minute run


@pytest.mark.parametrize(("bench", "option"), [
    ("latency", "--markdown"), ("flood", "--json"), ("fleet", "--markdown"),
    ("planner", "--json"), ("work", "--json")])
def test_every_bench_refuses_an_output_it_could_not_write_before_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bench: str, option: str,
) -> None:
    # A folder where a file belongs: found before the run (hours for some), never after it.
    assert main(["bench", bench, option, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{option} {tmp_path}: is a folder; name a file" in err
    assert "Traceback" not in err


def test_a_reader_that_leaves_early_is_not_an_error() -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "gridtao", "gpus", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # `| head -c 10`
    assert proc.wait(timeout=60) == 0
    assert b"Traceback" not in proc.stderr.read()
    proc.stderr.close()
