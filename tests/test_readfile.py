"""gridtao.readfile, and the commands that read an operator's files through it: a device, a
FIFO or a folder is refused at once (``/dev/zero`` never ends; a FIFO blocks on open)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gridtao.cli import main as cli
from gridtao.readfile import check_regular, read_regular


def test_only_a_regular_file_is_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, words in ((Path("/dev/zero"), "not a regular file"), (fifo, "not a regular file"),
                        (tmp_path, "is a folder")):
        with pytest.raises(OSError, match=words) as exc:
            read_regular(path, max_bytes=10)
        assert exc.value.filename == str(path)
    with pytest.raises(FileNotFoundError):
        check_regular(tmp_path / "missing")


def test_a_file_over_the_limit_is_refused_and_one_at_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_regular(path, max_bytes=10) == b"x" * 10
    with pytest.raises(OSError, match="larger than 9 bytes"):
        read_regular(path, max_bytes=9)


def test_audit_verify_refuses_a_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "verify", "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert "/dev/zero" in err and "not a regular file" in err and "Traceback" not in err


def test_a_trace_workload_on_a_device_is_a_configuration_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("gpus: {backend: sim, sim: {device: null, workload: trace, "
                    "trace_csv: /dev/zero}}\n")
    assert cli.main(["--config", str(path), "gpus"]) == 2
    err = capsys.readouterr().err
    assert "gpus.sim.trace_csv" in err and "not a regular file" in err, err


def test_the_planners_signals_file_is_read_only_if_regular() -> None:
    from gridtao.app.planning import signals_file
    from gridtao.config.agent import config_from_mapping

    cfg = config_from_mapping({"planner": {"signals_file": "/dev/zero"}})
    with pytest.raises(OSError, match="not a regular file"):
        signals_file(cfg, 1_800_000_000.0)
