"""``gridtao sign`` and ``gridtao keygen``: the aggregator's side of signed messages.

``gridtao keygen --alg ed25519 --out PREFIX`` writes ``PREFIX.key`` (PKCS#8 PEM private key,
mode 0600: stays with the aggregator) and ``PREFIX.pub`` (SubjectPublicKeyInfo PEM: goes in
the agent's ``auth.keys``). ``--alg hmac`` writes ``PREFIX.hmac`` (base64 of 32 random bytes,
0600), the secret both sides hold. Existing files are never overwritten.

``gridtao sign --key FILE --kid ID`` reads a payload (argument or ``-`` for stdin), adds
``issued_at`` (dispatch) or ``t`` (frequency, meter) when missing, and prints the signed
payload.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridtao.config.agent import Config, ConfigError
from gridtao.security import auth

HMAC_KEY_BYTES = 32


class _TakesArguments(Protocol):
    """A parser or an argument group (argparse's group class is private)."""

    def add_argument(self, *names: str, **options: Any) -> argparse.Action: ...


def add_key_options(p: _TakesArguments, *, required: bool = True) -> None:
    """``--key``, ``--kid`` and ``--alg``: the key a command signs with."""
    p.add_argument("--key", required=required, metavar="FILE",
                   help="private key (Ed25519 PEM or base64 seed) or HMAC secret file")
    p.add_argument("--kid", required=required,
                   help="key id the receivers know this key by (their auth.keys)")
    p.add_argument("--alg", choices=auth.ALGS, default=None,
                   help="default: hmac for a .hmac file (as gridtao keygen names a secret), "
                        "else ed25519")


def signing_key(args: argparse.Namespace) -> tuple[auth.SigningKey, auth.Alg]:
    """The key and algorithm ``--key`` / ``--alg`` name; ConfigError for a bad key file."""
    # An HMAC secret read as an Ed25519 seed would sign, and every receiver would refuse it.
    alg: auth.Alg = args.alg or ("hmac" if args.key.endswith(".hmac") else "ed25519")
    try:
        return auth.load_signing_key(args.key, alg), alg
    except auth.KeyFileError as e:
        raise ConfigError(f"--key: {e}") from None


def configure_sign(p: argparse.ArgumentParser) -> None:
    add_key_options(p)
    p.add_argument("--topic", choices=("dispatch", "frequency", "meter"), default="dispatch",
                   help="adds issued_at (dispatch) or t (a frequency sample, a meter reading) "
                        "when missing")
    p.add_argument("payload", nargs="?", default="-", metavar="PAYLOAD_JSON|-",
                   help="the JSON object to sign (default -: read standard input)")


def run_sign(args: argparse.Namespace, config: Config) -> int:
    text = sys.stdin.read() if args.payload == "-" else args.payload
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"payload: bad JSON: {e.msg} at char {e.pos}") from None
    except RecursionError:
        raise ConfigError("payload: bad JSON: nested too deeply") from None
    except ValueError as e:  # an integer literal longer than int_max_str_digits
        raise ConfigError(f"payload: bad JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError("payload: must be a JSON object")
    key, alg = signing_key(args)
    try:
        signed = auth.sign_payload(obj, key, args.kid, alg, topic=args.topic)
    except ValueError as e:  # NaN / Infinity in the payload
        raise ConfigError(f"payload: cannot be signed: {e}") from None
    sys.stdout.write(signed.decode("utf-8") + "\n")
    return 0


def configure_keygen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alg", choices=auth.ALGS, default="ed25519", help="default ed25519")
    p.add_argument("--out", required=True, metavar="PREFIX",
                   help="writes PREFIX.key + PREFIX.pub (ed25519) or PREFIX.hmac (hmac)")


def run_keygen(args: argparse.Namespace, config: Config) -> int:
    prefix = Path(args.out)
    if not prefix.name:  # "", "/", "dir/": no file name to add .key / .pub / .hmac to
        raise ConfigError(f"--out: {args.out!r} names no file (e.g. --out keys/aggregator-1)")
    if args.alg == "hmac":
        secret = base64.b64encode(secrets.token_bytes(HMAC_KEY_BYTES)) + b"\n"
        path = prefix.with_name(prefix.name + ".hmac")
        _write_new(path, secret, 0o600)
        print(f"wrote {path} (HMAC-SHA256 secret, mode 0600): give it to the agent and the signer")
        return 0
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    key_path = prefix.with_name(prefix.name + ".key")
    pub_path = prefix.with_name(prefix.name + ".pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise ConfigError(f"--out: {path} exists; not overwriting a key")
    _write_new(key_path, private, 0o600)
    _write_new(pub_path, public, 0o644)
    print(f"wrote {key_path} (private, mode 0600: keep it with the signer) and "
          f"{pub_path} (public: list it in the agent's auth.keys)")
    return 0


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (no window with looser permissions)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"--out: {path} exists; not overwriting a key") from None
    except OSError as e:
        raise ConfigError(f"--out: cannot create {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # exactly ``mode``, whatever the umask
