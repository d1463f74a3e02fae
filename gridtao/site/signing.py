"""The site's own key: what it signs (node orders and awards, its retained events record) and
how it checks that a record it takes back at start is its own.

``site.signing`` (gridtao/config/site.py) names the key; ``mode: none`` signs nothing and
writes plain JSON. The record is checked with the same key: the Ed25519 public half of the
site's private key, or the HMAC secret itself. No locks, no threads: built once at start.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridtao.config.agent import Config, ConfigError
from gridtao.config.paths import resolve_path
from gridtao.security.auth import (
    Alg,
    KeyFileError,
    SigningKey,
    Verifier,
    VerifyKey,
    load_signing_key,
    sign_payload,
)
from gridtao.site.sending import Sign

__all__ = ["record_verifier", "signer"]


def _key(config: Config) -> SigningKey | None:
    signing = config.site.signing
    if signing.mode == "none":
        return None
    assert signing.file is not None and signing.kid is not None  # config/site.py checks
    return _load(config, signing.file, "site.signing.file")


def _load(config: Config, file: str, key: str) -> SigningKey:
    _, alg = _identity(config)
    try:
        return load_signing_key(resolve_path(file, config.source), alg)
    except KeyFileError as e:
        raise ConfigError(f"{config.source}: {key}: {e}") from None


def _identity(config: Config) -> tuple[str, Alg]:
    """The signing key's id and algorithm (``site.signing`` with a mode other than none)."""
    signing = config.site.signing
    assert signing.kid is not None and signing.mode != "none"
    return signing.kid, "hmac" if signing.mode == "hmac" else "ed25519"


def signer(config: Config) -> Sign:
    """Signs a body with ``site.signing`` (plain JSON, never NaN, with ``mode: none``).
    Raises ConfigError naming the key file when it cannot be read."""
    key = _key(config)
    if key is None:
        return lambda body: json.dumps(body, separators=(",", ":"),
                                       allow_nan=False).encode("utf-8")
    kid, alg = _identity(config)
    return lambda body: sign_payload(body, key, kid, alg, topic="dispatch")


def record_verifier(config: Config) -> Verifier | None:
    """Checks that a body was signed with the site's own key, or one it signed with before
    (``site.signing.previous``); None with ``mode: none`` (the site then signs nothing, and
    takes its record back unchecked). Raises ConfigError as :func:`signer`."""
    key = _key(config)
    if key is None:
        return None
    kid, alg = _identity(config)
    keys = {kid: key} | {
        old.kid: _load(config, old.file, f"site.signing.previous[{k}].file")
        for k, old in enumerate(config.site.signing.previous)}
    return Verifier(alg, {name: (_verify_half(k), frozenset({"dispatch"}))
                          for name, k in keys.items()})


def _verify_half(key: SigningKey) -> VerifyKey:
    """What checks a signature made with ``key``: its public half, or the HMAC secret."""
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key
