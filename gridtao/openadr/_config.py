"""The bridge's configuration: YAML into frozen, typed dataclasses (docs/openadr.md).

Validated with the agent's schema machinery (:func:`gridtao.config.schema.build`), so every
error names the file, the key path and the problem, and is a :class:`ConfigError` (the CLI
prints it and exits 2). The broker connection (``mqtt``) and the audit trail (``audit``) are the
agent's own sections; the rest is the bridge's. Times in seconds, power in watts.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from gridtao.config.agent import AuditConfig, MqttConfig, is_loopback, read_yaml_file
from gridtao.config.paths import resolve_path, state_dir
from gridtao.config.rules import check_transport
from gridtao.config.schema import build, fail, rng

__all__ = [
    "BridgeConfig",
    "BridgeMetricsConfig",
    "DispatchConfig",
    "LevelReduction",
    "MappingConfig",
    "PolicyConfig",
    "ReportsConfig",
    "SigningConfig",
    "VtnConfig",
    "bridge_config_from_mapping",
    "load_bridge_config",
]

_ID_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_FILE_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class VtnConfig:
    """The VTN and this VEN's identity. ``url``: the VTN's OpenADR 2.0b base URL (the services
    ``EiRegisterParty``, ``OadrPoll``, ... are posted under it). ``cert_file``/``key_file``: the
    VEN's certificate and key (PEM): the TLS client certificate and the key that signs outgoing
    XML; ``vtn_fingerprint``: the VTN certificate's fingerprint, checked on every signed reply
    (XML signatures). ``ca_file`` trusts the VTN's HTTPS certificate (default: the system's
    store). ``poll_s``: poll this often instead of the VTN's requested frequency.
    ``retry_min_s``/``retry_max_s``: backoff bounds (full jitter) after a failed registration or
    poll. ``request_timeout_s``: one HTTP exchange, connect included. ``max_response_bytes``: a
    longer reply is refused unread (a VTN that floods cannot exhaust memory).

    ``protocol``: ``2.0b`` (openleadr's VEN client) or ``3.0.1`` (the REST poller; ``url`` is
    then the VTN's 3.0.1 base URL). 3.0.1 only: ``client_id`` with ``client_secret_file`` (the
    secret's first line) for the OAuth2 client-credentials grant at ``token_url`` (default
    ``<url>/auth/token``); without ``client_id`` no token is sent."""

    url: str
    ven_name: str
    protocol: Literal["2.0b", "3.0.1"] = "2.0b"
    client_id: str | None = None
    client_secret_file: str | None = None
    token_url: str | None = None
    ven_id: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    passphrase_file: str | None = None
    ca_file: str | None = None
    vtn_fingerprint: str | None = None
    check_hostname: bool = True
    poll_s: float | None = field(default=None, metadata=rng(0.05, 86_400))
    retry_min_s: float = field(default=1.0, metadata=rng(0.01, 3600))
    retry_max_s: float = field(default=300.0, metadata=rng(0.01, 86_400))
    request_timeout_s: float = field(default=10.0, metadata=rng(0.1, 600))
    max_response_bytes: int = field(default=1_048_576, metadata=rng(1024, 64 * 1_048_576))
    reregister_after_failures: int = field(default=5, metadata=rng(1, 1_000_000))


@dataclass(frozen=True)
class LevelReduction:
    """What a SIMPLE signal level asks of the site: exactly one of ``fraction`` (of each node's
    power before the event) or ``reduction_w`` (W for the whole site, at the nodes' settlement
    point)."""

    level: int = field(metadata=rng(1, 3))
    fraction: float | None = field(default=None, metadata=rng(0.0, 1.0))
    reduction_w: float | None = field(default=None, metadata=rng(0.0, 10_000_000.0))


@dataclass(frozen=True)
class MappingConfig:
    """How signals become reductions (docs/openadr.md, "Mapping"). ``simple_levels``: one entry
    per SIMPLE level 1-3."""

    simple_levels: tuple[LevelReduction, ...] = (
        LevelReduction(level=1, fraction=0.1),
        LevelReduction(level=2, fraction=0.2),
        LevelReduction(level=3, fraction=0.3),
    )


@dataclass(frozen=True)
class PolicyConfig:
    """When the bridge opts out (docs/openadr.md, "Opt-in policy"). ``resources`` and
    ``groups``: the targets this site answers for (an event naming only others is refused;
    an event targeted at this VEN alone is taken); ``market_contexts``: the programmes taken
    (empty: any). ``max_duration_s``: longer events are refused; ``max_start_ahead_s``: events
    starting further ahead are refused; ``max_late_start_s``: an event whose start is further
    in the past is refused. ``max_fraction``: deepest share of the nodes' draw asked.
    ``deliverable_share``: a reduction above this share of the capacity the nodes report
    deliverable is refused. ``require_status``: refuse while no node's status is known (the
    capacity cannot be checked); ``status_max_age_s``: a status older than this does not count.
    ``min_modification_interval_s``/``max_modifications``: modifications of one event arriving
    faster, or more of them, are refused (the version in force stays). ``test_events``:
    ``ignore`` opts in without dispatching; ``dispatch`` treats them like any event."""

    resources: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    market_contexts: tuple[str, ...] = ()
    max_duration_s: float = field(default=4 * 3600.0, metadata=rng(1, 7 * 86_400))
    max_start_ahead_s: float = field(default=7 * 86_400.0, metadata=rng(0, 366 * 86_400))
    max_late_start_s: float = field(default=60.0, metadata=rng(0, 86_400))
    max_fraction: float = field(default=0.8, metadata=rng(0.0, 1.0))
    deliverable_share: float = field(default=1.0, metadata=rng(0.0, 10.0))
    require_status: bool = True
    status_max_age_s: float = field(default=10.0, metadata=rng(0.1, 86_400))
    min_modification_interval_s: float = field(default=5.0, metadata=rng(0, 86_400))
    max_modifications: int = field(default=20, metadata=rng(0, 1_000_000))
    test_events: Literal["ignore", "dispatch"] = "ignore"


@dataclass(frozen=True)
class DispatchConfig:
    """The gridtao dispatches. ``id_prefix`` starts every id (``<prefix>-<event>-m<mod>``);
    ``min_interval_s``: cuts are published at least this far apart (the nodes take one cut per
    ``limits.min_event_interval_s``, 1 s by default); releases are never held back."""

    id_prefix: str = "oadr"
    min_interval_s: float = field(default=1.5, metadata=rng(0, 3600))


@dataclass(frozen=True)
class SigningConfig:
    """The aggregator key the bridge signs dispatches with (docs/security.md): ``mode`` as the
    nodes' ``auth.mode``, ``kid`` as in their ``auth.keys``, ``key_file`` the private key
    (Ed25519 PKCS#8 PEM or base64 seed; HMAC secret, base64). ``none`` sends plain JSON and is
    refused against a broker off this machine unless ``allow_unauthenticated``."""

    mode: Literal["none", "ed25519", "hmac"] = "none"
    kid: str | None = None
    key_file: str | None = None
    allow_unauthenticated: bool = False


@dataclass(frozen=True)
class ReportsConfig:
    """What the VEN offers the VTN in its TELEMETRY_USAGE report: the site's measured IT power
    (always, when enabled), ``baseline`` and ``available_reduction`` when set (the VTN asks for
    those it wants). ``resource_id``: the report's data source (default: the first of
    ``policy.resources``, else ``vtn.ven_name``); ``sampling_s``: the sampling period offered."""

    enabled: bool = True
    resource_id: str | None = None
    sampling_s: float = field(default=10.0, metadata=rng(1, 3600))
    baseline: bool = True
    available_reduction: bool = True


@dataclass(frozen=True)
class BridgeMetricsConfig:
    """Prometheus on ``host:port`` when ``port`` is set (0: any free port)."""

    host: str = "127.0.0.1"
    port: int | None = field(default=None, metadata=rng(0, 65535))


@dataclass(frozen=True)
class BridgeConfig:
    vtn: VtnConfig
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    signing: SigningConfig = field(default_factory=SigningConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    metrics: BridgeMetricsConfig = field(default_factory=BridgeMetricsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    source: str = field(default="<mapping>", metadata={"internal": True})

    @property
    def report_resource_id(self) -> str:
        """The resource the reports are about."""
        if self.reports.resource_id is not None:
            return self.reports.resource_id
        return self.policy.resources[0] if self.policy.resources else self.vtn.ven_name

    @property
    def client_id(self) -> str:
        """The bridge's MQTT client id (``mqtt.node_id`` when set)."""
        return self.mqtt.node_id or f"gridtao-openadr-{self.vtn.ven_name}"


def load_bridge_config(path: str) -> BridgeConfig:
    """Read and validate the bridge's YAML file. Raises :class:`ConfigError`."""
    data = read_yaml_file(path)
    if data is None:
        fail(path, "vtn", "required key is missing (the file is empty)")
    return bridge_config_from_mapping(data, source=path)


def bridge_config_from_mapping(data: object, *, source: str = "<mapping>") -> BridgeConfig:
    """Validate a parsed mapping into a :class:`BridgeConfig`, paths made absolute (relative
    ones from the file's folder; the audit trail by default in the state directory as
    ``openadr-<ven name>.jsonl``)."""
    cfg = build(BridgeConfig, data, source, "")
    _check(cfg, source)
    audit_path = (str(resolve_path(cfg.audit.path, source)) if cfg.audit.path is not None
                  else str(state_dir() / f"openadr-{_FILE_SAFE.sub('_', cfg.vtn.ven_name)}.jsonl"))

    def path(value: str | None) -> str | None:
        return None if value is None else str(resolve_path(value, source))

    vtn = dataclasses.replace(cfg.vtn, cert_file=path(cfg.vtn.cert_file),
                              key_file=path(cfg.vtn.key_file),
                              passphrase_file=path(cfg.vtn.passphrase_file),
                              ca_file=path(cfg.vtn.ca_file),
                              client_secret_file=path(cfg.vtn.client_secret_file))
    return dataclasses.replace(
        cfg, vtn=vtn, source=source,
        audit=dataclasses.replace(cfg.audit, path=audit_path),
        signing=dataclasses.replace(cfg.signing, key_file=path(cfg.signing.key_file)),
        mqtt=dataclasses.replace(cfg.mqtt, password_file=path(cfg.mqtt.password_file)),
    )


def _check(cfg: BridgeConfig, source: str) -> None:
    """Rules spanning several keys."""
    url = urlsplit(cfg.vtn.url)
    for key, value in (("vtn.url", cfg.vtn.url), ("vtn.token_url", cfg.vtn.token_url)):
        if value is not None and (problem := _url_problem(value)) is not None:
            fail(source, key, problem)
    if (cfg.vtn.cert_file is None) != (cfg.vtn.key_file is None):
        fail(source, "vtn.key_file" if cfg.vtn.key_file is None else "vtn.cert_file",
             "vtn.cert_file and vtn.key_file go together")
    if cfg.vtn.cert_file is not None and url.scheme != "https":
        fail(source, "vtn.url", "a client certificate (vtn.cert_file) needs an https:// URL")
    if cfg.vtn.protocol == "2.0b":
        for name in ("client_id", "client_secret_file", "token_url"):
            if getattr(cfg.vtn, name) is not None:
                fail(source, f"vtn.{name}", "only for vtn.protocol 3.0.1")
    elif cfg.vtn.cert_file is not None or cfg.vtn.vtn_fingerprint is not None:
        fail(source, "vtn.cert_file" if cfg.vtn.cert_file is not None else
             "vtn.vtn_fingerprint", "only for vtn.protocol 2.0b")
    if (cfg.vtn.client_id is None) != (cfg.vtn.client_secret_file is None):
        fail(source, "vtn.client_secret_file" if cfg.vtn.client_id is not None else
             "vtn.client_id", "vtn.client_id and vtn.client_secret_file go together")
    fingerprint = cfg.vtn.vtn_fingerprint
    if fingerprint is not None and not _FINGERPRINT.fullmatch(fingerprint):
        fail(source, "vtn.vtn_fingerprint", "must be hex byte pairs separated by ':' (as "
             "openleadr prints a certificate's fingerprint), e.g. 'AB:CD:...'")
    if cfg.vtn.retry_min_s > cfg.vtn.retry_max_s:
        fail(source, "vtn.retry_min_s", "must be <= vtn.retry_max_s")
    if not cfg.vtn.ven_name.isprintable() or len(cfg.vtn.ven_name) > 128:
        fail(source, "vtn.ven_name", "must be printable and at most 128 characters")
    levels = [entry.level for entry in cfg.mapping.simple_levels]
    for k, entry in enumerate(cfg.mapping.simple_levels):
        key = f"mapping.simple_levels[{k}]"
        if (entry.fraction is None) == (entry.reduction_w is None):
            fail(source, key, "give exactly one of fraction or reduction_w")
        if entry.fraction is not None and not 0 < entry.fraction <= cfg.policy.max_fraction:
            fail(source, f"{key}.fraction", f"must be in (0, policy.max_fraction "
                 f"{cfg.policy.max_fraction:g}], got {entry.fraction:g}")
        if entry.reduction_w is not None and entry.reduction_w <= 0:
            fail(source, f"{key}.reduction_w", "must be > 0")
        if levels.count(entry.level) > 1:
            fail(source, f"{key}.level", f"level {entry.level} is given twice")
    if not _ID_PREFIX.fullmatch(cfg.dispatch.id_prefix):
        fail(source, "dispatch.id_prefix", "must be 1-32 letters, digits, '.', '_' or '-', "
             "starting with a letter or digit")
    for part in ("+", "#"):
        if part in cfg.mqtt.prefix:
            fail(source, "mqtt.prefix", f"MQTT topics must not contain the wildcard {part!r}")
    check_transport(cfg.mqtt, source)
    signing = cfg.signing
    if signing.mode == "none" and (signing.kid is not None or signing.key_file is not None):
        fail(source, "signing.mode", "none, but a signing kid or key_file is set: the bridge "
             "would send unsigned dispatches; set the mode (ed25519 or hmac) or remove them")
    if signing.mode == "none":
        if not signing.allow_unauthenticated and not is_loopback(cfg.mqtt.host):
            fail(source, "signing.mode", f"none with the broker at {cfg.mqtt.host}: nodes "
                 "that verify dispatches refuse unsigned ones, and nodes that do not can be "
                 "cut by anyone who can publish there; sign (ed25519 or hmac), or set "
                 "signing.allow_unauthenticated: true")
    else:
        if signing.kid is None:
            fail(source, "signing.kid", f"required when signing.mode is {signing.mode!r}")
        if signing.key_file is None:
            fail(source, "signing.key_file", f"required when signing.mode is {signing.mode!r}")
        if not signing.kid.isprintable() or len(signing.kid) > 64:
            fail(source, "signing.kid", "must be printable and at most 64 characters")
    for k, resource in enumerate(cfg.policy.resources):
        if not resource.isprintable():
            fail(source, f"policy.resources[{k}]", "must be printable")


_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})+")


def _url_problem(value: str) -> str | None:
    """What is wrong with ``value`` as the VTN's (or its token endpoint's) URL, or None."""
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.hostname:
        return f"must be an http:// or https:// URL with a host, got {value[:60]!r}"
    try:
        url.port  # noqa: B018 - parsing it is the check: out of range raises
    except ValueError:
        return f"{value[:60]!r} has no valid port (1-65535)"
    return None
