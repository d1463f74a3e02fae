"""The broker connection's credentials from configuration: TLS context and password.

:func:`ssl_context` builds the client :class:`ssl.SSLContext` of ``mqtt.tls`` (certificate and
host name verification always on; there is no switch to turn them off) and :func:`read_password`
reads ``mqtt.password_file``. Both raise :class:`~gridtao.config.agent.ConfigError` naming the
config file, the key and the problem, so a bad path stops the agent before any GPU is touched.

Relative paths are taken from the config file's folder (as ``auth.keys[].file``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import ssl
import stat
from pathlib import Path

from cryptography import x509

from gridtao.config.agent import ConfigError, MqttConfig, TlsConfig
from gridtao.config.paths import resolve_path

__all__ = ["MAX_PASSWORD_BYTES", "ClientContext", "read_password", "ssl_context"]

log = logging.getLogger(__name__)

MAX_PASSWORD_BYTES = 65_535  # MQTT's limit for the CONNECT password field

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _existing_file(value: str, source: str, key: str) -> Path:
    path = resolve_path(value, source)
    if not path.exists():
        raise ConfigError(f"{source}: {key}: file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{source}: {key}: not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{source}: {key}: not readable by this user: {path}")
    return path


def read_password(mqtt: MqttConfig, *, source: str) -> str | None:
    """The first line of ``mqtt.password_file`` (None when unset).

    The file must not be readable or writable by others (mode 0600 or 0640 with a trusted
    group): a password any local user can read is refused, not just warned about.
    """
    if mqtt.password_file is None:
        return None
    key = "mqtt.password_file"
    path = _existing_file(mqtt.password_file, source, key)
    mode = path.stat().st_mode
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(
            f"{source}: {key}: {path} is accessible to every user (mode "
            f"{stat.S_IMODE(mode):o}); run chmod 600 {path}"
        )
    if mode & stat.S_IWGRP:
        log.warning("%s: %s: %s is writable by its group (mode %o); use 0600 or 0640",
                    source, key, path, stat.S_IMODE(mode))
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PASSWORD_BYTES + 2)
    except OSError as e:
        raise ConfigError(f"{source}: {key}: cannot read {path}: {e.strerror or e}") from None
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not first:
        raise ConfigError(f"{source}: {key}: the first line of {path} is empty (it must hold "
                          "the password)")
    if len(first) > MAX_PASSWORD_BYTES:
        raise ConfigError(f"{source}: {key}: the password in {path} is longer than MQTT allows "
                          f"({MAX_PASSWORD_BYTES} bytes)")
    try:
        return first.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: {key}: the password in {path} is not UTF-8") from None


class ClientContext(ssl.SSLContext):
    """The client context :func:`ssl_context` returns.

    ``verify_name``: when set, the name verified in (and sent as SNI for) the broker's
    certificate, whatever address the client connects to: paho (``wrap_socket``) and asyncio
    (``wrap_bio``, the receive-only connections) pass the connect host as ``server_hostname``.
    ``has_client_cert``: a client certificate is loaded (for diagnostics).
    """

    verify_name: str | None = None
    has_client_cert: bool = False

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock, server_side, do_handshake_on_connect, suppress_ragged_eofs,
            self.verify_name or server_hostname, session,
        )

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side,
                                self.verify_name or server_hostname, session)


def _refuse_encrypted_key() -> bytes:
    raise ValueError("encrypted private keys are not supported; store it unencrypted, mode 0600")


def ssl_context(mqtt: MqttConfig, *, source: str) -> ClientContext | None:
    """The client TLS context of ``mqtt.tls`` (None when TLS is off).

    Trusts ``ca_file`` (else the system's CA store), requires TLS ``min_version`` or newer,
    verifies the broker's certificate and that it names ``server_hostname`` (default
    ``mqtt.host``; an IP address is matched against the certificate's IP SANs), and presents
    ``cert_file``/``key_file`` when set.
    """
    tls = mqtt.tls
    if not tls.enabled:
        return None
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on
    if tls.server_hostname is not None and tls.server_hostname != mqtt.host:
        ctx.verify_name = tls.server_hostname
    ctx.minimum_version = _VERSIONS[tls.min_version]
    _load_trust(ctx, tls, source)
    _load_client_cert(ctx, tls, source)
    return ctx


def _load_trust(ctx: ssl.SSLContext, tls: TlsConfig, source: str) -> None:
    if tls.ca_file is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return
    key = "mqtt.tls.ca_file"
    path = _existing_file(tls.ca_file, source, key)
    try:
        ctx.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError(f"{source}: {key}: {path} holds no usable PEM CA certificate "
                          f"({_ssl_reason(e)})") from None


def _load_client_cert(ctx: ssl.SSLContext, tls: TlsConfig, source: str) -> None:
    if tls.cert_file is None:
        return
    cert = _existing_file(tls.cert_file, source, "mqtt.tls.cert_file")
    key: Path | None = None
    if tls.key_file is not None:
        key = _existing_file(tls.key_file, source, "mqtt.tls.key_file")
        mode = key.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: mqtt.tls.key_file: %s is accessible to group/others (mode %o); "
                        "use 0600", source, key, stat.S_IMODE(mode))
    try:
        ctx.load_cert_chain(str(cert), str(key) if key else None, password=_refuse_encrypted_key)
    except ValueError as e:
        raise ConfigError(f"{source}: mqtt.tls.key_file: {e}") from None
    except ssl.SSLError as e:
        reason = _ssl_reason(e)
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in reason:
            raise ConfigError(f"{source}: mqtt.tls.key_file: {key} is not the key of "
                              f"mqtt.tls.cert_file {cert}") from None
        what = "mqtt.tls.cert_file" if key is not None else "mqtt.tls.cert_file (no key_file)"
        raise ConfigError(f"{source}: {what}: cannot load the client certificate and key "
                          f"({reason})") from None
    if isinstance(ctx, ClientContext):
        ctx.has_client_cert = True
    _warn_validity(cert, source)


def _warn_validity(path: Path, source: str) -> None:
    """Warn now about a client certificate the broker will refuse: the broker's answer (a TLS
    alert) says less than this."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return  # OpenSSL accepted it; a format this check cannot read is not an error
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        log.error("%s: mqtt.tls.cert_file: %s expired on %s: the broker will refuse it",
                  source, path, cert.not_valid_after_utc.isoformat())
    elif cert.not_valid_before_utc > now:
        log.error("%s: mqtt.tls.cert_file: %s is not valid before %s (check this host's clock)",
                  source, path, cert.not_valid_before_utc.isoformat())


def _ssl_reason(e: Exception) -> str:
    reason = getattr(e, "reason", None)
    return str(reason).replace("_", " ").lower() if reason else str(e)
