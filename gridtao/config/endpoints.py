"""Configuration of the agent's network endpoints (re-exported by :mod:`gridtao.config.agent`;
ranges live next to each field in ``metadata``): its connection to the MQTT broker (``mqtt:``,
with ``mqtt.tls``; read by gridtao/transport/) and its Prometheus metrics endpoint (``metrics:``).

Times in seconds, sizes in bytes. The dataclasses are frozen, so a configuration is shared
between threads as it is; each key is checked on its own as it is read
(gridtao/config/schema.py), the rules spanning several keys (the reconnect bounds, the topic
prefix and node id, the credentials and TLS files) in gridtao/config/rules.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gridtao.config.schema import rng

__all__ = ["MetricsConfig", "MqttConfig", "TlsConfig"]


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the broker (gridtao/transport/tls.py, docs/security.md). Relative paths are taken from
    the config file's folder.

    The broker's certificate is always verified against ``ca_file`` (default: the system's CA
    store) and must name ``server_hostname`` (default: ``mqtt.host``; an IP address is matched
    against the certificate's IP SANs); there is deliberately no switch to skip either check.
    ``cert_file``/``key_file``: a client certificate (PEM; the key unencrypted, mode 0600) for
    brokers that require one; ``key_file`` may be omitted when ``cert_file`` holds both.
    ``min_version``: the oldest TLS version accepted ("1.2" or "1.3").
    """

    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_hostname: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"


@dataclass(frozen=True)
class MqttConfig:
    """The broker connection. ``username`` with ``password_file``: MQTT password
    authentication; the password is the file's first line (never inline in this file) and the
    file must not be readable by other users; it goes only over TLS to a broker that is not
    this machine, unless ``allow_plaintext_password`` (a network the operator trusts).
    ``error_log_interval_s``: while the broker keeps refusing the credentials or the TLS
    handshake, the error is logged once, then at most this often (retries go on with backoff:
    the broker may be fixed)."""

    host: str = "127.0.0.1"
    port: int = field(default=1883, metadata=rng(1, 65535))
    prefix: str = "gridtao/demo"
    node_id: str | None = None
    keepalive_s: int = field(default=10, metadata=rng(2, 3600))
    reconnect_min_s: float = field(default=0.1, metadata=rng(0.01, 60))
    reconnect_max_s: float = field(default=5.0, metadata=rng(0.1, 600))
    max_payload_bytes: int = field(default=4096, metadata=rng(64, 1_048_576))
    status_period_s: float = field(default=1.0, metadata=rng(0.05, 3600))
    username: str | None = None
    password_file: str | None = None
    allow_plaintext_password: bool = False
    tls: TlsConfig = field(default_factory=TlsConfig)
    error_log_interval_s: float = field(default=60.0, metadata=rng(1, 86_400))


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=9108, metadata=rng(0, 65535))
