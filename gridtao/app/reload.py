"""Reload on SIGHUP: rotate signing keys and broker credentials without a restart.

A restart ends every event and restores the limits (that is what stopping means), so rotating a
key or a certificate by restarting would drop a reserve the node is delivering. A reload applies:

* ``auth.keys``: the key files are read again and the guard's verifier is swapped between two
  messages (each message is checked entirely with the old keys or entirely with the new ones).
  Whether messages are signed, and with which algorithm (``auth.mode``), is fixed at start.
* the broker credentials: ``mqtt.username``, ``mqtt.password_file`` and ``mqtt.tls`` (CA, client
  certificate and key, server name, minimum version). Both links use them from their next
  connection on; a connection that is up keeps its session, so a reload never opens a gap in
  what the island hears. Turning TLS on or off needs a restart (it goes with a port change).

Everything else that differs between the file and the running configuration is named in a
warning and not applied (it needs a restart). All or nothing: every file is read and checked
before anything is swapped; a bad file raises :class:`~gridtao.config.agent.ConfigError` naming the
file, key and problem, and the agent keeps running as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from gridtao.config.agent import Config, ConfigError
from gridtao.security.auth import Verifier
from gridtao.security.guard import Guard
from gridtao.transport.supervision import Supervised
from gridtao.transport.tls import read_password, ssl_context

__all__ = ["Credentials", "ReloadPlan", "ReloadResult", "apply_reload", "plan_reload",
           "read_credentials"]

log = logging.getLogger("gridtao.app.reload")


class Credentials(NamedTuple):
    """What a configuration's key and broker-credential files hold, read and checked."""

    verifier: Verifier | None  # None: messages are not signed (auth.mode none)
    tls: ssl.SSLContext | None  # None: no TLS
    password: str | None


def read_credentials(config: Config) -> Credentials:
    """Read every signing-key and broker-credential file of ``config`` (at start, and again on
    a reload). Raises ConfigError naming the file, the key and the problem."""
    return Credentials(
        Verifier.from_config(config.auth, source=config.source),
        ssl_context(config.mqtt, source=config.source),
        read_password(config.mqtt, source=config.source),
    )


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did: key ids added and removed, whether broker credentials were renewed,
    and the dotted config keys that differ but need a restart (not applied)."""

    kids_added: tuple[str, ...]
    kids_removed: tuple[str, ...]
    credentials: bool
    needs_restart: tuple[str, ...]

    def fields(self) -> dict[str, object]:
        """For the audit trail."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ReloadPlan:
    """Everything read and checked, nothing applied yet (:func:`apply_reload`)."""

    config: Config  # the running configuration with the reloadable parts of the new file
    credentials: Credentials
    result: ReloadResult


def _reloadable(config: Config) -> Config:
    """``config`` with what a reload may change blanked out, to compare the rest."""
    mqtt = dataclasses.replace(
        config.mqtt, username=None, password_file=None,
        tls=dataclasses.replace(type(config.mqtt.tls)(), enabled=config.mqtt.tls.enabled),
    )
    auth = dataclasses.replace(config.auth, keys=())
    return dataclasses.replace(config, mqtt=mqtt, auth=auth, source="")


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config dataclasses (recursing into
    nested sections; a changed list counts as one difference)."""
    if not (dataclasses.is_dataclass(old) and type(old) is type(new)):
        return [prefix.rstrip(".")] if old != new else []
    out: list[str] = []
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a != b:
            out += differences(a, b, f"{prefix}{f.name}.")
    return out


def plan_reload(running: Config, new: Config, *, current: Verifier | None) -> ReloadPlan:
    """Read and check every reloadable file of ``new`` against the ``running`` configuration.

    Raises ConfigError for a bad file, or for a change of ``auth.mode`` or ``mqtt.tls.enabled``
    (refused, not ignored: an operator who turns signatures off by reload must not believe
    they are off)."""
    if new.auth.mode != running.auth.mode:
        raise ConfigError(f"{new.source}: auth.mode: changing it from {running.auth.mode!r} to "
                          f"{new.auth.mode!r} needs a restart; nothing was reloaded")
    if new.mqtt.tls.enabled != running.mqtt.tls.enabled:
        raise ConfigError(f"{new.source}: mqtt.tls.enabled: turning TLS on or off needs a "
                          "restart; nothing was reloaded")
    creds = read_credentials(new)
    verifier = creds.verifier
    old_kids = set(current.kids) if current is not None else set()
    new_kids = set(verifier.kids) if verifier is not None else set()
    credentials = (new.mqtt.username, new.mqtt.password_file, new.mqtt.tls) != (
        running.mqtt.username, running.mqtt.password_file, running.mqtt.tls)
    result = ReloadResult(
        kids_added=tuple(sorted(new_kids - old_kids)),
        kids_removed=tuple(sorted(old_kids - new_kids)),
        # Files may hold new contents under the same paths: the links always take the new set.
        credentials=credentials or creds.tls is not None or creds.password is not None,
        needs_restart=tuple(differences(_reloadable(running), _reloadable(new))),
    )
    applied = dataclasses.replace(
        running,
        auth=dataclasses.replace(running.auth, keys=new.auth.keys),
        mqtt=dataclasses.replace(running.mqtt, username=new.mqtt.username,
                                 password_file=new.mqtt.password_file, tls=new.mqtt.tls),
    )
    return ReloadPlan(applied, creds, result)


def apply_reload(plan: ReloadPlan, *, guard: Guard, links: Sequence[Supervised]) -> ReloadResult:
    """Swap in what :func:`plan_reload` read (cannot fail half-way: swaps only)."""
    verifier, tls, password = plan.credentials
    if verifier is not None:
        guard.replace_verifier(verifier)
    for link in links:
        link.set_credentials(tls=tls, username=plan.config.mqtt.username, password=password)
    r = plan.result
    log.info("reloaded %s: keys %s (added %s, removed %s)%s", plan.config.source,
             ", ".join(verifier.kids) if verifier is not None else "none",
             ", ".join(r.kids_added) or "none", ", ".join(r.kids_removed) or "none",
             "; broker credentials renewed for the next connection" if r.credentials else "")
    if r.needs_restart:
        log.warning("%s: changed but not applied until a restart: %s", plan.config.source,
                    ", ".join(r.needs_restart))
    return r
