"""gridtao.security.auth and the guard's authentication: envelope, both algorithms, every rejection
reason, key files, config errors, and the ``gridtao sign`` / ``gridtao keygen`` commands.
Keys are generated in tmp_path at test time (never committed)."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from gridtao.cli import main as cli
from gridtao.config.agent import ConfigError, config_from_mapping, load_config
from gridtao.security import auth
from gridtao.security.bounds import DispatchBounds
from gridtao.security.guard import Guard
from gridtao.wire import messages as wire

NOW = 1_763_900_000.0
HMAC_SECRET = bytes(range(32))
ALGS: tuple[auth.Alg, ...] = ("ed25519", "hmac")


class Wall:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _keys(alg: auth.Alg) -> tuple[auth.SigningKey, auth.VerifyKey]:
    if alg == "hmac":
        return HMAC_SECRET, HMAC_SECRET
    private = Ed25519PrivateKey.generate()
    return private, private.public_key()


def _verifier(alg: auth.Alg, public: auth.VerifyKey, *, kid: str = "agg",
              topics: tuple[str, ...] = ("dispatch", "frequency")) -> auth.Verifier:
    return auth.Verifier(alg, {kid: (public, frozenset(topics))})


def _shed(event_id: str = "e1", **over: Any) -> dict[str, Any]:
    return {"id": event_id, "kind": "shed", "fraction": 0.3, "duration_s": 30,
            "issued_at": NOW} | over


def _decoded(payload: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(payload)
    return data


# ---------------------------------------------------------------- envelope


def test_canonical_bytes_sort_keys_compact_utf8_and_drop_sig() -> None:
    obj = {"z": 1, "a": "é", "sig": "x", "kid": "k", "m": 0.1}
    assert auth.canonical_bytes(obj) == '{"a":"é","kid":"k","m":0.1,"z":1}'.encode()


def test_signed_payload_is_v1_plus_kid_and_sig() -> None:
    private, _ = _keys("ed25519")
    signed = _decoded(auth.sign_payload(_shed(), private, "agg", "ed25519"))
    assert signed.pop("kid") == "agg"
    assert len(base64.b64decode(signed.pop("sig"), validate=True)) == 64
    assert signed == _shed()
    # A v1 parser reads the signed payload unchanged (unknown fields ignored).
    msg = wire.parse_dispatch(auth.sign_payload(_shed(), private, "agg", "ed25519"),
                              max_bytes=4096)
    assert msg == wire.ShedDispatch("e1", 0.3, 30.0, NOW)


@pytest.mark.parametrize("alg", ALGS)
def test_sign_then_verify_round_trip(alg: auth.Alg) -> None:
    private, public = _keys(alg)
    payload = auth.sign_payload(_shed(), private, "agg", alg)
    assert _verifier(alg, public).authenticate("dispatch", _decoded(payload)) == "agg"


def test_raw_ed25519_seed_signs_like_the_key_object() -> None:
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    # Ed25519 is deterministic: same key, same message, same signature.
    assert auth.sign_payload(_shed(), seed, "k", "ed25519") == auth.sign_payload(
        _shed(), private, "k", "ed25519")


def test_sign_payload_stamps_missing_times_only() -> None:
    private, _ = _keys("hmac")
    d = _decoded(auth.sign_payload({"id": "x", "kind": "release", "ref": "y"}, private, "k",
                                   "hmac", topic="dispatch", now=123.5))
    assert d["issued_at"] == 123.5
    f = _decoded(auth.sign_payload({"hz": 49.9}, private, "k", "hmac", topic="frequency",
                                   now=7.0))
    assert f["t"] == 7.0
    kept = _decoded(auth.sign_payload(_shed(issued_at=5.0), private, "k", "hmac",
                                      topic="dispatch", now=9.0))
    assert kept["issued_at"] == 5.0


def _tamper(payload: bytes, **over: Any) -> dict[str, Any]:
    return _decoded(payload) | over


@pytest.mark.parametrize("alg", ALGS)
def test_every_authentication_failure_has_its_reason(alg: auth.Alg) -> None:
    private, public = _keys(alg)
    other_private, _ = _keys("ed25519") if alg == "ed25519" else (b"\x07" * 32, None)
    good = auth.sign_payload(_shed(), private, "agg", alg)
    sig_len = 64 if alg == "ed25519" else 32
    cases: list[tuple[dict[str, Any], str, str]] = [
        (_shed(), auth.UNSIGNED, "'sig' is missing"),
        ({k: v for k, v in _decoded(good).items() if k != "kid"}, auth.UNKNOWN_KID, "'kid'"),
        (_tamper(good, kid="stranger"), auth.UNKNOWN_KID, "unknown key id 'stranger'"),
        (_tamper(good, sig=17), auth.BAD_SIGNATURE, "base64 string"),
        (_tamper(good, sig="not base64!"), auth.BAD_SIGNATURE, "not valid base64"),
        (_tamper(good, sig=base64.b64encode(b"\0" * 5).decode()), auth.BAD_SIGNATURE,
         f"must be {sig_len} bytes, got 5"),
        (_tamper(good, fraction=0.9), auth.BAD_SIGNATURE, "bad signature for key 'agg'"),
        (_tamper(good, issued_at=NOW + 1), auth.BAD_SIGNATURE, "bad signature"),
        (_tamper(good, extra="added"), auth.BAD_SIGNATURE, "bad signature"),
        (_decoded(auth.sign_payload(_shed(), other_private, "agg", alg)), auth.BAD_SIGNATURE,
         "bad signature"),
        (_tamper(good, junk=float("inf")), auth.BAD_SIGNATURE, "no canonical form"),
    ]
    verifier = _verifier(alg, public)
    for data, label, words in cases:
        with pytest.raises(auth.AuthRejected) as e:
            verifier.authenticate("dispatch", data)
        assert e.value.label == label, data
        assert words in e.value.reason, (e.value.reason, data)


def test_a_key_signs_only_for_its_topics() -> None:
    private, public = _keys("ed25519")
    verifier = _verifier("ed25519", public, kid="meter", topics=("frequency",))
    sample = _decoded(auth.sign_payload({"t": NOW, "hz": 49.9}, private, "meter", "ed25519"))
    assert verifier.authenticate("frequency", sample) == "meter"
    dispatch = _decoded(auth.sign_payload(_shed(), private, "meter", "ed25519"))
    with pytest.raises(auth.AuthRejected) as e:
        verifier.authenticate("dispatch", dispatch)
    assert e.value.label == auth.KID_NOT_ALLOWED


@pytest.mark.parametrize(
    ("stamp", "label"),
    [(None, auth.NO_TIMESTAMP), (float("nan"), auth.NO_TIMESTAMP), (NOW - 30.001, auth.STALE),
     (NOW + 2.001, auth.FUTURE)],
)
def test_freshness_window_edges(stamp: float | None, label: str) -> None:
    with pytest.raises(auth.AuthRejected) as e:
        auth.check_fresh(stamp, "issued_at", NOW, max_age_s=30.0, max_future_s=2.0)
    assert e.value.label == label
    assert "issued_at" in e.value.reason


def test_freshness_accepts_the_window_inclusive() -> None:
    for stamp in (NOW - 30.0, NOW, NOW + 2.0):
        auth.check_fresh(stamp, "t", NOW, max_age_s=30.0, max_future_s=2.0)


def test_frequency_samples_must_increase_per_key() -> None:
    order = auth.SampleOrder()
    order.check("m1", 10.0)
    order.accept("m1", 10.0)
    for t in (10.0, 9.5):
        with pytest.raises(auth.AuthRejected) as e:
            order.check("m1", t)
        assert e.value.label == auth.REPLAYED
    order.check("m2", 9.5)  # another meter has its own sequence
    order.check("m1", 10.01)


# ---------------------------------------------------------------- key files


def _write_ed25519(tmp: Path, name: str) -> tuple[Ed25519PrivateKey, Path, Path]:
    private = Ed25519PrivateKey.generate()
    key_path, pub_path = tmp / f"{name}.key", tmp / f"{name}.pub"
    key_path.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pub_path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, key_path, pub_path


def test_key_files_pem_and_raw_base64(tmp_path: Path) -> None:
    private, key_path, pub_path = _write_ed25519(tmp_path, "a")
    raw_pub = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
    (tmp_path / "raw.pub").write_text(base64.b64encode(raw_pub).decode() + "\n")
    signed = _decoded(auth.sign_payload(_shed(), auth.load_signing_key(key_path, "ed25519"),
                                        "a", "ed25519"))
    for path in (pub_path, tmp_path / "raw.pub"):
        public = auth.load_verify_key(path, "ed25519")
        assert _verifier("ed25519", public, kid="a").authenticate("dispatch", signed) == "a"


@pytest.mark.parametrize(
    ("content", "alg", "words"),
    [
        (b"", "hmac", "need at least 32"),
        (base64.b64encode(b"short"), "hmac", "HMAC secret is 5 bytes"),
        (b"%%%", "hmac", "not PEM and not base64"),
        (base64.b64encode(b"x" * 31), "ed25519", "must be 32 bytes, got 31"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "ed25519",
         "unreadable public key"),
        # An Ed25519 key file in HMAC mode (anyone holding a public key could then sign).
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "hmac",
         "holds a PEM key, not an HMAC secret"),
    ],
)
def test_bad_verify_key_files_say_which_file_and_why(
    tmp_path: Path, content: bytes, alg: auth.Alg, words: str
) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(auth.KeyFileError) as e:
        auth.load_verify_key(path, alg)
    assert str(path) in str(e.value) and words in str(e.value)


def test_private_key_is_refused_as_a_verify_key_and_vice_versa(tmp_path: Path) -> None:
    _, key_path, pub_path = _write_ed25519(tmp_path, "a")
    with pytest.raises(auth.KeyFileError, match="give the agent the public key"):
        auth.load_verify_key(key_path, "ed25519")
    with pytest.raises(auth.KeyFileError, match="not a private key"):
        auth.load_signing_key(pub_path, "ed25519")


def _auth_cfg(mode: str, keys: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    return {"auth": {"mode": mode, "keys": keys, **over}}


def test_missing_key_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "agg.pub"
    cfg = config_from_mapping(_auth_cfg("ed25519", [{"kid": "agg", "file": str(missing)}]),
                              source="site.yaml")
    with pytest.raises(ConfigError) as e:
        auth.Verifier.from_config(cfg.auth, source=cfg.source)
    msg = str(e.value)
    assert msg.startswith("site.yaml: auth.keys[0].file (kid 'agg'): ")
    assert str(missing) in msg and "not found" in msg


def test_relative_key_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "site.hmac").write_text(base64.b64encode(HMAC_SECRET).decode())
    (tmp_path / "keys" / "site.hmac").chmod(0o600)
    cfg_path = tmp_path / "agent.yaml"
    cfg_path.write_text("auth:\n  mode: hmac\n  keys:\n    - {kid: s, file: keys/site.hmac}\n")
    cfg = load_config(cfg_path)
    verifier = auth.Verifier.from_config(cfg.auth, source=cfg.source)
    assert verifier is not None and verifier.alg == "hmac"
    signed = _decoded(auth.sign_payload(_shed(), HMAC_SECRET, "s", "hmac"))
    assert verifier.authenticate("dispatch", signed) == "s"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_auth_cfg("ed25519", []), "auth.keys: at least one key is required"),
        (_auth_cfg("hmac", [{"kid": "a", "file": "x"}, {"kid": "a", "file": "y"}]),
         "auth.keys[1].kid: duplicate key id 'a'"),
        (_auth_cfg("hmac", [{"file": "x"}]), "auth.keys[0].kid: required key is missing"),
        (_auth_cfg("hmac", [{"kid": "a", "file": "x", "topics": []}]),
         "auth.keys[0].topics: must name at least one topic"),
        (_auth_cfg("rsa", []), "auth.mode: must be one of"),
        (_auth_cfg("hmac", [{"kid": "a", "file": "x"}], freshness_s=0),
         "auth.freshness_s: must be >= 0.1"),
    ],
)
def test_auth_config_errors(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        config_from_mapping(data, source="c.yaml")
    assert words in str(e.value)


def test_auth_is_off_by_default() -> None:
    cfg = config_from_mapping({})
    assert cfg.auth.mode == "none" and auth.Verifier.from_config(cfg.auth, source="x") is None


# ---------------------------------------------------------------- the guard (auth part)


def _guard(tmp_path: Path, alg: auth.Alg, public: auth.VerifyKey, wall: Wall,
           registry: CollectorRegistry, **auth_over: Any) -> Guard:
    cfg = config_from_mapping({"auth": {"mode": alg, "keys": [{"kid": "agg", "file": "unused"}],
                                        **auth_over}})
    bounds = DispatchBounds(cfg.limits, default_total_mw=2_800_000.0,
                            draw_total_mw=lambda: 2_400_000.0)
    guard = Guard(cfg, verifier=_verifier(alg, public), bounds=bounds, wall=wall,
                  replay_path=tmp_path / "replay.jsonl", registry=registry)
    guard.open()
    return guard


@pytest.mark.parametrize("alg", ALGS)
def test_the_guard_says_what_a_dispatch_must_carry(tmp_path: Path, alg: auth.Alg) -> None:
    """For the node status's ``auth``: the mode and who may sign a dispatch."""
    _private, public = _keys(alg)
    guard = _guard(tmp_path, alg, public, Wall(), CollectorRegistry())
    try:
        assert guard.requirements() == {"mode": alg, "dispatch_kids": ["agg"]}
    finally:
        guard.close()


def _failures(registry: CollectorRegistry, topic: str, label: str) -> float:
    return registry.get_sample_value(
        "gridtao_auth_failures_total", {"topic": topic, "reason": label}) or 0.0


@pytest.mark.parametrize("alg", ALGS)
def test_guard_refuses_stale_future_and_replayed_dispatches(
    tmp_path: Path, alg: auth.Alg
) -> None:
    private, public = _keys(alg)
    wall, registry = Wall(), CollectorRegistry()
    guard = _guard(tmp_path, alg, public, wall, registry)
    try:
        def admit(**over: Any) -> str | None:
            payload = auth.sign_payload(_shed(**over), private, "agg", alg)
            assert guard.authenticate_dispatch(payload) is None
            msg = wire.parse_dispatch(payload, max_bytes=4096)
            verdict = guard.admit_dispatch(msg, now_s=100.0, in_flight=0)
            guard.after_dispatch()
            return verdict.reason

        assert admit(id="ok") is None
        assert "replayed: event id 'ok'" in str(admit(id="ok"))
        assert "stale" in str(admit(id="old", issued_at=NOW - 31))
        assert "future-dated" in str(admit(id="ahead", issued_at=NOW + 3))
        assert "needs a numeric 'issued_at'" in str(admit(id="nostamp", issued_at=None))
        for label in (auth.REPLAYED, auth.STALE, auth.FUTURE, auth.NO_TIMESTAMP):
            assert _failures(registry, "dispatch", label) == 1, label
        unsigned = json.dumps(_shed(id="u")).encode()
        assert guard.authenticate_dispatch(unsigned) == "auth: unsigned: field 'sig' is missing"
        assert _failures(registry, "dispatch", auth.UNSIGNED) == 1
    finally:
        guard.close()


def test_guard_frequency_signed_fresh_and_increasing(tmp_path: Path) -> None:
    private, public = _keys("ed25519")
    wall, registry = Wall(), CollectorRegistry()
    guard = _guard(tmp_path, "ed25519", public, wall, registry)
    try:
        def check(t: float, *, signed: bool = True) -> str | None:
            body = {"t": t, "hz": 49.9}
            payload = (auth.sign_payload(body, private, "agg", "ed25519") if signed
                       else json.dumps(body).encode())
            return guard.check_frequency(payload, t)

        assert check(NOW - 0.5) is None
        assert check(NOW - 0.2) is None
        assert "replayed or reordered" in str(check(NOW - 0.3))
        assert "stale" in str(check(NOW - 2.5))
        assert "future-dated" in str(check(NOW + 2.5))
        assert "unsigned" in str(check(NOW, signed=False))
        for label in (auth.REPLAYED, auth.STALE, auth.FUTURE, auth.UNSIGNED):
            assert _failures(registry, "frequency", label) == 1, label
    finally:
        guard.close()


def test_unsigned_frequency_may_be_allowed_but_signed_ones_are_still_checked(
    tmp_path: Path,
) -> None:
    private, public = _keys("hmac")
    guard = _guard(tmp_path, "hmac", public, Wall(), CollectorRegistry(),
                   require_signed_frequency=False)
    try:
        assert guard.check_frequency(json.dumps({"t": 1.0, "hz": 49.9}).encode(), 1.0) is None
        forged = _decoded(auth.sign_payload({"t": NOW, "hz": 49.9}, private, "agg", "hmac"))
        forged["hz"] = 49.0
        problem = guard.check_frequency(json.dumps(forged).encode(), NOW)
        assert problem is not None and "bad signature" in problem
    finally:
        guard.close()


# ---------------------------------------------------------------- CLI


def test_keygen_writes_private_0600_and_public_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "agg"
    assert cli.main(["keygen", "--out", str(prefix)]) == 0
    key, pub = tmp_path / "agg.key", tmp_path / "agg.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert isinstance(auth.load_signing_key(key, "ed25519"), Ed25519PrivateKey)
    auth.load_verify_key(pub, "ed25519")
    before = key.read_bytes()
    assert cli.main(["keygen", "--out", str(prefix)]) == 2
    assert "exists; not overwriting" in capsys.readouterr().err
    assert key.read_bytes() == before
    assert cli.main(["keygen", "--alg", "hmac", "--out", str(prefix)]) == 0
    secret = tmp_path / "agg.hmac"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(auth.load_verify_key(secret, "hmac")) == 32  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", ALGS)
def test_sign_command_output_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    alg: auth.Alg,
) -> None:
    assert cli.main(["keygen", "--alg", alg, "--out", str(tmp_path / "k")]) == 0
    key = tmp_path / ("k.key" if alg == "ed25519" else "k.hmac")
    public = auth.load_verify_key(tmp_path / ("k.pub" if alg == "ed25519" else "k.hmac"), alg)
    capsys.readouterr()
    body = {"id": "cli-1", "kind": "cap", "node_w": 1500, "duration_s": 60}
    assert cli.main(["sign", "--key", str(key), "--kid", "agg", "--alg", alg,
                     json.dumps(body)]) == 0
    signed = json.loads(capsys.readouterr().out)
    assert _verifier(alg, public).authenticate("dispatch", signed) == "agg"
    assert abs(signed["issued_at"] - time.time()) < 60
    monkeypatch.setattr("sys.stdin", io.StringIO('{"hz": 49.9}'))
    assert cli.main(["sign", "--key", str(key), "--kid", "m", "--alg", alg,
                     "--topic", "frequency", "-"]) == 0
    sample = json.loads(capsys.readouterr().out)
    assert "t" in sample and _verifier(alg, public, kid="m").authenticate("frequency", sample)
    # Without --alg the key file keygen made says which (a .hmac secret signs as HMAC).
    assert cli.main(["sign", "--key", str(key), "--kid", "agg", json.dumps(body)]) == 0
    unsaid = json.loads(capsys.readouterr().out)
    assert _verifier(alg, public).authenticate("dispatch", unsaid) == "agg"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["sign", "--key", "/nonexistent/k", "--kid", "a", "{}"], "key file '/nonexistent/k'"),
        (["sign", "--key", "KEY", "--kid", "a", "{bad"], "payload: bad JSON"),
        (["sign", "--key", "KEY", "--kid", "a", "[1]"], "must be a JSON object"),
    ],
)
def test_sign_command_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    key = tmp_path / "k.key"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    argv = [str(key) if a == "KEY" else a for a in argv]
    assert cli.main(argv) == 2
    assert words in capsys.readouterr().err


def test_an_hmac_secret_its_group_may_read_is_warned_about_and_one_anyone_may_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Whoever reads the secret can sign: a file every local user may read is refused, as the
    # broker password file is (an Ed25519 public key given by mistake is usually such a file).
    path = tmp_path / "s.hmac"
    path.write_text(base64.b64encode(HMAC_SECRET).decode())
    os.chmod(path, 0o640)
    with caplog.at_level("WARNING", logger="gridtao.auth"):
        auth.load_verify_key(path, "hmac")
    assert "accessible to group/others" in caplog.text
    os.chmod(path, 0o644)
    for load in (auth.load_verify_key, auth.load_signing_key):
        with pytest.raises(auth.KeyFileError, match=r"every user may read or write \(mode 644\)"):
            load(path, "hmac")
