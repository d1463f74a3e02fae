"""The VEN's side of HTTPS to the VTN: which certificates it trusts and presents.

Shared by the OpenADR 2.0b VEN (:mod:`._ven`) and the 3.0.1 poller (:mod:`._oadr3_poll`);
needs no openleadr.
"""

from __future__ import annotations

import ssl

from gridtao.config.schema import ConfigError
from gridtao.openadr._config import BridgeConfig

__all__ = ["client_ssl", "read_passphrase"]


def read_passphrase(config: BridgeConfig) -> str | None:
    """The first line of ``vtn.passphrase_file`` (None when unset). Raises ConfigError."""
    path = config.vtn.passphrase_file
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n") or None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{config.source}: vtn.passphrase_file: cannot read {path}: "
                          f"{getattr(e, 'strerror', None) or e}") from None


def client_ssl(config: BridgeConfig, passphrase: str | None) -> ssl.SSLContext | None:
    """The HTTPS context: trust ``vtn.ca_file`` (else the system's store), present the VEN's
    certificate when set. Raises :class:`ConfigError` naming the key."""
    vtn = config.vtn
    if not vtn.url.lower().startswith("https://"):
        return None
    key = "vtn.ca_file"
    try:
        ctx = ssl.create_default_context(cafile=vtn.ca_file)
        ctx.check_hostname = vtn.check_hostname
        if vtn.cert_file is not None:
            key = "vtn.cert_file"
            ctx.load_cert_chain(vtn.cert_file, vtn.key_file, passphrase)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"{config.source}: {key}: {getattr(e, 'strerror', None) or e}") \
            from None
    return ctx
