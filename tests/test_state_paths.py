"""One state directory for what the agent writes, and one rule for relative paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gridtao.config.agent import Config, load_config
from gridtao.config.paths import state_dir, with_state_paths


def test_systemd_state_directory_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert state_dir() == tmp_path / "a"


def test_without_systemd_xdg_for_a_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert state_dir() == tmp_path / "gridtao"
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert state_dir() == Path("/var/lib/gridtao")


def test_records_default_on_in_the_state_directory_named_by_node(tmp_path: Path) -> None:
    cfg = with_state_paths(Config(), "node-7")
    state = tmp_path / "state"  # the suite's per-test STATE_DIRECTORY (conftest)
    assert cfg.audit.enabled and cfg.journal.enabled
    assert cfg.audit.path == str(state / "audit-node-7.jsonl")
    assert cfg.journal.path == str(state / "journal-node-7.json")
    assert cfg.auth.replay_store == str(state / "replay-node-7.jsonl")


def test_relative_paths_are_taken_from_the_config_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "node.yaml"
    path.write_text("audit: {path: records/audit.jsonl}\njournal: {path: /abs/j.json}\n")
    cfg = with_state_paths(load_config(path), "n")
    assert cfg.audit.path == str(folder / "records" / "audit.jsonl")
    assert cfg.journal.path == "/abs/j.json"


def test_the_node_id_comes_from_the_environment_before_the_host_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gridtao.app.options import NODE_ID_ENV, default_node_id

    monkeypatch.setenv(NODE_ID_ENV, "gpu-node/07 a")
    assert default_node_id() == "gpu-node_07_a"  # one MQTT topic level, no wildcards
    monkeypatch.delenv(NODE_ID_ENV)
    assert default_node_id() not in ("", "gpu-node_07_a")


@pytest.mark.parametrize(("yaml_text", "key", "words"), [
    ("journal: {path: DIR}\n", "journal.path", "is a folder"),
    ("audit: {path: /dev/null}\n", "audit.path", "is not a regular file"),
    ("audit: {path: x.json}\njournal: {path: ./x.json}\n", "journal.path",
     "names the same file as audit.path"),
    ("journal: {path: j.json}\nhistory: {path: j.json}\n", "history.path",
     "names the same file as journal.path"),
    ("audit: {path: a.jsonl}\nhistory: {path: a.jsonl}\n", "history.path",
     "names the same file as audit.path"),
])
def test_a_state_file_that_is_a_folder_or_shared_by_two_keys_is_refused_on_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml_text: str, key: str,
        words: str) -> None:
    """Refused before anything is written (a journal at a folder left a traceback and a
    ``<folder>.lock`` beside it; two keys on one file lost the audit trail at stop)."""
    from gridtao.cli import main as cli

    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "node.yaml"
    path.write_text("gpus: {backend: sim, sim: {device: null, count: 2}}\n"
                    "mqtt: {host: 127.0.0.1, port: 1}\n" + yaml_text.replace("DIR", str(folder)))
    before = sorted(p.name for p in folder.iterdir())
    state_before = sorted(p.name for p in (tmp_path / "state").glob("*"))
    assert cli.main(["--config", str(path), "run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {key}: " in err and words in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written
    assert sorted(p.name for p in (tmp_path / "state").glob("*")) == state_before
    assert not Path(f"{folder}.lock").exists()


def test_records_that_are_off_are_not_checked() -> None:
    from gridtao.config.agent import config_from_mapping

    cfg = config_from_mapping({"audit": {"enabled": False, "path": "/dev/null"},
                               "journal": {"enabled": False, "path": "/dev/null"}})
    with_state_paths(cfg, "n")  # no error: neither file is written


def test_a_state_path_that_cannot_be_looked_at_is_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gridtao.config.agent import ConfigError, config_from_mapping

    cfg = config_from_mapping({"journal": {"path": "/locked/j.json"}})
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).startswith("/locked"):
            raise PermissionError(13, "Permission denied")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(ConfigError, match=r"journal\.path: /locked/j\.json: cannot look: "
                                          "Permission denied"):
        with_state_paths(cfg, "n")
