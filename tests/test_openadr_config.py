"""The bridge's configuration: the example file is valid, and every mistake is one line naming
the file, the key and the problem (exit 2 from the command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gridtao.cli.main import main
from gridtao.config.schema import ConfigError
from gridtao.openadr import bridge_config_from_mapping, load_bridge_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "configs" / "openadr.example.yaml"
VTN = {"url": "http://127.0.0.1:8080/OpenADR2/Simple/2.0b", "ven_name": "site-a"}


def test_the_example_is_valid_and_documents_the_defaults() -> None:
    config = load_bridge_config(str(EXAMPLE))
    assert config.report_resource_id == "hall-1"
    defaults = bridge_config_from_mapping({"vtn": VTN, "policy": {"resources": ["hall-1"]}},
                                          source=str(EXAMPLE))
    for section in ("vtn", "mqtt", "signing", "policy", "mapping", "dispatch", "reports",
                    "metrics", "audit"):
        assert getattr(config, section) == getattr(defaults, section), section


@pytest.mark.parametrize("data,message", [
    ({}, "<f>: vtn: required key is missing"),
    ({"vtn": {"url": VTN["url"]}}, "<f>: vtn.ven_name: required key is missing"),
    ({"vtn": VTN, "polcy": {}}, "<f>: polcy: unknown key (known keys: vtn, mqtt,"),
    ({"vtn": {**VTN, "retry_min_s": 10, "retry_max_s": 1}},
     "<f>: vtn.retry_min_s: must be <= vtn.retry_max_s"),
    ({"vtn": {**VTN, "cert_file": "ven.crt"}},
     "<f>: vtn.key_file: vtn.cert_file and vtn.key_file go together"),
    ({"vtn": {**VTN, "cert_file": "a", "key_file": "b"}},
     "<f>: vtn.url: a client certificate (vtn.cert_file) needs an https:// URL"),
    ({"vtn": VTN, "mapping": {"simple_levels": [{"level": 4, "fraction": 0.1}]}},
     "<f>: mapping.simple_levels[0].level: must be <= 3, got 4"),
    ({"vtn": VTN, "mapping": {"simple_levels": [{"level": 1}]}},
     "<f>: mapping.simple_levels[0]: give exactly one of fraction or reduction_w"),
    ({"vtn": VTN, "mapping": {"simple_levels": [{"level": 1, "fraction": 0.9}]}},
     "<f>: mapping.simple_levels[0].fraction: must be in (0, policy.max_fraction 0.8]"),
    ({"vtn": VTN, "mapping": {"simple_levels": [{"level": 1, "fraction": 0.1},
                                                {"level": 1, "fraction": 0.2}]}},
     "<f>: mapping.simple_levels[0].level: level 1 is given twice"),
    ({"vtn": VTN, "mqtt": {"host": "10.0.0.5"}},
     "<f>: signing.mode: none with the broker at 10.0.0.5"),
    ({"vtn": VTN, "signing": {"mode": "ed25519", "key_file": "k"}},
     "<f>: signing.kid: required when signing.mode is 'ed25519'"),
    ({"vtn": VTN, "dispatch": {"id_prefix": "a/b"}}, "<f>: dispatch.id_prefix: must be"),
    ({"vtn": {**VTN, "client_id": "site-a"}},
     "<f>: vtn.client_id: only for vtn.protocol 3.0.1"),
    ({"vtn": {**VTN, "protocol": "3.0.1", "client_id": "site-a"}},
     "<f>: vtn.client_secret_file: vtn.client_id and vtn.client_secret_file go together"),
    ({"vtn": {**VTN, "protocol": "3"}}, "<f>: vtn.protocol: must be one of '2.0b', '3.0.1'"),
    ({"vtn": VTN, "policy": {"max_duration_s": 0}},
     "<f>: policy.max_duration_s: must be >= 1, got 0"),
    ({"vtn": {**VTN, "url": "http://vtn.example:70000/OpenADR2"}},
     "<f>: vtn.url: 'http://vtn.example:70000/OpenADR2' has no valid port"),
    ({"vtn": {**VTN, "protocol": "3.0.1", "token_url": "nope"}},
     "<f>: vtn.token_url: must be an http:// or https:// URL"),
    ({"vtn": {**VTN, "vtn_fingerprint": "zz"}}, "<f>: vtn.vtn_fingerprint: must be hex"),
    ({"vtn": VTN, "mqtt": {"tls": {"ca_file": "ca.pem"}}},
     "<f>: mqtt.tls.ca_file: set but mqtt.tls.enabled is false"),
    # The agent's rule for its mqtt section holds for the bridge's too.
    ({"vtn": VTN, "mqtt": {"host": "broker.example.net", "username": "b",
                           "password_file": "pw"}},
     "<f>: mqtt.password_file: the password would go in clear to broker.example.net"),
    ({"vtn": VTN, "signing": {"key_file": "k"}},
     "<f>: signing.mode: none, but a signing kid or key_file is set"),
])
def test_mistakes_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        bridge_config_from_mapping(data, source="<f>")
    assert str(caught.value).startswith(message), str(caught.value)


def test_relative_paths_are_taken_from_the_files_folder(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({"vtn": VTN, "audit": {"path": "trail.jsonl"},
                                    "signing": {"mode": "hmac", "kid": "a",
                                                "key_file": "keys/a.hmac"}}))
    config = load_bridge_config(str(path))
    assert config.audit.path == str(tmp_path / "trail.jsonl")
    assert config.signing.key_file == str(tmp_path / "keys" / "a.hmac")


def test_check_validates_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["openadr", "--config", str(EXAMPLE), "--check"]) == 0
    assert "OK (VEN 'site-a'" in capsys.readouterr().out


def test_check_refuses_a_missing_key_file(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({"vtn": VTN, "signing": {
        "mode": "ed25519", "kid": "agg", "key_file": "nope.key"}}))
    assert main(["openadr", "--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gridtao: error: {path}: signing.key_file: key file ")
    assert "not found" in err and "\n" not in err


def test_invalid_yaml_says_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("vtn: [unclosed\n")
    assert main(["openadr", "--config", str(path)]) == 2
    assert f"gridtao: error: {path} (line 2, column 1): invalid YAML" in capsys.readouterr().err


def test_without_openleadr_the_2_0b_bridge_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from gridtao.errors import GridtaoError
    from gridtao.openadr import Bridge

    monkeypatch.setitem(sys.modules, "openleadr", None)  # import openleadr -> ImportError
    import gridtao.openadr

    monkeypatch.delitem(sys.modules, "gridtao.openadr._ven", raising=False)
    monkeypatch.delattr(gridtao.openadr, "_ven", raising=False)
    with pytest.raises(GridtaoError, match=r"pip install 'gridtao\[openadr\]'"):
        Bridge(load_bridge_config(str(EXAMPLE))).check()


@pytest.mark.parametrize("make,needle", [
    (lambda d: d, "vtn.client_secret_file: {d}: cannot read: is a folder"),
    (lambda d: d / "missing", "vtn.client_secret_file: {d}/missing: cannot read"),
])
def test_check_reads_an_openadr3_client_secret(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, needle: str) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({"vtn": {**VTN, "protocol": "3.0.1", "client_id": "site-a",
                                            "client_secret_file": str(make(tmp_path))}}))
    assert main(["openadr", "--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle.format(d=tmp_path) in err and "\n" not in err, err


def test_check_refuses_an_audit_path_that_is_a_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({"vtn": VTN, "audit": {"path": str(tmp_path)}}))
    assert main(["openadr", "--config", str(path), "--check"]) == 2
    assert f"audit.path: {tmp_path} is not a file" in capsys.readouterr().err
