"""One state directory for what the agent writes, and one rule for relative paths."""

from __future__ import annotations

from pathlib import Path

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
    from gridtao.app.agent import NODE_ID_ENV, default_node_id

    monkeypatch.setenv(NODE_ID_ENV, "gpu-node/07 a")
    assert default_node_id() == "gpu-node_07_a"  # one MQTT topic level, no wildcards
    monkeypatch.delenv(NODE_ID_ENV)
    assert default_node_id() not in ("", "gpu-node_07_a")
