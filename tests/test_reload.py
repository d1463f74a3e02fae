"""gridtao/app/reload.py: what a reload applies, what it refuses, and that a bad file changes
nothing.

Keys are generated at test time with ``gridtao keygen`` into tmp_path. The links are real
:class:`MqttLink` objects (never connected here: a reload only swaps what their next connection
uses); the end-to-end rotation under a running agent is in test_auth_e2e and test_agent_process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from nodes import merge

from gridtao.app.reload import apply_reload, differences, plan_reload
from gridtao.cli import main as cli
from gridtao.config.agent import Config, ConfigError, config_from_mapping
from gridtao.security import auth
from gridtao.security.guard import Guard
from gridtao.transport.mqtt import MqttLink


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for name in ("old", "new"):
        assert cli.main(["keygen", "--alg", "ed25519", "--out", str(tmp_path / name)]) == 0
    return tmp_path


def _config(keys: Path, *kids: str, **over: Any) -> Config:
    base: dict[str, Any] = {
        "auth": {
            "mode": "ed25519",
            "keys": [{"kid": k, "file": str(keys / f"{k}.pub"), "topics": ["dispatch"]}
                     for k in kids],
            "replay_store": str(keys / "replay.jsonl"),
        },
    }
    return config_from_mapping(merge(base, over), source="<test reload>")


def _guard(config: Config) -> Guard:
    return Guard.from_config(config, node_id="n", default_total_mw=2_800_000.0,
                             draw_total_mw=lambda: 2_400_000.0, wall=time.time)


def _link() -> MqttLink:
    return MqttLink(host="127.0.0.1", port=1, client_id="reload-test")


def _signed(keys: Path, kid: str) -> bytes:
    body = {"id": f"e-{kid}", "kind": "shed", "fraction": 0.1, "duration_s": 60,
            "issued_at": time.time()}
    key = auth.load_signing_key(keys / f"{kid}.key", "ed25519")
    return auth.sign_payload(body, key, kid, "ed25519")


def test_differences_names_nested_fields() -> None:
    old = config_from_mapping({})
    new = config_from_mapping({"safety": {"release_rate_per_s": 0.1}, "mqtt": {"port": 1884}})
    assert differences(old, new) == ["mqtt.port", "safety.release_rate_per_s"]
    assert differences(old, old) == []


def test_rotation_swaps_the_keys_between_messages(keys: Path) -> None:
    running = _config(keys, "old")
    guard = _guard(running)
    assert guard.authenticate_dispatch(_signed(keys, "old")) is None
    plan = plan_reload(running, _config(keys, "old", "new"), current=guard.verifier)
    # Planned, not applied: the running guard still knows only the old key.
    assert guard.authenticate_dispatch(_signed(keys, "new")) is not None
    result = apply_reload(plan, guard=guard, links=[])
    assert (result.kids_added, result.kids_removed, result.needs_restart) == (("new",), (), ())
    assert guard.authenticate_dispatch(_signed(keys, "new")) is None
    assert guard.authenticate_dispatch(_signed(keys, "old")) is None
    # Then the old key is withdrawn.
    plan = plan_reload(plan.config, _config(keys, "new"), current=guard.verifier)
    assert apply_reload(plan, guard=guard, links=[]).kids_removed == ("old",)
    reason = guard.authenticate_dispatch(_signed(keys, "old"))
    assert reason is not None and "old" in reason
    assert guard.authenticate_dispatch(_signed(keys, "new")) is None


def test_a_bad_key_file_is_refused_and_changes_nothing(keys: Path) -> None:
    running = _config(keys, "old")
    guard = _guard(running)
    before = guard.verifier
    (keys / "new.pub").write_text("not a key\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"auth\.keys\[1\]\.file \(kid 'new'\)"):
        plan_reload(running, _config(keys, "old", "new"), current=guard.verifier)
    assert guard.verifier is before
    assert guard.authenticate_dispatch(_signed(keys, "old")) is None


@pytest.mark.parametrize(("over", "key"), [
    ({"auth": {"mode": "hmac"}}, "auth.mode"),
    ({"mqtt": {"tls": {"enabled": True}}}, "mqtt.tls.enabled"),
], ids=["auth-mode", "tls-on"])
def test_switching_security_on_or_off_needs_a_restart(
    keys: Path, over: dict[str, Any], key: str
) -> None:
    running = _config(keys, "old")
    new = config_from_mapping(merge({
        "auth": {"mode": "ed25519", "keys": [{"kid": "old", "file": str(keys / "old.pub")}],
                 "replay_store": str(keys / "replay.jsonl")}}, over))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*needs a restart"):
        plan_reload(running, new, current=None)


def test_other_changes_are_reported_not_applied(keys: Path) -> None:
    running = _config(keys, "old")
    new = _config(keys, "old", safety={"release_rate_per_s": 0.1},
                  auth={"freshness_s": 5.0}, mqtt={"username": "node-7"})
    plan = plan_reload(running, new, current=_guard(running).verifier)
    # The user name is a credential (reloaded); the rest waits for a restart.
    assert plan.result.needs_restart == ("safety.release_rate_per_s", "auth.freshness_s")
    assert plan.config.safety == running.safety and plan.config.auth.freshness_s == 30.0
    assert plan.config.mqtt.username == "node-7"


def test_links_take_new_credentials_for_their_next_connection(
    keys: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n", encoding="utf-8")
    secret.chmod(0o600)
    running = _config(keys, "old")
    new = _config(keys, "old", mqtt={"username": "node-7", "password_file": str(secret)})
    links = [_link(), _link()]
    plan = plan_reload(running, new, current=_guard(running).verifier)
    assert plan.result.credentials
    apply_reload(plan, guard=_guard(running), links=links)
    for link in links:
        assert link._credentials == (None, "node-7", "s3cret")
