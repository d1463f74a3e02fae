"""gridtao/config.py: defaults, the shipped default.yaml, and errors naming file, key and reason."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gridtao.config.agent import (
    ENV_VAR,
    MAX_CONFIG_BYTES,
    Config,
    ConfigError,
    FrequencyTrigger,
    config_from_mapping,
    load_config,
)

# The example configuration shipped in the source tree states every built-in default.
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_builtin_defaults() -> None:
    cfg = load_config()
    assert cfg == Config() and cfg.source == "<defaults>"
    assert cfg.gpus.backend == "auto" and not cfg.gpus.dry_run
    assert cfg.gpus.sim.count == 8 and cfg.gpus.sim.profile == "h100-sxm"
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.prefix) == ("127.0.0.1", 1883, "gridtao/demo")
    assert cfg.metrics.port == 9108
    assert [t.hz for t in cfg.safety.triggers] == [49.7, 49.6, 49.5]


def _assert_matches_defaults(data: Any, default: Any, key: str) -> None:
    if isinstance(data, dict):
        # Every section states every key (a list's examples may leave some to their defaults).
        if dataclasses.is_dataclass(default) and not key.endswith("]"):
            # Not the agent's keys: where the file came from, and `gridtao site`'s section
            # (configs/site.yaml states it).
            elsewhere = {"source", "site"} if not key else set()
            missing = [f.name for f in dataclasses.fields(default)
                       if f.name not in data and f.name not in elsewhere]
            assert missing == [], f"{key or 'top level'}: default.yaml leaves out {missing}"
        for name, value in data.items():
            _assert_matches_defaults(value, getattr(default, name), f"{key}.{name}".lstrip("."))
    elif isinstance(data, list):
        assert len(data) == len(default), key
        for i, (value, d) in enumerate(zip(data, default, strict=True)):
            _assert_matches_defaults(value, d, f"{key}[{i}]")
    else:
        assert data == default, f"{key}: default.yaml has {data!r}, the schema has {default!r}"


def test_default_yaml_states_the_builtin_defaults() -> None:
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    _assert_matches_defaults(data, Config(), "")
    loaded = load_config(DEFAULT_CONFIG_PATH)
    assert loaded.source == str(DEFAULT_CONFIG_PATH)
    assert dataclasses.replace(loaded, source="<defaults>") == Config()


def test_env_var_is_honoured_and_an_explicit_path_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "env.yaml"
    env_file.write_text("mqtt:\n  port: 1884\n")
    arg_file = tmp_path / "arg.yaml"
    arg_file.write_text("mqtt:\n  port: 1885\n")
    monkeypatch.setenv(ENV_VAR, str(env_file))
    assert load_config().mqtt.port == 1884
    assert load_config().source == str(env_file)
    assert load_config(arg_file).mqtt.port == 1885
    monkeypatch.setenv(ENV_VAR, "")
    assert load_config() == Config()


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    f = tmp_path / "partial.yaml"
    f.write_text(
        "gpus:\n  sim:\n    cap_down_ms: 50\n    workload: idle\n"
        "safety:\n  triggers:\n    - {hz: 49.8, reduction_fraction: 0.05}\n"
    )
    cfg = load_config(f)
    assert cfg.gpus.sim.cap_down_ms == 50.0 and isinstance(cfg.gpus.sim.cap_down_ms, float)
    assert cfg.gpus.sim.workload == "idle" and cfg.gpus.sim.count == 8
    assert cfg.safety.triggers == (FrequencyTrigger(hz=49.8, reduction_fraction=0.05),)
    assert cfg.mqtt == Config().mqtt


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text("# nothing\n")
    assert dataclasses.replace(load_config(f), source="<defaults>") == Config()


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mqtt.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("gpus:\n  sim:\n    cuont: 8\n", "gpus.sim.cuont", "unknown key"),
        ("colour: blue\n", "colour", "unknown key"),
        ("source: x\n", "source", "unknown key"),
        ("gpus:\n  sim:\n    count: eight\n", "gpus.sim.count", "expected an integer"),
        ("gpus:\n  sim:\n    count: 8.0\n", "gpus.sim.count", "expected an integer"),
        ("gpus:\n  dry_run: 1\n", "gpus.dry_run", "expected true or false"),
        ("mqtt:\n  port: true\n", "mqtt.port", "expected an integer"),
        ("mqtt:\n  host: 5\n", "mqtt.host", "expected a non-empty string"),
        ("gpus: [sim]\n", "gpus", "expected a mapping"),
        ("safety:\n  triggers: {hz: 49}\n", "safety.triggers", "expected a list"),
        ("gpus:\n  backend: cuda\n", "gpus.backend", "must be one of"),
        ("gpus:\n  sim:\n    count: 0\n", "gpus.sim.count", "must be >= 1"),
        ("mqtt:\n  port: 70000\n", "mqtt.port", "must be <= 65535"),
        ("control:\n  fast_hz: .inf\n", "control.fast_hz", "must be finite"),
        ("safety:\n  triggers:\n    - {hz: 49.7}\n    - {hz: 30}\n", "safety.triggers[1].hz",
         "must be >= 45"),
        ("- 1\n", "<top level>", "expected a mapping"),
    ],
)
def test_errors_name_file_key_and_reason(tmp_path: Path, text: str, key: str,
                                         reason: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert str(exc.value).startswith(f"{f}: {key}: {reason}")


def test_missing_file_names_it(tmp_path: Path) -> None:
    f = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="file not found") as exc:
        load_config(f)
    assert str(f) in str(exc.value)


def test_unreadable_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder") as exc:
        load_config(tmp_path)
    assert str(tmp_path) in str(exc.value)


def test_a_device_or_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    """/dev/zero never ends and a FIFO blocks on open: neither is read."""
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    for path in (Path("/dev/zero"), fifo):
        with pytest.raises(ConfigError, match="is not a regular file") as exc:
            load_config(path)
        assert str(path) in str(exc.value)


def test_duplicate_keys_are_refused_naming_both_lines(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a second ``limits:`` silently dropped the
    first's safety limits."""
    path = tmp_path / "dup.yaml"
    path.write_text("limits: {max_reduction_fraction: 0.5}\nmqtt: {port: 1883}\n"
                    "limits: {dispatch_burst: 3}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "(line 3, column 1)" in msg and "key 'limits' given twice" in msg
    assert "first at line 1" in msg
    path.write_text("mqtt:\n  port: 1883\n  port: 1884\n")
    with pytest.raises(ConfigError, match="key 'port' given twice"):
        load_config(path)


def test_a_merge_key_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("mqtt:\n  <<: {port: 1883, host: 127.0.0.1}\n  port: 1884\n")
    cfg = load_config(path)
    assert cfg.mqtt.port == 1884 and cfg.mqtt.host == "127.0.0.1"


def test_nested_merges_and_keys_of_other_types_are_not_duplicates() -> None:
    """A merge brought into a mapping that is itself merged elsewhere is not a key written
    twice; nor are 1 and "1"."""
    from gridtao.config.yamlfile import StrictLoader

    text = ("defs: {base: &A {k: 1}, mid: &B {<<: *A, k: 2}}\nuse: {<<: *B}\n"
            "both: {1: int, '1': str}\n")
    data = yaml.load(text, Loader=StrictLoader)
    assert data["defs"]["mid"]["k"] == 2 and data["both"] == {1: "int", "1": "str"}


def test_a_file_too_large_to_be_a_configuration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"# " + b"x" * (MAX_CONFIG_BYTES + 10) + b"\n")
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        load_config(path)


def test_an_alias_bomb_in_a_value_is_shown_in_part(tmp_path: Path) -> None:
    """A few hundred bytes of YAML aliases make a list of 10^8 items: the error shows a few
    of them, at once, instead of building the text of them all."""
    levels = ["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"&l{k} [" + ", ".join([f"*l{k - 1}"] * 10) + "]" for k in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("gpus: {backend: [" + ", ".join(levels) + "]}\n")
    with pytest.raises(ConfigError, match=r"gpus\.backend") as exc:
        load_config(path)
    assert len(str(exc.value)) < 400


def test_bad_yaml_names_file_and_position(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("mqtt:\n  port: [1883\n")
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    msg = str(exc.value)
    assert msg.startswith(str(f)) and "invalid YAML" in msg and "line " in msg


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"mqtt": {"reconnect_min_s": 5, "reconnect_max_s": 1}}, "mqtt.reconnect_min_s"),
        ({"safety": {"triggers": [{"hz": 49.7}, {"hz": 49.7}]}}, "safety.triggers"),
        ({"gpus": {"sim": {"workload": "trace"}}}, "gpus.sim.trace_csv"),
        ({"mqtt": {"prefix": "grid/#"}}, "mqtt.prefix"),
        ({"mqtt": {"prefix": "nu/"}}, "mqtt.prefix"),
        ({"mqtt": {"prefix": "/x"}}, "mqtt.prefix"),
        ({"mqtt": {"prefix": "a//b"}}, "mqtt.prefix"),
        ({"products": [{"kind": "ffr", "capacity_w": 300, "threshold_hz": 50.2}],
          "safety": {"triggers": []}}, "products[0].threshold_hz"),
        ({"products": [{"kind": "ercot-ffr", "capacity_w": 300, "threshold_hz": 60.0}],
          "safety": {"triggers": []}}, "products[0].threshold_hz"),
        ({"products": [{"kind": "ercot-ffr", "capacity_w": 300, "threshold_hz": 49.5}],
          "safety": {"triggers": []}}, "products[0].threshold_hz"),
        ({"products": [{"kind": "ffr", "capacity_w": 300, "threshold_hz": 49.65}],
          "safety": {"triggers": []}}, "products[0].threshold_hz"),
        ({"safety": {"triggers": [{"hz": 50.0}]}}, "safety.triggers[0].hz"),
        ({"safety": {"triggers": [{"hz": 52.0}]}}, "safety.triggers[0].hz"),
        ({"safety": {"triggers": [{"hz": 49.7}, {"hz": 59.8}]}}, "safety.triggers"),
        ({"products": [{"kind": "ffr", "capacity_w": 300},
                       {"kind": "ercot-ffr", "capacity_w": 300}],
          "safety": {"triggers": []}}, "products"),
        ({"products": [{"kind": "fcr-d-up", "capacity_w": 300, "threshold_hz": 49.7}],
          "safety": {"triggers": []}}, "products[0].threshold_hz"),
        ({"products": [{"kind": "dr", "capacity_w": 300, "support_s": 30}]},
         "products[0].support_s"),
        ({"tracker": {"priorities": [{"gpus": [0, 1], "priority": "critical"},
                                     {"gpus": [1], "priority": "flexible"}]}},
         "tracker.priorities[1].gpus"),
        ({"tracker": {"priorities": [{"gpus": [2, 2], "priority": "critical"}]}},
         "tracker.priorities[0].gpus"),
        ({"planner": {"enabled": True}, "history": {"enabled": False}}, "planner.enabled"),
        ({"planner": {"enabled": True, "history_days": 60}}, "planner.history_days"),
        ({"tracker": {"period_s": 5, "commitment_ttl_s": 2}}, "tracker.commitment_ttl_s"),
        ({"auth": {"keys": [{"kid": "a", "file": "a.pem", "topics": ["dispatch"]}]}},
         "auth.keys"),
        ({"mqtt": {"prefix": "$SYS/gridtao"}}, "mqtt.prefix"),
        ({"mqtt": {"host": "mqtt://127.0.0.1"}}, "mqtt.host"),
        ({"safety": {"triggers": [{"hz": 49.7, "reduction_fraction": 0.3},
                                  {"hz": 49.5, "reduction_fraction": 0.1}]}},
         "safety.triggers[1].reduction_fraction"),
        ({"safety": {"triggers": [{"hz": 49.7, "reduction_fraction": 0.0}]}},
         "safety.triggers[0].reduction_fraction"),
        ({"site": {"id": "a/b"}}, "site.id"),
        ({"mqtt": {"node_id": "node 01"}}, "mqtt.node_id"),
        ({"planner": {"margin_quantile": 0.9, "margin_days": 30, "history_days": 28}},
         "planner.margin_days"),
        ({"gpus": {"backend": "sim"}, "work": {"sources": [
            {"name": "a", "url": "http://127.0.0.1:8000/metrics", "kind": "vllm", "gpus": [99]}]}},
         "work.sources[0].gpus[0]"),

        ({"site": {"nodes": ["node 01"]}}, "site.nodes[0]"),
        ({"site": {"nodes": ["n" * 200]}}, "site.nodes[0]"),
        ({"site": {"signing": {"kid": "s"}}}, "site.signing.mode"),
        ({"site": {"node_stale_s": 1.0, "status_period_s": 2.0}}, "site.node_stale_s"),
        ({"site": {"market": {"min_bids": [{"product": "ffr", "w": 1},
                                           {"product": "ffr", "w": 2}]}}},
         "site.market.min_bids[1].product"),
        ({"mqtt": {"host": "not a host!"}}, "mqtt.host"),
        ({"metrics": {"host": "not a host!"}}, "metrics.host"),
        ({"mqtt": {"prefix": "grid\u202etao"}}, "mqtt.prefix"),
        ({"products": [{"kind": "dr", "capacity_w": 300, "min_bid_w": 1000}]},
         "products[0].min_bid_w"),
        ({"gpus": {"sim": {"daily_shape": "custom", "daily_levels": [0.5] * 23}}},
         "gpus.sim.daily_levels"),
        ({"gpus": {"sim": {"daily_shape": "custom", "daily_levels": [0.5] * 23 + [1.5]}}},
         "gpus.sim.daily_levels[23]"),
        ({"gpus": {"sim": {"daily_levels": [0.5] * 24}}}, "gpus.sim.daily_levels"),
        ({"products": [{"kind": "dr", "capacity_w": 300, "bid_step_w": 500}]},
         "products[0].bid_step_w"),
    ],
)
def test_cross_key_rules(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^src: {re.escape(key)}: "):
        config_from_mapping(data, source="src")


@pytest.mark.parametrize("node_id", ["a+b", "a#", "site/node"])
def test_bad_node_id_names_node_id(node_id: str) -> None:
    with pytest.raises(ConfigError, match=r"^src: mqtt[.]node_id: "):
        config_from_mapping({"mqtt": {"node_id": node_id}}, source="src")


def test_the_kinds_catalog_names_every_configurable_product_kind() -> None:
    from typing import get_args

    from gridtao.config.grid import ProductKind
    from gridtao.config.kinds import KINDS, frequency_kinds, kind_for_test_name

    assert set(get_args(ProductKind)) == set(KINDS)
    assert "dr" not in frequency_kinds() and set(frequency_kinds()) == set(KINDS) - {"dr"}
    assert all(kind_for_test_name(k.test_name) is k for k in KINDS.values())
    assert all(k.test_name == k.name for k in KINDS.values())  # one name per kind
    assert {k.test_name for k in KINDS.values()} == {
        "ffr", "ercot-ffr", "fcr-d-up", "fcr-d-up-static", "fcr-n", "dr"}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.7"])
def test_unsigned_dispatch_from_a_loopback_broker_is_allowed(tmp_path: Path, host: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"mqtt: {{host: '{host}'}}\n")
    assert load_config(path).auth.mode == "none"


@pytest.mark.parametrize("host", ["10.0.0.5", "broker.example.net"])
def test_unsigned_dispatch_from_a_remote_broker_is_refused_unless_allowed(
    tmp_path: Path, host: str,
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"mqtt: {{host: {host}}}\n")
    with pytest.raises(ConfigError, match=r"auth\.mode: none with the broker at .*could cut"):
        load_config(path)
    path.write_text(f"mqtt: {{host: {host}}}\nauth: {{allow_unauthenticated: true}}\n")
    assert load_config(path).auth.allow_unauthenticated


def test_a_password_goes_in_clear_only_to_this_machine_or_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    remote = ("mqtt: {host: broker.example.net, username: n1, password_file: pw}\n"
              "auth: {allow_unauthenticated: true}\n")
    path.write_text(remote)
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: the password would go in "
                       r"clear to broker\.example\.net"):
        load_config(path)
    path.write_text(remote.replace("password_file: pw", "password_file: pw, "
                                   "allow_plaintext_password: true"))
    assert load_config(path).mqtt.allow_plaintext_password
    path.write_text("mqtt: {host: 127.0.0.1, username: n1, password_file: pw}\n")
    assert load_config(path).mqtt.password_file is not None  # loopback: never on a wire


@pytest.mark.parametrize(("content", "needle"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not UTF-8 text"),
    ("gpus: {backend: sim}\n".encode("utf-16"), "not UTF-8 text"),
    (b"mqtt:\n  port: " + b"1" + b"0" * 400 + b"\n", "mqtt.port: out of range (401 digits)"),
    (b"safety:\n  watchdog_timeout_s: 1" + b"0" * 400 + b"\n", "safety.watchdog_timeout_s"),
    (b"mqtt:\n  prefix: \"grid\\0tao\"\n", "mqtt.prefix: contains a NUL character"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    (b"mqtt:\n  node_id: " + b"n" * 70_000 + b"\n", "mqtt.node_id: longer than"),
    (b"mqtt:\n  node_id: " + b"n" * 200 + b"\n", "mqtt.node_id: must be printable and at most"),
])
def test_a_broken_file_is_one_clear_error(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert needle in str(exc.value) and str(path) in str(exc.value)


def test_an_empty_file_runs_on_the_defaults_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert dataclasses.replace(load_config(path), source="<defaults>") == Config()
    assert "is empty: running on the built-in defaults" in caplog.text


@pytest.mark.parametrize(("value", "shown"), [
    (True, "got true (YAML: true, yes, on)"), (None, "got null (YAML: null, ~, or nothing)")])
def test_a_yaml_boolean_or_null_where_a_word_is_expected_is_shown_as_yaml(
        value: object, shown: str) -> None:
    """``unawarded: yes`` is read as true by YAML: the error says so, not Python's True."""
    with pytest.raises(ConfigError, match=re.escape(shown)):
        config_from_mapping({"planner": {"unawarded": value}}, source="src")
