"""``gridtao check-config`` and ``check-broker`` on the site coordinator's file: what
``gridtao site`` needs, nothing of the agent's; and the site's other command-line checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, free_port

from gridtao.cli import main as cli

PREFIX = "gridtao/site-a"
SITE_USER, SITE_PW = "site-coordinator", "site-pw-1"
PASSWD_BIN = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "site.yaml"


def _write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _site_text(port: int, *, signing: str = "{mode: none}", extra: str = "") -> str:
    return (f"mqtt: {{host: 127.0.0.1, port: {port}, prefix: {PREFIX}}}\n"
            "metrics: {enabled: false}\n"
            "facility: {losses_fraction: 0.05, cop: 4.0, fixed_w: 20000}\n"
            f"site: {{id: site-a, nodes: [n1, n2], signing: {signing}, "
            "meter: {feedback: false, stale_s: 12}}\n" + extra)


def _hmac_key(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> Path:
    assert cli.main(["keygen", "--alg", "hmac", "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    return tmp_path / f"{name}.hmac"


def test_a_site_file_is_summarised_for_the_site_not_as_a_node(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, unwritable: Callable[[Path], None]) -> None:
    """The site's host has no GPUs and keeps none of the agent's records: a state folder the
    agent could not write is no reason to refuse the site's file, and the summary says what
    the site is set up to do (no node id, GPUs or products)."""
    state = tmp_path / "state"
    state.mkdir()
    unwritable(state)
    key = _hmac_key(tmp_path, "site", capsys)
    path = _write(tmp_path, _site_text(18830, signing=f"{{mode: hmac, kid: s1, file: {key}}}"))
    assert cli.main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {path} (for gridtao site)\n"), out
    assert (f"site      site-a, under {PREFIX}/ (dispatches on {PREFIX}/site/dispatch, status "
            f"on {PREFIX}/site/status)\n") in out
    assert "broker    127.0.0.1:18830, TLS off\n" in out
    assert "nodes     2 expected (n1, n2; others taken in as they appear)\n" in out
    assert "dispatch  site dispatches and awards: unsigned (auth.mode none)\n" in out
    assert "orders    node orders and awards signed as 's1' (hmac)" in out
    assert (f"meter     {PREFIX}/meter, feedback off (the facility model alone), readings "
            "stale after 12 s\n") in out
    assert "facility  losses 5.0%, COP 4, fixed 20000 W\n" in out
    assert "metrics   off\n" in out
    pooled = _write(tmp_path, _site_text(18830, signing=f"{{mode: hmac, kid: s1, file: {key}}}")
                    .replace("meter: {", "market: {pooling_correlation: 0.2, resplit_s: 0}, "
                             "meter: {"))
    assert cli.main(["--config", str(pooled), "check-config"]) == 0
    assert ("pooling   correlation 0.2 claimed (bids raised by the pooling gain); the award in "
            "force moved to where the room is never\n") in capsys.readouterr().out
    for agent_only in ("node      ", "gpus      ", "products  ", "cuts      ", "records   "):
        assert agent_only not in out
    assert list(state.iterdir()) == []


def test_the_site_example_is_checked_for_the_site(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", str(EXAMPLE), "check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {EXAMPLE} (for gridtao site)\n")
    assert "market    bids in steps of 100000 W, minimum 100000 W, fcr-d-up 1000000 W" in out
    assert ("pooling   correlation 1: none claimed; the award in force moved to where the room "
            "is every 10 s\n") in out


def test_site_and_agent_options_choose_whose_needs_are_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file with the agent's own sections is a node's unless --site says otherwise; a site
    file is checked as a node's with --agent."""
    both = _write(tmp_path, "gpus: {backend: sim, sim: {device: null}}\n"
                            + _site_text(18830), "both.yaml")
    assert cli.main(["--config", str(both), "check-config"]) == 0
    assert "gpus      backend sim" in capsys.readouterr().out
    assert cli.main(["--config", str(both), "check-config", "--site"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {both} (for gridtao site)\n") and "gpus " not in out
    site = _write(tmp_path, _site_text(18830))
    assert cli.main(["--config", str(site), "check-config", "--agent"]) == 0
    assert "node      " in capsys.readouterr().out


@pytest.mark.parametrize(("signing", "extra", "needle"), [
    ("{mode: hmac, kid: s2, file: KEY, previous: [{kid: s1, file: gone.hmac}]}", "",
     "site.signing.previous[0].file: key file"),
    ("{mode: ed25519, kid: s1, file: missing.pem}", "", "site.signing.file: key file"),
    ("{mode: none}", "auth: {mode: hmac, keys: [{kid: agg, file: nope.hmac, "
     "topics: [dispatch]}]}\n", "auth.keys[0].file (kid 'agg')"),
    ("{mode: none}", "mqtt: {host: 127.0.0.1, tls: {enabled: true, ca_file: no-ca.pem}}\n",
     "mqtt.tls.ca_file"),
])
def test_a_bad_site_file_is_one_line_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], signing: str, extra: str,
        needle: str) -> None:
    """Every file `gridtao site` reads at start, its old keys' too (it reads them to take back
    the record they signed), is read by the check: exit 2 with one line, never a traceback."""
    key = _hmac_key(tmp_path, "s2", capsys)
    text = _site_text(18830, signing=signing.replace("KEY", str(key)))
    if extra.startswith("mqtt:"):
        text = text.replace(f"mqtt: {{host: 127.0.0.1, port: 18830, prefix: {PREFIX}}}\n", "")
    path = _write(tmp_path, text + extra)
    for role in ([], ["--site"]):
        assert cli.main(["--config", str(path), "check-config", *role]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, captured.err
        assert captured.err.startswith(f"gridtao: error: {path}: ")
        assert needle in captured.err, captured.err


def test_the_agents_check_reads_the_sites_previous_keys_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file serving both: `gridtao site` would refuse to start on a missing old key."""
    key = _hmac_key(tmp_path, "s2", capsys)
    path = _write(tmp_path, "gpus: {backend: sim, sim: {device: null}}\n" + _site_text(
        18830, signing=f"{{mode: hmac, kid: s2, file: {key}, previous: [{{kid: s1, "
                       "file: gone.hmac}]}"))
    assert cli.main(["--config", str(path), "check-config"]) == 2
    assert "site.signing.previous[0].file: key file" in capsys.readouterr().err


@pytest.fixture
def site_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Mosquitto with a password file: the site coordinator's user only."""
    passwd = tmp_path / "mosquitto.passwd"
    subprocess.run([PASSWD_BIN, "-b", "-c", str(passwd), SITE_USER, SITE_PW], check=True,
                   capture_output=True)
    broker = MosquittoBroker(tmp_path / "mosquitto", anonymous=False,
                             extra_conf=[f"password_file {passwd}"])
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_check_broker_subscribes_as_the_site_coordinator(
        tmp_path: Path, site_broker: MosquittoBroker,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The site's subscriptions, not a node's dispatch and frequency topics, and the topics
    it publishes to named for the ACL; a wrong password is one line, exit 2."""
    for name, password, status in (("good", SITE_PW, 0), ("bad", "nope", 2)):
        (tmp_path / f"{name}.password").write_text(password + "\n")
        (tmp_path / f"{name}.password").chmod(0o600)
        path = _write(tmp_path, _site_text(site_broker.port).replace(
            "prefix: ", f"username: {SITE_USER}, password_file: {name}.password, prefix: "),
            f"{name}.yaml")
        assert cli.main(["--config", str(path), "check-broker", "--timeout", "20"]) == status
        out, err = capsys.readouterr()
        if status:
            assert out == "" and err.strip() == (
                f"gridtao: error: broker 127.0.0.1:{site_broker.port} refused the credentials "
                "(not authorized): check mqtt.username / mqtt.password_file")
            continue
        assert out.startswith(f"ok: broker 127.0.0.1:{site_broker.port} accepted the "
                              f"connection (no TLS) as '{SITE_USER}' and granted the site "
                              "coordinator's subscriptions to "), out
        assert "a grant is no proof of read rights" in out
        subscribed, published = out.split("; it publishes to ")
        for topic in ("site/dispatch", "site/award", "dispatch", "meter", "nodes/+/ack",
                      "site/events", "nodes/+/status", "nodes/+/tracker", "nodes/+/plan"):
            assert f"{PREFIX}/{topic}" in subscribed, topic
        assert "frequency" not in out and f"{PREFIX}/nodes/+/dispatch" not in subscribed
        for topic in ("site/status", "site/ack", "site/plan", "site/events",
                      "nodes/+/dispatch", "nodes/+/award"):
            assert f"{PREFIX}/{topic}" in published, topic


def test_a_metrics_port_out_of_range_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, _site_text(free_port()))
    for port in ("70000", "-1"):
        assert cli.main(["--config", str(path), "site", "--metrics-port", port]) == 2
        captured = capsys.readouterr()
        assert captured.err == (f"gridtao: error: --metrics-port: must be between 0 and "
                                f"65535, got {port}\n"), captured.err


def test_a_meter_of_no_devices_is_refused(tmp_path: Path) -> None:
    """`--devices ,` names no device: the meter would publish the fixed load as measured."""
    path = _write(tmp_path, _site_text(free_port()))
    done = subprocess.run([sys.executable, "-m", "gridtao", "--config", str(path), "sim",
                           "meter", "--devices", ","], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "gridtao: error: --devices: name at least one simulated device\n"


def test_the_check_says_which_meter_readings_the_site_takes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unsigned under auth.mode none; in signed mode, signed by the keys for meter only (a
    dispatch key is not one, nor listed as one); with none such, a warning that every reading
    will be refused; site.meter.require_signed false takes unsigned ones too."""
    assert cli.main(["--config", str(_write(tmp_path, _site_text(18830))), "check-config"]) == 0
    assert ("readings  unsigned (auth.mode none): the broker's ACL alone guards them\n"
            in capsys.readouterr().out)
    for name in ("agg", "gw"):
        _hmac_key(tmp_path, name, capsys)
    keys = ("auth: {mode: hmac, keys: [{kid: agg, file: agg.hmac, topics: [dispatch]}"
            "KEYS]}\n")
    signed = _write(tmp_path, _site_text(18830, extra=keys.replace(
        "KEYS", ", {kid: gw, file: gw.hmac, topics: [meter]}")), "signed.yaml")
    assert cli.main(["--config", str(signed), "check-config"]) == 0
    out, err = capsys.readouterr()
    assert "dispatch  site dispatches and awards: hmac, keys agg\n" in out
    assert ("readings  must be signed by a key for meter: gw; t at most 12 s old and "
            "increasing per key\n") in out and err == ""
    unsignable = _write(tmp_path, _site_text(18830, extra=keys.replace("KEYS", "")),
                        "unsignable.yaml")
    assert cli.main(["--config", str(unsignable), "check-config"]) == 0
    out, err = capsys.readouterr()
    assert "must be signed by a key for meter: (none: every reading is refused)" in out
    assert err.startswith(f"gridtao: warning: {unsignable}: auth.keys: no key may sign the "
                          "meter topic"), err
    allowed = _write(tmp_path, _site_text(18830, extra=keys.replace("KEYS", "")).replace(
        "stale_s: 12", "stale_s: 12, require_signed: false"), "allowed.yaml")
    assert cli.main(["--config", str(allowed), "check-config"]) == 0
    out, err = capsys.readouterr()
    assert "readings  unsigned taken (site.meter.require_signed false)" in out and err == ""
