"""gridtao/app/reload.py: what a reload applies, what it refuses, and that a bad file changes
nothing.

Keys are generated at test time with ``gridtao keygen`` into tmp_path. The links are real
:class:`MqttLink` objects (never connected here: a reload only swaps what their next connection
uses); the end-to-end rotation under a running agent is in test_auth_e2e and test_agent_process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from broker import MosquittoBroker
from nodes import merge
from waiting import wait_until

from gridtao.app import run as run_module
from gridtao.app.agent import Agent, AgentOptions
from gridtao.app.reload import apply_reload, differences, plan_reload
from gridtao.app.run import run_agent
from gridtao.cli import main as cli
from gridtao.config.agent import Config, ConfigError, config_from_mapping, load_config
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


# ---------------------------------------------------------- SIGHUP with a file that is no text

# What a configuration file may turn into: an editor's UTF-16, a copy of the wrong file,
# values PyYAML itself cannot build.
UNREADABLE_FILES = {
    "utf-16": "gpus: {backend: sim}\n".encode("utf-16"),
    "utf-16-le": "gpus: {backend: sim}\n".encode("utf-16-le"),
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "control-bytes": b"\x1b[0m\x01\x02\x03gridtao\x04\x05\x06",  # valid UTF-8, not YAML text
    # Text, but PyYAML's own constructors raise ValueError on it (not a YAMLError).
    "impossible-date": b"history: {retention_days: 2024-13-45}\n",
    "huge-integer": b"mqtt: {port: " + b"9" * 5000 + b"}\n",
}


def test_sighup_with_a_binary_or_utf16_file_is_refused_in_one_log_line(
    mqtt_broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real SIGHUP to this process, handled by ``gridtao run``'s lifecycle (run_agent): each
    unreadable file is one error line naming the file (no traceback) and one refused reload;
    the agent keeps running and reloads a good file afterwards."""
    path = tmp_path / "agent.yaml"
    good = yaml.safe_dump({
        "gpus": {"backend": "sim", "sim": {"count": 2}},
        "mqtt": {"port": mqtt_broker.port, "node_id": "hup-bytes", "prefix": "gridtao/hup-bytes",
                 "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "metrics": {"enabled": False},
    })
    path.write_text(good, encoding="utf-8")
    agents: list[Agent] = []

    class Recorded(Agent):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            agents.append(self)

    monkeypatch.setattr(run_module, "Agent", Recorded)

    def reloads(result: str) -> float:
        return agents[0].registry.get_sample_value("gridtao_reloads_total",
                                                   {"result": result}) or 0.0

    stop = asyncio.Event()
    failures: list[BaseException] = []

    def drive(loop: asyncio.AbstractEventLoop) -> None:
        try:  # SIGHUP only once run_agent's handler is in place: the agent exists after it
            wait_until(lambda: bool(agents) and agents[0]._started, "the agent to start",
                       timeout_s=30.0)
            for n, raw in enumerate(UNREADABLE_FILES.values(), start=1):
                path.write_bytes(raw)
                os.kill(os.getpid(), signal.SIGHUP)
                wait_until(lambda n=n: reloads("refused") == n,  # type: ignore[misc]
                           f"refused reload {n}", timeout_s=30.0)
            path.write_text(good, encoding="utf-8")
            os.kill(os.getpid(), signal.SIGHUP)
            wait_until(lambda: reloads("applied") == 1, "the good file's reload", timeout_s=30.0)
        except BaseException as e:
            failures.append(e)
        finally:
            loop.call_soon_threadsafe(stop.set)

    async def main() -> int:
        driver = threading.Thread(target=drive, args=(asyncio.get_running_loop(),))
        driver.start()
        try:
            return await run_agent(load_config(path), stop=stop,
                                   options=AgentOptions(serve_metrics=False,
                                                        connect_timeout_s=30.0),
                                   reload_config=lambda: load_config(path))
        finally:
            await asyncio.get_running_loop().run_in_executor(None, driver.join)

    # Until run_agent's handler is in place (and after), a stray SIGHUP must not end pytest.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert asyncio.run(main()) == 0
    finally:
        signal.signal(signal.SIGHUP, previous)
    if failures:
        raise failures[0]
    assert reloads("refused") == len(UNREADABLE_FILES)
    refused = [r for r in caplog.records if r.getMessage().startswith("reload refused")]
    assert len(refused) == len(UNREADABLE_FILES), [r.getMessage() for r in refused]
    for record in refused:
        line = record.getMessage()
        assert "\n" not in line and f"nothing changed: {path}" in line, line
        assert record.exc_info is None, line
    traced = [r for r in caplog.records if r.exc_info is not None or "Traceback" in r.getMessage()]
    assert not traced, [r.getMessage() for r in traced]
