"""Message authentication for dispatch, frequency and meter payloads (wire contract v1 + an
envelope).

A signed message is a v1 payload with two more fields (v1 readers ignore unknown fields):

* ``"kid"``: the sender's key id, as configured in ``auth.keys``;
* ``"sig"``: base64 (standard alphabet, padded) of the signature over the *canonical payload*:
  the JSON object without ``"sig"`` (``"kid"`` included), keys sorted, separators ``,`` and
  ``:``, no whitespace, non-ASCII characters as UTF-8 (not ``\\u`` escapes); exactly
  ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` in Python.

The receiver re-serializes the payload it decoded, so a signer must send numbers as Python
writes them (use :func:`sign_payload` or ``gridtao sign``; other languages: plain decimals).

Algorithms: Ed25519 (``cryptography``; 64-byte signature) and HMAC-SHA256 (stdlib; 32 bytes).
Both verify in microseconds (bench/latency.py ``--auth`` measures it), so verification runs on
the island's hot path before anything reaches the GPUs.

Freshness (``issued_at`` / ``t`` against this node's wall clock) and replay are checked here
per message; the event-id memory that survives restarts is :mod:`gridtao.security.replay`.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import json
import logging
import math
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gridtao.config.agent import AuthConfig, ConfigError
from gridtao.errors import GridtaoError
from gridtao.readfile import read_regular

__all__ = [
    "HMAC_MIN_KEY_BYTES",
    "KID_FIELD",
    "SIG_FIELD",
    "Alg",
    "AuthRejected",
    "KeyFileError",
    "SampleOrder",
    "SigningKey",
    "Topic",
    "Verifier",
    "canonical_bytes",
    "check_fresh",
    "load_signing_key",
    "load_verify_key",
    "sign_payload",
]

log = logging.getLogger("gridtao.auth")

Alg: TypeAlias = Literal["ed25519", "hmac"]
#: What a key may sign (``auth.keys[].topics``): dispatches and awards, frequency samples
#: (the nodes), the site meter's readings (the site coordinator).
Topic: TypeAlias = Literal["dispatch", "frequency", "meter"]
ALGS: Final[tuple[str, ...]] = get_args(Alg)
SIG_FIELD: Final = "sig"
KID_FIELD: Final = "kid"
HMAC_MIN_KEY_BYTES: Final = 32
SIG_BYTES: Final[dict[str, int]] = {"ed25519": 64, "hmac": 32}
KEY_FILE_MAX_BYTES: Final = 65_536

SigningKey: TypeAlias = Ed25519PrivateKey | bytes  # bytes: an HMAC secret
VerifyKey: TypeAlias = Ed25519PublicKey | bytes

# Reason labels for gridtao_auth_failures_total{reason}: few and fixed (label cardinality).
UNSIGNED: Final = "unsigned"
BAD_SIGNATURE: Final = "bad_signature"
UNKNOWN_KID: Final = "unknown_kid"
KID_NOT_ALLOWED: Final = "kid_not_allowed"
NO_TIMESTAMP: Final = "no_timestamp"
STALE: Final = "stale"
FUTURE: Final = "future"
REPLAYED: Final = "replayed"
STORE_FULL: Final = "replay_store_full"
REASON_LABELS: Final = (
    UNSIGNED, BAD_SIGNATURE, UNKNOWN_KID, KID_NOT_ALLOWED, NO_TIMESTAMP, STALE, FUTURE, REPLAYED,
    STORE_FULL,
)


class AuthRejected(GridtaoError, ValueError):
    """A message failed authentication. ``label`` is one of :data:`REASON_LABELS` (metrics);
    ``reason`` is the sentence for the ack and the log."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(reason)
        self.label = label
        self.reason = reason


class KeyFileError(GridtaoError, ValueError):
    """A key file is missing, unreadable or not a key of the expected kind (message names it)."""


# One encoder, built once (json.dumps with arguments builds a new encoder per call).
_CANONICAL: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_bytes(obj: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: ``obj`` without ``"sig"``, canonical JSON, UTF-8."""
    body = {k: v for k, v in obj.items() if k != SIG_FIELD}
    return _CANONICAL.encode(body).encode("utf-8")


def _raw_sign(key: SigningKey, alg: Alg, data: bytes) -> bytes:
    if alg == "ed25519":
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError("ed25519 signing needs an Ed25519PrivateKey")
        return key.sign(data)
    if not isinstance(key, bytes):
        raise TypeError("hmac signing needs the secret as bytes")
    return hmac.digest(key, data, "sha256")


def sign_payload(
    obj: Mapping[str, Any],
    key: SigningKey,
    kid: str,
    alg: Alg,
    *,
    topic: Topic | None = None,
    now: float | None = None,
) -> bytes:
    """Sign ``obj`` as ``kid`` and return the wire payload (UTF-8 JSON with ``kid`` and ``sig``).

    ``key`` is an :class:`Ed25519PrivateKey` (or its 32-byte raw seed) for ``ed25519``, the
    secret bytes for ``hmac``. With ``topic``, a missing timestamp is filled in from ``now``
    (default: this machine's Unix time): ``issued_at`` for a dispatch, ``t`` for a frequency
    sample or a meter reading.
    """
    if alg not in ALGS:
        raise ValueError(f"unknown algorithm {alg!r} (expected one of {', '.join(ALGS)})")
    if alg == "ed25519" and isinstance(key, bytes):
        key = Ed25519PrivateKey.from_private_bytes(key)
    body: dict[str, Any] = {k: v for k, v in obj.items() if k != SIG_FIELD}
    if topic is not None:
        stamp = "issued_at" if topic == "dispatch" else "t"
        if body.get(stamp) is None:
            body[stamp] = time.time() if now is None else now
    body[KID_FIELD] = kid
    signature = _raw_sign(key, alg, canonical_bytes(body))
    body[SIG_FIELD] = base64.b64encode(signature).decode("ascii")
    return _CANONICAL.encode(body).encode("utf-8")


# ---- key files --------------------------------------------------------------------------------


def _read_key_file(path: Path) -> bytes:
    try:
        return read_regular(path, max_bytes=KEY_FILE_MAX_BYTES)  # a FIFO would block forever
    except FileNotFoundError:
        raise KeyFileError(f"key file {str(path)!r} not found") from None
    except OSError as e:
        if e.errno == errno.EFBIG:
            raise KeyFileError(f"key file {str(path)!r} is too large to be a key") from None
        raise KeyFileError(f"cannot read key file {str(path)!r}: {e.strerror or e}") from None


def _b64(data: bytes, path: Path, what: str) -> bytes:
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"key file {str(path)!r}: not PEM and not base64 ({what})") from None


def _check_secret_mode(path: Path) -> None:
    """Whoever reads an HMAC secret can sign: one every local user may read or write is
    refused, as the broker password is (a public key file given by mistake is usually such a
    file, too); group access is warned about."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise KeyFileError(f"key file {str(path)!r}: an HMAC secret every user may read or "
                           f"write (mode {stat.S_IMODE(mode):o}); run chmod 600 {path}")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secret key file %s is accessible to group/others (mode %o); use 0600",
                    path, stat.S_IMODE(mode))


def load_signing_key(path: str | os.PathLike[str], alg: Alg) -> SigningKey:
    """A private key for :func:`sign_payload`: Ed25519 PKCS#8 PEM or base64 32-byte seed; or an
    HMAC secret, base64, at least 32 bytes decoded. Raises :class:`KeyFileError`."""
    file = Path(path)
    data = _read_key_file(file)
    if alg == "hmac":
        return _hmac_secret(data, file)
    if b"-----BEGIN" in data:
        if b"PRIVATE KEY" not in data:
            raise KeyFileError(f"key file {str(file)!r} is not a private key (signing needs one)")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise KeyFileError(f"key file {str(file)!r}: unreadable private key ({e})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"key file {str(file)!r} is not an Ed25519 private key")
        return key
    raw = _b64(data, file, "expected a 32-byte Ed25519 seed")
    if len(raw) != 32:
        raise KeyFileError(f"key file {str(file)!r}: Ed25519 seed must be 32 bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_verify_key(path: str | os.PathLike[str], alg: Alg) -> VerifyKey:
    """A verification key: Ed25519 public key (SubjectPublicKeyInfo PEM or base64 32 bytes),
    or an HMAC secret as in :func:`load_signing_key`. Raises :class:`KeyFileError`."""
    file = Path(path)
    data = _read_key_file(file)
    if alg == "hmac":
        return _hmac_secret(data, file)
    if b"-----BEGIN" in data:
        if b"PRIVATE KEY" in data:
            raise KeyFileError(
                f"key file {str(file)!r} holds a private key: give the agent the public key"
            )
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as e:
            raise KeyFileError(f"key file {str(file)!r}: unreadable public key ({e})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"key file {str(file)!r} is not an Ed25519 public key")
        return key
    raw = _b64(data, file, "expected a 32-byte Ed25519 public key")
    if len(raw) != 32:
        raise KeyFileError(
            f"key file {str(file)!r}: Ed25519 public key must be 32 bytes, got {len(raw)}"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def _hmac_secret(data: bytes, file: Path) -> bytes:
    if b"-----BEGIN" in data:
        # An Ed25519 key file given as an HMAC secret: a public key would let anyone sign.
        raise KeyFileError(f"key file {str(file)!r} holds a PEM key, not an HMAC secret (base64 "
                           "of random bytes: gridtao keygen --alg hmac); for Ed25519 keys set "
                           "mode: ed25519")
    secret = _b64(data, file, "expected a base64 HMAC secret")
    if len(secret) < HMAC_MIN_KEY_BYTES:
        raise KeyFileError(f"key file {str(file)!r}: HMAC secret is {len(secret)} bytes, "
                           f"need at least {HMAC_MIN_KEY_BYTES}")
    _check_secret_mode(file)
    return secret


# ---- verification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    key: VerifyKey
    topics: frozenset[str]


class Verifier:
    """Checks ``kid`` and ``sig`` of decoded payloads against the configured keys.

    Thread-confined to the island lane in the agent (it holds no mutable state anyway).
    """

    def __init__(self, alg: Alg, keys: Mapping[str, tuple[VerifyKey, frozenset[str]]]) -> None:
        self.alg: Alg = alg
        self._keys = {kid: _Key(k, topics) for kid, (k, topics) in keys.items()}
        self._sig_bytes = SIG_BYTES[alg]

    @property
    def kids(self) -> tuple[str, ...]:
        """The key ids this verifier accepts, sorted."""
        return tuple(sorted(self._keys))

    def signers(self, topic: Topic) -> tuple[str, ...]:
        """The key ids that may sign messages on ``topic``, sorted."""
        return tuple(sorted(kid for kid, k in self._keys.items() if topic in k.topics))

    @classmethod
    def from_config(cls, auth: AuthConfig, *, source: str) -> Verifier | None:
        """Load every key file of ``auth`` (None when ``auth.mode`` is ``none``).

        Raises :class:`ConfigError` naming the config file, the key and the problem. Relative
        key paths are taken from the config file's folder when ``source`` is a file.
        """
        if auth.mode == "none":
            return None
        alg: Alg = "ed25519" if auth.mode == "ed25519" else "hmac"
        base = Path(source).resolve().parent if Path(source).is_file() else Path.cwd()
        keys: dict[str, tuple[VerifyKey, frozenset[str]]] = {}
        for k, entry in enumerate(auth.keys):
            path = Path(entry.file).expanduser()
            if not path.is_absolute():
                path = base / path
            try:
                keys[entry.kid] = (load_verify_key(path, alg), frozenset(entry.topics))
            except KeyFileError as e:
                raise ConfigError(f"{source}: auth.keys[{k}].file (kid {entry.kid!r}): {e}"
                                  ) from None
        return cls(alg, keys)

    def authenticate(self, topic: Topic, data: Mapping[str, Any]) -> str:
        """The ``kid`` whose key signed ``data``; raises :class:`AuthRejected` otherwise."""
        sig = data.get(SIG_FIELD)
        if sig is None:
            raise AuthRejected(UNSIGNED, "unsigned: field 'sig' is missing")
        kid = data.get(KID_FIELD)
        if not isinstance(kid, str) or not kid:
            raise AuthRejected(UNKNOWN_KID, "signed message needs a string field 'kid'")
        entry = self._keys.get(kid)
        if entry is None:
            shown = kid[:64] if kid.isprintable() else kid[:32].encode().hex()
            raise AuthRejected(UNKNOWN_KID, f"unknown key id {shown!r}")
        if topic not in entry.topics:
            raise AuthRejected(KID_NOT_ALLOWED, f"key {kid!r} may not sign {topic} messages")
        if not isinstance(sig, str):
            raise AuthRejected(BAD_SIGNATURE, "field 'sig' must be a base64 string")
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            raise AuthRejected(BAD_SIGNATURE, "field 'sig' is not valid base64") from None
        if len(raw) != self._sig_bytes:
            raise AuthRejected(BAD_SIGNATURE, f"{self.alg} signature must be "
                               f"{self._sig_bytes} bytes, got {len(raw)}")
        try:
            signed = canonical_bytes(data)
        except ValueError:  # NaN / Infinity survive nowhere in a canonical payload
            raise AuthRejected(BAD_SIGNATURE, "payload has no canonical form") from None
        if not self._valid(entry.key, raw, signed):
            raise AuthRejected(BAD_SIGNATURE, f"bad signature for key {kid!r}")
        return kid

    def _valid(self, key: VerifyKey, sig: bytes, signed: bytes) -> bool:
        if isinstance(key, bytes):
            return hmac.compare_digest(hmac.digest(key, signed, "sha256"), sig)
        try:
            key.verify(sig, signed)
        except InvalidSignature:
            return False
        return True


def check_fresh(
    stamp: float | None, field: str, now_wall_s: float, *, max_age_s: float, max_future_s: float
) -> None:
    """Raise :class:`AuthRejected` unless ``stamp`` (Unix s) lies in
    ``[now - max_age_s, now + max_future_s]`` of this node's wall clock."""
    if stamp is None or not math.isfinite(stamp):
        raise AuthRejected(NO_TIMESTAMP, f"signed message needs a numeric '{field}'")
    age = now_wall_s - stamp
    if age > max_age_s:
        raise AuthRejected(STALE, f"stale: '{field}' is {age:.3f} s old "
                           f"(freshness window {max_age_s:g} s)")
    if -age > max_future_s:
        raise AuthRejected(FUTURE, f"future-dated: '{field}' is {-age:.3f} s ahead of this "
                           f"node's clock (max {max_future_s:g} s)")


class SampleOrder:
    """Replay protection for timestamped samples (frequency samples, site meter readings): per
    key, ``t`` must increase strictly.

    In memory only: after a restart, a captured sample can be replayed at most within its
    freshness window (seconds), which :func:`check_fresh` enforces.
    """

    def __init__(self) -> None:
        self._last_t: dict[str, float] = {}

    def check(self, kid: str, t: float) -> None:
        last = self._last_t.get(kid)
        if last is not None and t <= last:
            raise AuthRejected(REPLAYED, f"replayed or reordered: 't' {t!r} is not after the last "
                               f"accepted sample's {last!r} from key {kid!r}")

    def accept(self, kid: str, t: float) -> None:
        self._last_t[kid] = t
