"""Authenticated transport against a real Mosquitto: TLS, passwords, client certificates, ACLs.

Certificates are made at test time in a temporary folder (tests/pki.py), the password file with
``mosquitto_passwd``. Every failure the operator can cause must end in one line naming the cause
and the key to check, never a traceback. Waits are generous; nothing asserts wall-clock speed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from broker import MosquittoBroker
from paho.mqtt.enums import CallbackAPIVersion
from pki import Ca, Issued, make_ca
from waiting import wait_until

from gridtao.app.agent import Agent, AgentOptions
from gridtao.cli.broker import check_broker
from gridtao.cli.main import main as cli_main
from gridtao.clock import MonotonicClock
from gridtao.config.agent import Config, ConfigError, config_from_mapping
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.transport.diagnose import AttemptLog, Diagnosis, PahoTap, _enter
from gridtao.transport.mqtt import MqttLink, new_event_loop
from gridtao.transport.receiver import MqttReceiver
from gridtao.transport.tls import read_password, ssl_context

PREFIX = "gridtao/tls"
NODE = "node-01"  # also its MQTT user name and its client certificate's CN
WAIT_S = 20.0
USERS = {NODE: "agent-pw-1", "aggregator": "agg-pw-2", "mallory": "mal-pw-3"}
# docs/security.md's ACL: every user (a node, or mallory: a compromised node) reads the grid's
# topics and writes only its own; only the aggregator may dispatch.
ACL = f"""\
pattern read {PREFIX}/dispatch
pattern read {PREFIX}/frequency
pattern read {PREFIX}/nodes/%u/dispatch
pattern write {PREFIX}/nodes/%u/ack
pattern write {PREFIX}/nodes/%u/status
pattern write {PREFIX}/nodes/%u/tracker
pattern write {PREFIX}/nodes/%u/plan

user aggregator
topic write {PREFIX}/dispatch
topic write {PREFIX}/frequency
topic read {PREFIX}/nodes/+/#
"""
PASSWD_BIN = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


@dataclass(frozen=True)
class Pki:
    ca: Ca
    server: Issued
    expired_server: Issued
    client: Issued  # CN=NODE
    expired_client: Issued
    other_ca: Ca  # trusted by nobody
    passwd: Path  # mosquitto's password file for USERS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder / "ca")
    passwd = folder / "mosquitto.passwd"
    for k, (user, pw) in enumerate(USERS.items()):
        flags = ["-b", "-c"] if k == 0 else ["-b"]
        subprocess.run([PASSWD_BIN, *flags, str(passwd), user, pw], check=True,
                       capture_output=True)
    return Pki(
        ca=ca,
        server=ca.server(),
        expired_server=ca.server("expired-broker", days_valid=(-10, -1)),
        client=ca.client(NODE),
        expired_client=ca.client(f"{NODE}-expired", days_valid=(-10, -1)),
        other_ca=make_ca(folder / "other", "other-ca"),
        passwd=passwd,
    )


@contextmanager
def tls_broker(
    tmp: Path, pki: Pki, *, server: Issued | None = None, client_certs: bool = False,
    acl: bool = False, passwd: Path | None = None,
) -> Iterator[MosquittoBroker]:
    """A broker with a TLS listener only: passwords (``passwd``, default the module's) or
    required client certificates whose CN is the user name; optionally the ACL above."""
    cert = server or pki.server
    listener = [f"cafile {pki.ca.cert_path}", f"certfile {cert.cert}", f"keyfile {cert.key}"]
    if client_certs:
        listener += ["require_certificate true", "use_identity_as_username true"]
    extra = [] if client_certs else [f"password_file {passwd or pki.passwd}"]
    if acl:
        (tmp / "acl").write_text(ACL, encoding="utf-8")
        extra.append(f"acl_file {tmp / 'acl'}")
    broker = MosquittoBroker(tmp / "mosquitto", anonymous=False, listener_conf=listener,
                             extra_conf=extra)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def secret(tmp: Path, text: str, name: str = "mqtt.password") -> Path:
    path = tmp / name
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def mqtt_config(broker: MosquittoBroker, **over: Any) -> dict[str, Any]:
    tls = {"enabled": True}
    tls.update(over.pop("tls", {}))
    cfg: dict[str, Any] = {
        "host": broker.host, "port": broker.port, "prefix": PREFIX, "node_id": NODE,
        "keepalive_s": 5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "tls": tls,
    }
    cfg.update(over)
    return cfg


def config(broker: MosquittoBroker, **over: Any) -> Config:
    data: dict[str, Any] = {"mqtt": mqtt_config(broker, **over), "metrics": {"enabled": False}}
    return config_from_mapping(data, source="<test>")


def check(cfg: Config, timeout_s: float = WAIT_S) -> tuple[bool, str]:
    loop = new_event_loop()
    try:
        return loop.run_until_complete(check_broker(cfg, timeout_s=timeout_s))
    finally:
        loop.close()


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    wait_until(cond, what, timeout_s=timeout_s)


class Peer:
    """A paho client over TLS with a user name: the aggregator, or an intruder."""

    def __init__(self, broker: MosquittoBroker, pki: Pki, user: str) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                   client_id=f"{user}-{uuid.uuid4().hex[:8]}")
        self._client.tls_set_context(ssl.create_default_context(cafile=str(pki.ca.cert_path)))
        self._client.username_pw_set(user, USERS[user])
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.connect(broker.host, broker.port, keepalive=10)
        self._client.loop_start()
        wait_for(self._client.is_connected, f"{user} to connect")

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def subscribe(self, topic: str) -> None:
        self._client.subscribe(topic, qos=1)
        assert self._subscribed.wait(WAIT_S), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        info = self._client.publish(topic, json.dumps(payload).encode(), qos=1)
        info.wait_for_publish(WAIT_S)
        assert info.is_published()

    def wait(self, n: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT_S
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"wanted {n} messages, got {[m.payload for m in self.messages]}"
                self._cond.wait(left)
            return [json.loads(m.payload) for m in self.messages]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextmanager
def running_agent(cfg: Config) -> Iterator[Agent]:
    clock = MonotonicClock()
    sim = SimNvml.from_config(cfg.gpus.sim, clock)
    agent = Agent(cfg, clock=clock, backend=NvmlBackend(sim),
                  options=AgentOptions(serve_metrics=False, connect_timeout_s=WAIT_S))
    try:
        agent.start()
        yield agent
    finally:
        agent.close()


def _shed(event_id: str) -> dict[str, object]:
    return {"id": event_id, "kind": "shed", "fraction": 0.3, "duration_s": 60.0,
            "issued_at": time.time()}


# ---------------------------------------------------------------- it works


def test_tls_password_and_acl_dispatch_to_ack_end_to_end(tmp_path: Path, pki: Pki) -> None:
    """An authorised aggregator's dispatch is acked over TLS + password; an intruder with valid
    credentials but no ACL right to dispatch never reaches the agent."""
    with tls_broker(tmp_path, pki, acl=True) as broker:
        pw = secret(tmp_path, USERS[NODE])
        cfg = config_from_mapping({
            "gpus": {"sim": {"count": 2, "noise_w": 0.0}},
            "mqtt": mqtt_config(broker, username=NODE, password_file=str(pw),
                                tls={"ca_file": str(pki.ca.cert_path)}),
            "metrics": {"enabled": False},
        }, source="<test>")
        with running_agent(cfg) as agent:
            assert agent.lane.is_connected
            aggregator = Peer(broker, pki, "aggregator")
            mallory = Peer(broker, pki, "mallory")
            try:
                aggregator.subscribe(agent.topics.ack)
                mallory.publish(agent.topics.dispatch, _shed("evil"))  # PUBACKed, then dropped
                aggregator.publish(agent.topics.dispatch, _shed("s1"))
                acks = aggregator.wait(2)  # accepted, then reached_at
            finally:
                aggregator.close()
                mallory.close()
            assert [a["id"] for a in acks] == ["s1", "s1"]
            assert acks[0]["accepted"] is True and acks[1]["reached_at"] is not None
            assert agent.island.view().event_id == "s1"
            assert agent.lane.dispatch_link.stats.received == 1  # "evil" never got to the agent
            assert all(link.stats.refused == 0 for link in agent.lane.links)


def test_client_certificate_auth_round_trip(tmp_path: Path, pki: Pki) -> None:
    """require_certificate + use_identity_as_username: the certificate is the credential; the
    broker is reached as 127.0.0.1 but verified as ``localhost`` (server_hostname)."""
    with tls_broker(tmp_path, pki, client_certs=True) as broker:
        cfg = config(broker, tls={"ca_file": str(pki.ca.cert_path), "cert_file":
                                  str(pki.client.cert), "key_file": str(pki.client.key),
                                  "server_hostname": "localhost", "min_version": "1.3"})
        ok, line = check(cfg)
        assert ok, line
        assert "over TLS" in line
        tls = ssl_context(cfg.mqtt, source=cfg.source)
        link = MqttLink(host=broker.host, port=broker.port, client_id="cert-link",
                        subscriptions=[("echo/#", 1)], tls=tls)

        async def main() -> bytes:
            task = asyncio.ensure_future(link.run())
            try:
                await asyncio.wait_for(link.connected.wait(), WAIT_S)
                await link.publish("echo/1", b"hello", qos=1)
                msg = await asyncio.wait_for(link.get(), WAIT_S)
                return msg.payload
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        loop = new_event_loop()
        try:
            assert loop.run_until_complete(main()) == b"hello"
        finally:
            loop.close()
        assert f"u'{NODE}'" in broker.log_text()  # the certificate's CN became the user name


def test_a_receiver_verifies_the_name_configured_not_the_address(tmp_path: Path,
                                                                   pki: Pki) -> None:
    """The documented set-up: the broker is reached by address, its certificate names only a
    DNS name, ``mqtt.tls.server_hostname`` gives that name. The island's receive-only
    connections (asyncio's TLS, not paho's) must verify it too, or the node never hears a
    dispatch or a frequency sample while its other connections are up."""
    named = pki.ca.issue("named-broker", server=True, dns=("broker.example.net",))
    with tls_broker(tmp_path, pki, server=named) as broker:
        pw = str(secret(tmp_path, USERS[NODE]))
        cfg = config(broker, username=NODE, password_file=pw,
                     tls={"ca_file": str(pki.ca.cert_path),
                          "server_hostname": "broker.example.net"})
        receiver = MqttReceiver(host=broker.host, port=broker.port, client_id="named-rx",
                                subscriptions=[("x/#", 1)], username=NODE, password=USERS[NODE],
                                tls=ssl_context(cfg.mqtt, source=cfg.source))

        async def main() -> None:
            task = asyncio.ensure_future(receiver.run())
            try:
                await asyncio.wait_for(receiver.connected.wait(), WAIT_S)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        loop = new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
    assert receiver.problem is None and receiver.stats.connects == 1


# ---------------------------------------------------------------- clear errors


def test_wrong_password_is_one_error_line_and_retrying_recovers(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    fixed = tmp_path / "fixed.passwd"
    shutil.copy(pki.passwd, fixed)
    with tls_broker(tmp_path, pki, passwd=fixed) as broker:
        wrong = config(broker, username=NODE, password_file=str(secret(tmp_path, "nope")),
                       tls={"ca_file": str(pki.ca.cert_path)})
        ok, line = check(wrong)
        assert not ok
        assert line == (f"broker 127.0.0.1:{broker.port} refused the credentials (not "
                        "authorized): check mqtt.username / mqtt.password_file")
        # The agent's link: one error line, no traceback, retries on with backoff ...
        link = MqttLink(host=broker.host, port=broker.port, client_id="wrong-pw",
                        reconnect_min_s=0.02, reconnect_max_s=0.1, username=NODE,
                        password="nope", tls=ssl_context(wrong.mqtt, source="<test>"),
                        error_log_interval_s=3600)

        async def main() -> None:
            task = asyncio.ensure_future(link.run())
            try:
                while link.stats.refused < 3:
                    await asyncio.sleep(0.02)
                # ... until the broker is fixed: it now accepts this password for the node.
                await asyncio.to_thread(subprocess.run, [PASSWD_BIN, "-b", str(fixed),
                                                         NODE, "nope"], check=True)
                await asyncio.to_thread(broker.restart)
                await asyncio.wait_for(link.connected.wait(), WAIT_S)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        loop = new_event_loop()
        with caplog.at_level(logging.DEBUG):
            try:
                loop.run_until_complete(asyncio.wait_for(main(), WAIT_S * 2))
            finally:
                loop.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(" (first attempt)")[0] for r in errors] == [line]
    assert not any(r.exc_info for r in caplog.records)
    assert any("after" in r.getMessage() and "refused attempt" in r.getMessage()
               for r in caplog.records)
    assert link.problem is None and link.stats.connects == 1


@pytest.mark.parametrize("case", ["unknown-ca", "expired", "hostname", "plain-port"])
def test_server_certificate_problems_are_named(tmp_path: Path, pki: Pki, case: str) -> None:
    server = pki.expired_server if case == "expired" else pki.server
    with tls_broker(tmp_path, pki, server=server) as broker:
        pw = str(secret(tmp_path, USERS[NODE]))
        tls: dict[str, Any] = {"ca_file": str(pki.ca.cert_path)}
        if case == "unknown-ca":
            tls["ca_file"] = str(pki.other_ca.cert_path)
        if case == "hostname":
            tls["server_hostname"] = "broker.example.net"
        cfg = config(broker, username=NODE, password_file=pw, tls=tls)
        if case == "plain-port":  # a TLS client at a listener that speaks plain MQTT
            plain = MosquittoBroker(tmp_path / "plain")
            plain.start()
            try:
                cfg = config(plain, username=NODE, password_file=pw, tls=tls)
                ok, line = check(cfg, timeout_s=5)
            finally:
                plain.stop()
        else:
            ok, line = check(cfg)
    assert not ok
    where = f"127.0.0.1:{cfg.mqtt.port}"
    expected = {
        "unknown-ca": f"TLS: broker {where}'s certificate is not signed by a trusted CA",
        "expired": f"TLS: broker {where} presented an expired certificate",
        "hostname": f"TLS: broker {where}'s certificate does not name 'broker.example.net'",
        "plain-port": f"TLS: no TLS handshake with broker {where}",
    }[case]
    assert line.startswith(expected), line
    hint = {"unknown-ca": "check mqtt.tls.ca_file", "expired": "renew the broker's certificate",
            "hostname": "mqtt.tls.server_hostname", "plain-port": "mqtt.port"}[case]
    assert hint in line


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_missing_client_certificate_is_named(
    tmp_path: Path, pki: Pki, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under TLS 1.3 the broker's refusal arrives as an alert after the handshake: the link must
    still name it (not time out with "Operation timed out"). Under 1.2 the handshake fails."""
    import gridtao.transport.check

    def capped(*args: Any, **kw: Any) -> ssl.SSLContext | None:
        ctx = ssl_context(*args, **kw)
        assert ctx is not None
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # mosquitto can only raise the minimum
        return ctx

    if version == "1.2":
        monkeypatch.setattr(gridtao.transport.check, "ssl_context", capped)
    with tls_broker(tmp_path, pki, client_certs=True) as broker:
        ok, line = check(config(broker, tls={"ca_file": str(pki.ca.cert_path)}))
    assert not ok
    assert line.startswith(f"TLS: broker 127.0.0.1:{broker.port} requires a client certificate")
    assert line.endswith("set mqtt.tls.cert_file and mqtt.tls.key_file")
    alert = "certificate required" if version == "1.3" else "handshake failure"
    assert f"{alert})" in line


def test_expired_or_foreign_client_certificate_is_named(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    foreign = pki.other_ca.client(f"{NODE}-foreign")
    with tls_broker(tmp_path, pki, client_certs=True) as broker:
        lines = []
        for cert in (pki.expired_client, foreign):
            cfg = config(broker, tls={"ca_file": str(pki.ca.cert_path),
                                      "cert_file": str(cert.cert), "key_file": str(cert.key)})
            with caplog.at_level(logging.ERROR, logger="gridtao.transport.tls"):
                ok, line = check(cfg)
            assert not ok
            lines.append(line)
    assert "refused our client certificate: it has expired" in lines[0]
    assert "renew mqtt.tls.cert_file" in lines[0]
    assert "does not trust the CA of our client certificate" in lines[1]
    # The expired certificate was already reported when the context was built.
    assert any("expired on" in r.getMessage() for r in caplog.records)


def test_cli_check_broker_exit_status(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    with tls_broker(tmp_path, pki) as broker:
        for name, password, status in (("good", USERS[NODE], 0), ("bad", "nope", 2)):
            pw = secret(tmp_path, password, f"{name}.password")
            file = tmp_path / f"{name}.yaml"
            file.write_text(
                f"mqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n  prefix: {PREFIX}\n"
                f"  username: {NODE}\n  password_file: {pw.name}\n"
                f"  tls:\n    enabled: true\n    ca_file: {pki.ca.cert_path}\n"
                "    min_version: 1.2\n", encoding="utf-8")
            assert cli_main(["--config", str(file), "check-broker", "--timeout", "20"]) == status
            out, err = capsys.readouterr()
            if status == 0:
                assert out.startswith(f"ok: broker 127.0.0.1:{broker.port} accepted")
                assert f"over TLS as '{NODE}'" in out
            else:
                assert err.strip() == (
                    f"gridtao: error: broker 127.0.0.1:{broker.port} refused the credentials "
                    "(not authorized): check mqtt.username / mqtt.password_file")


# ---------------------------------------------------------------- configuration


def _mqtt(tmp: Path, **over: Any) -> Config:
    data = {"mqtt": {"port": 8883, **over}}
    return config_from_mapping(data, source=str(tmp / "site.yaml"))


def test_config_errors_name_file_key_and_problem(tmp_path: Path, pki: Pki) -> None:
    src = str(tmp_path / "site.yaml")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"password_file": "pw"}, f"{src}: mqtt.username: required when mqtt.password_file"),
        ({"tls": {"ca_file": "ca.pem"}}, f"{src}: mqtt.tls.ca_file: set but mqtt.tls.enabled "
                                         "is false"),
        ({"tls": {"enabled": True, "key_file": "k"}}, f"{src}: mqtt.tls.cert_file: required"),
        ({"tls": {"enabled": True, "min_version": 1.1}}, f"{src}: mqtt.tls.min_version: must "
                                                         "be one of '1.2', '1.3'"),
        ({"password": "inline"}, f"{src}: mqtt.password: unknown key"),
        ({"tls": {"enabled": True, "insecure": True}}, f"{src}: mqtt.tls.insecure: unknown key"),
    ]
    for over, message in cases:
        with pytest.raises(ConfigError) as info:
            _mqtt(tmp_path, **over)
        assert str(info.value).startswith(message), info.value
    assert _mqtt(tmp_path, tls={"enabled": True, "min_version": 1.3}).mqtt.tls.min_version == "1.3"


def test_credential_files_are_checked_at_start(tmp_path: Path, pki: Pki) -> None:
    src = str(tmp_path / "site.yaml")
    (tmp_path / "site.yaml").write_text("{}\n")

    def fails(message: str, **over: Any) -> None:
        cfg = _mqtt(tmp_path, **over)
        with pytest.raises(ConfigError) as info:
            ssl_context(cfg.mqtt, source=cfg.source)
            read_password(cfg.mqtt, source=cfg.source)
        assert str(info.value).startswith(message), info.value

    fails(f"{src}: mqtt.tls.ca_file: file not found: {tmp_path / 'missing-ca.pem'}",
          tls={"enabled": True, "ca_file": "missing-ca.pem"})  # relative to the config file
    fails(f"{src}: mqtt.tls.ca_file: {tmp_path / 'site.yaml'} holds no usable PEM CA",
          tls={"enabled": True, "ca_file": "site.yaml"})
    fails(f"{src}: mqtt.tls.key_file: {pki.expired_client.key} is not the key of",
          tls={"enabled": True, "cert_file": str(pki.client.cert),
               "key_file": str(pki.expired_client.key)})
    open_pw = secret(tmp_path, "pw", "open.password")
    open_pw.chmod(0o644)
    fails(f"{src}: mqtt.password_file: {open_pw} is accessible to every user (mode 644)",
          username="u", password_file=str(open_pw))
    empty = secret(tmp_path, "", "empty.password")
    fails(f"{src}: mqtt.password_file: the first line of {empty} is empty",
          username="u", password_file=str(empty))
    fails(f"{src}: mqtt.password_file: file not found", username="u", password_file="nope")
    good = secret(tmp_path, "s3cret with spaces", "good.password")
    good.write_text("s3cret with spaces\nignored second line\n")
    cfg = _mqtt(tmp_path, username="u", password_file="good.password")
    assert read_password(cfg.mqtt, source=cfg.source) == "s3cret with spaces"
    # The agent refuses to start on a bad credential file, before any GPU is opened.
    with pytest.raises(ConfigError, match=r"mqtt\.password_file"):
        Agent(_mqtt(tmp_path, username="u", password_file=str(open_pw)),
              backend=None, options=AgentOptions(serve_metrics=False))
    assert os.stat(open_pw).st_mode & 0o777 == 0o644  # we never change the operator's file


def test_attempt_log_repeats_a_persistent_error_at_most_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = logging.getLogger("test.attempts")
    attempts = AttemptLog(log, host="h", port=1, tls=None, username="u", interval_s=10.0,
                          clock=lambda: now[0])
    from aiomqtt.exceptions import MqttConnectError
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    refused = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=135))
    with caplog.at_level(logging.DEBUG, logger="test.attempts"):
        for _ in range(30):  # 30 attempts over 15 s
            attempts.failed(refused, quiet=False)
            now[0] += 0.5
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2  # at 0 s and at 10 s
    assert "(first attempt)" in errors[0] and "(21 attempts)" in errors[1]
    assert attempts.problem == Diagnosis("credentials", "broker h:1 refused the credentials "
                                         "(not authorized): check mqtt.username / "
                                         "mqtt.password_file")
    attempts.connected()
    assert attempts.problem is None



@pytest.mark.parametrize(("text", "start", "kind"), [
    ("[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version (_ssl.c:1006)",
     "TLS: broker h:1 and this client share no TLS version (tlsv1 alert protocol version): "
     "check mqtt.tls.min_version", "tls"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate is not yet valid "
     "(_ssl.c:1006)", "TLS: broker h:1 presented a certificate that is not yet valid", "tls"),
    ("[Errno 111] Connection refused", "cannot connect to MQTT broker h:1 ([Errno 111] "
     "Connection refused)", "unreachable"),
    ("broker refused subscription to ['p/dispatch']", "broker h:1 refused subscription to "
     "['p/dispatch']: check the broker's ACL", "acl"),
])
def test_diagnose_other_openssl_messages(text: str, start: str, kind: str) -> None:
    import aiomqtt

    from gridtao.transport.diagnose import diagnose

    found = diagnose(aiomqtt.MqttError(text), host="h", port=1, tls=True, username="u")
    assert found.line.startswith(start), found.line
    assert found.kind == kind


class _ClosedAtConnect:
    """Stands in for an ``aiomqtt.Client`` whose broker closed the connection at once: aiomqtt
    2.5 then fails inside its own socket callback with ``AttributeError`` (None.fileno())."""

    async def __aenter__(self) -> None:
        raise AttributeError("'NoneType' object has no attribute 'fileno'")


def test_connect_race_is_reported_as_the_refusal_paho_saw() -> None:
    async def attempt() -> str:
        tap = PahoTap(asyncio.get_running_loop())
        tap.last_error = "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] alert certificate required"
        with pytest.raises(aiomqtt.MqttError) as info:
            await _enter(_ClosedAtConnect(), tap)  # type: ignore[arg-type]
        assert isinstance(info.value.__cause__, AttributeError)
        return str(info.value)

    assert "CERTIFICATE_REQUIRED" in asyncio.run(attempt())


def test_reload_renews_the_client_certificate_for_the_next_connection(
    tmp_path: Path, pki: Pki
) -> None:
    """A reload (SIGHUP) takes the certificate files as they are now. Proven both ways: an
    expired certificate put in place and reloaded is what the broker refuses after a restart;
    a renewed one put in place and reloaded gets the links back in."""
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"

    def install(issued: Issued) -> None:
        shutil.copy(issued.cert, cert)
        shutil.copy(issued.key, key)
        key.chmod(0o600)

    install(pki.client)
    with tls_broker(tmp_path, pki, client_certs=True) as broker:
        cfg = config(broker, tls={"ca_file": str(pki.ca.cert_path), "cert_file": str(cert),
                                  "key_file": str(key), "server_hostname": "localhost"})
        with running_agent(cfg) as agent:
            lane = agent.lane.link  # (the status link runs only under agent.serve())
            assert lane.is_connected
            install(pki.expired_client)
            before = agent.status_link.tls
            assert agent.reload(lambda: cfg).credentials
            assert agent.status_link.tls is not before and lane.tls is agent.status_link.tls
            assert lane.is_connected  # the session that is up goes on
            broker.restart()
            # (Attempts while the broker restarts fail as unreachable first.)
            wait_for(lambda: "refused our client certificate: it has expired"
                     in str(lane.problem), "a refusal of the expired certificate")
            install(pki.ca.client(f"{NODE}-renewed"))
            agent.reload(lambda: cfg)
            wait_for(lambda: lane.is_connected, "the link back with the renewed certificate")
            assert lane.problem is None
