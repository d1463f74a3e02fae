"""gridtao.security.replay.ReplayStore: event ids survive a restart, are pruned after the freshness
window, stay bounded, and the file is private and single-owner."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gridtao.config.agent import ConfigError, config_from_mapping
from gridtao.security import replay
from gridtao.security.auth import Verifier
from gridtao.security.bounds import DispatchBounds
from gridtao.security.guard import Guard
from gridtao.security.replay import ReplayStore, ReplayStoreError

NOW = 1_763_900_000.0
WINDOW_S = 30.0


class Wall:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _store(path: Path, wall: Wall, *, max_entries: int = 1000) -> ReplayStore:
    return ReplayStore(path, window_s=WINDOW_S, max_entries=max_entries, wall=wall)


def test_an_id_seen_before_a_restart_is_still_seen_after_it(tmp_path: Path) -> None:
    path, wall = tmp_path / "state" / "replay.jsonl", Wall()
    with _store(path, wall) as first:
        assert not first.seen("e1")
        assert first.add("e1", NOW - 1)
        assert first.seen("e1")
        first.flush()
    with _store(path, wall) as second:  # a new process over the same file
        assert second.seen("e1")
        assert not second.seen("e2")


def test_flush_is_what_makes_an_id_durable(tmp_path: Path) -> None:
    path, wall = tmp_path / "replay.jsonl", Wall()
    first = _store(path, wall)
    first.open()
    first.add("unflushed", NOW)
    assert path.read_text() == ""  # recorded in memory only until flush()
    first.flush()
    assert json.loads(path.read_text()) == {"id": "unflushed", "t": NOW}
    first.close()


def test_ids_older_than_the_window_are_forgotten(tmp_path: Path) -> None:
    path, wall = tmp_path / "replay.jsonl", Wall()
    with _store(path, wall) as store:
        store.add("old", NOW - 20)
        store.add("new", NOW - 5)
        store.flush()
        wall.t = NOW + 11  # "old" is now 31 s old: no message with it can be fresh any more
        store.add("newer", NOW + 10)
        store.flush()
        assert not store.seen("old") and store.seen("new") and store.seen("newer")
    wall.t = NOW + 26
    with _store(path, wall) as again:
        assert not again.seen("old") and not again.seen("new") and again.seen("newer")
        assert len(again) == 1
    assert len(path.read_text().splitlines()) == 1  # compacted at open


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path, wall = tmp_path / "replay.jsonl", Wall()
    good = "".join(json.dumps({"id": i, "t": NOW}) + "\n" for i in "ab")
    path.write_text(good + '{"id":"c","t')
    with _store(path, wall) as store:
        assert store.seen("a") and store.seen("b") and not store.seen("c")
        store.add("d", NOW)
        store.flush()
    lines = [json.loads(x)["id"] for x in path.read_text().splitlines()]
    assert lines == ["a", "b", "d"]


def test_full_store_refuses_new_ids_until_old_ones_expire(tmp_path: Path) -> None:
    wall = Wall()
    with _store(tmp_path / "r.jsonl", wall, max_entries=3) as store:
        for k in range(3):
            assert store.add(f"e{k}", NOW - 10 + k)
        assert not store.add("e3", NOW)
        assert not store.seen("e3")
        assert store.add("e1", NOW - 9)  # already known: still fine
        wall.t = NOW + 20.5  # e0 (t = NOW - 10) has left the window
        assert store.add("e3", NOW + 20)
        assert not store.seen("e0") and store.seen("e3")


def test_the_file_stays_bounded_under_many_events(tmp_path: Path) -> None:
    path, wall = tmp_path / "r.jsonl", Wall()
    with _store(path, wall, max_entries=100_000) as store:
        for k in range(3000):
            wall.t = NOW + k * 0.1  # 10 events/s for 300 s: ~300 live at a time
            store.add(f"e{k}", wall.t)
            if k % 5 == 4:
                store.flush()
        live = len(store)
    assert live <= WINDOW_S / 0.1 + 1
    assert len(path.read_text().splitlines()) <= live + replay.COMPACT_SLACK + 1


def test_the_file_is_private_and_owned_by_one_agent(tmp_path: Path) -> None:
    path, wall = tmp_path / "st" / "r.jsonl", Wall()
    with _store(path, wall):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        with pytest.raises(ReplayStoreError, match="in use by another running agent"):
            _store(path, wall).open()
    _store(path, wall).open()  # the lock went with the first store


def test_unusable_store_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = config_from_mapping(
        {"auth": {"mode": "hmac", "keys": [{"kid": "a", "file": "unused"}],
                  "replay_store": str(blocker / "replay.jsonl")}}, source="site.yaml")
    bounds = DispatchBounds(cfg.limits, default_total_mw=1.0, draw_total_mw=lambda: 1.0)
    guard = Guard(cfg, verifier=Verifier("hmac", {}), bounds=bounds, wall=Wall(),
                  replay_path=blocker / "replay.jsonl")
    with pytest.raises(ConfigError) as e:
        guard.open()
    assert str(e.value).startswith("site.yaml: auth.replay_store: replay store ")
    assert str(blocker / "replay.jsonl") in str(e.value)


def test_default_path_follows_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert replay.default_path("n1") == tmp_path / "gridtao" / "replay-n1.jsonl"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert replay.default_path("n1") == (
        tmp_path / "home" / ".local" / "state" / "gridtao" / "replay-n1.jsonl")
