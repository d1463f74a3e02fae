"""A real Mosquitto broker on a free loopback port (demo, benches, tests) and sync helpers.

The broker runs as a child process with a throw-away config (anonymous, no persistence, log to a
file in its temp dir). Only the pid this module started is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gridtao.errors import GridtaoError

START_TIMEOUT_S = 5.0
INSTALL_HINT = "mosquitto is required for the MQTT tests: apt-get install -y mosquitto"


class BrokerError(GridtaoError, RuntimeError):
    """The broker could not be started (the message carries its log)."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary; raises (never skips) when it is missing."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access("/usr/sbin/mosquitto", os.X_OK):
        return "/usr/sbin/mosquitto"
    raise BrokerError(INSTALL_HINT)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MosquittoBroker:
    """One mosquitto process on ``127.0.0.1:port``; ``restart()`` keeps the port."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        anonymous: bool = True,
        listener_conf: Sequence[str] = (),
        extra_conf: Sequence[str] = (),
    ) -> None:
        """``listener_conf`` lines go right after the ``listener`` line (TLS options),
        ``extra_conf`` at the end (e.g. ``password_file``, ``acl_file``); ``anonymous`` False
        makes the broker refuse clients without credentials."""
        self.binary = find_mosquitto()
        self.anonymous = anonymous
        self.listener_conf = tuple(listener_conf)
        self.extra_conf = tuple(extra_conf)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_conf()

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            *self.listener_conf,
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
            "persistence false",
            # Without it Nagle's algorithm can hold a small PUBLISH until the peer's delayed ACK
            # (tens of ms): deployments of gridtao should set it too (see README).
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto would switch to the "mosquitto" user and lose the temp dir.
            lines.append("user root")
        lines.extend(self.extra_conf)
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                stderr = (
                    self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                )
                self._proc = None
                raise BrokerError(
                    f"mosquitto exited at start (port {self.port}).\nstderr:\n{stderr}\n"
                    f"log:\n{self.log_text()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(
                        f"mosquitto did not accept connections on {self.host}:{self.port} "
                        f"within {START_TIMEOUT_S} s.\nlog:\n{self.log_text()}"
                    ) from None
                time.sleep(0.01)

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 5 s) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            os.kill(proc.pid, signal.SIGCONT)  # in case it was paused
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def kill(self) -> None:
        """Kill the broker abruptly (SIGKILL): no goodbyes to clients, in-flight data is lost."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again on the same port (sessions and retained messages are lost)."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "<no log written>"

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- sync client helpers -----------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        publish(self.host, self.port, topic, payload, qos=qos, retain=retain)

    def subscriber(self, topic: str, *, qos: int = 1) -> Subscriber:
        return Subscriber(self.host, self.port, topic, qos=qos)

    def collect(self, topic: str, n: int = 1, timeout: float = 5.0) -> list[paho.MQTTMessage]:
        """Subscribe, wait for ``n`` messages (retained ones count), return them."""
        with self.subscriber(topic) as sub:
            return sub.wait(n, timeout)


def _connect(host: str, port: int, prefix: str) -> paho.Client:
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{prefix}-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv5,
    )
    client.connect(host, port, keepalive=10)
    return client


def publish(
    host: str, port: int, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
) -> None:
    """Publish one message and wait until the broker has it (PUBACK for QoS 1).

    Uses a :class:`Publisher` (no network thread): paho's ``loop_stop`` right after
    ``disconnect`` can race its own thread's exit.
    """
    with Publisher(host, port) as pub:
        pub.send(topic, payload, qos=qos, retain=retain)


class Publisher:
    """A persistent connection for publishing many messages (benches: no per-message connect).

    ``send`` returns the Unix time just before the message was handed to the client, so a
    measured latency starts when the bytes start their way to the broker. The client runs no
    network thread: ``publish`` writes the socket on the caller's thread (no thread hand-off
    inside the measurement), and ``send`` then drives the client until the PUBACK arrives.
    """

    def __init__(self, host: str, port: int) -> None:
        self._client = _connect(host, port, "pub")
        deadline = time.monotonic() + 5.0
        while not self._client.is_connected():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no CONNACK from {host}:{port}")
            self._client.loop(timeout=0.05)

    def send(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> float:
        self._client.loop(timeout=0.0)  # keepalive and anything pending, before the clock starts
        sent = time.time()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        deadline = time.monotonic() + 5.0
        while qos > 0 and not info.is_published():
            if time.monotonic() > deadline:
                raise TimeoutError(f"publish to {topic} not acknowledged")
            self._client.loop(timeout=0.05)
        return sent

    def close(self) -> None:
        self._client.disconnect()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Subscriber:
    """A paho client on its own thread collecting messages of one topic filter."""

    def __init__(self, host: str, port: int, topic: str, *, qos: int = 1) -> None:
        self.topic = topic
        self.messages: list[paho.MQTTMessage] = []
        self.received_wall: list[float] = []  # Unix time each message reached the callback
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = _connect(host, port, "test-sub")
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._qos = qos

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.received_wall.append(time.time())
            self.messages.append(msg)
            self._cond.notify_all()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subscribed.set()

    def __enter__(self) -> Subscriber:
        self._client.loop_start()
        self._client.subscribe(self.topic, qos=self._qos)
        if not self._subscribed.wait(5):
            self.close()
            raise TimeoutError(f"no SUBACK for {self.topic}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        # paho 2.2: the network thread, ending on the disconnect, sets its own handle to None
        # between loop_stop's "is there a thread" check and its join() (AttributeError): it has
        # exited, which is all loop_stop waits for.
        with contextlib.suppress(AttributeError):
            self._client.loop_stop()

    def wait(self, n: int = 1, timeout: float = 5.0) -> list[paho.MQTTMessage]:
        """Block until ``n`` messages have arrived; raise TimeoutError naming what came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [(m.topic, m.payload) for m in self.messages]
                    raise TimeoutError(f"{self.topic}: wanted {n} messages, got {got}")
                self._cond.wait(left)
            return list(self.messages[:n])


@contextmanager
def running_broker(workdir: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
