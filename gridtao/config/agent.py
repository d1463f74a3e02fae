"""Configuration: YAML into frozen, typed dataclasses.

Every error names the file, the key path and the reason, and is raised as :class:`ConfigError`
(the CLI prints its message and exits with status 2). Keys are validated against the dataclass
fields: unknown keys, wrong types and out-of-range values are all rejected before anything starts.
Ranges live next to each field in ``metadata`` so the schema is the single source of truth.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gridtao.config.grid import FacilityConfig as FacilityConfig
from gridtao.config.grid import GpuPriority as GpuPriority
from gridtao.config.grid import ProductConfig as ProductConfig
from gridtao.config.grid import ProductKind as ProductKind
from gridtao.config.grid import TrackerConfig as TrackerConfig
from gridtao.config.planner import HistoryConfig as HistoryConfig
from gridtao.config.planner import PlannerConfig as PlannerConfig
from gridtao.config.rules import MAX_NODE_ID_CHARS as MAX_NODE_ID_CHARS
from gridtao.config.rules import check_consistency, check_not_another_file
from gridtao.config.rules import is_loopback as is_loopback
from gridtao.config.rules import sim_device_problem as sim_device_problem
from gridtao.config.schema import ConfigError as ConfigError
from gridtao.config.schema import build, rng
from gridtao.config.site import SiteConfig as SiteConfig
from gridtao.config.work import CpuPowerConfig as CpuPowerConfig
from gridtao.config.work import WorkConfig as WorkConfig
from gridtao.config.work import WorkSource as WorkSource
from gridtao.readfile import read_regular

ENV_VAR = "GRIDTAO_CONFIG"

log = logging.getLogger("gridtao.config")



@dataclass(frozen=True)
class SimFault:
    """A fault the simulated GPUs show from the start (``SimNvml.inject_fault``): ``kind`` on GPU
    ``gpu`` (None: every GPU), ``delay_s`` per call for ``slow``, for ``calls`` affected calls
    (None: until cleared). For tests and drills of the agent's error paths."""

    kind: Literal["lost", "no_permission", "not_supported", "slow"]
    gpu: int | None = field(default=None, metadata=rng(0, 63))
    delay_s: float = field(default=0.5, metadata=rng(0, 3600))
    calls: int | None = field(default=None, metadata=rng(1, None))


@dataclass(frozen=True)
class SimWorkload:
    """One simulated GPU's workload (``gpus.sim.workloads``): ``kind`` as ``gpus.sim.workload``;
    ``load`` scales an inference GPU's demand above idle (1: as ``inference``; other kinds: 1)."""

    kind: Literal["training", "inference", "idle", "trace"]
    load: float = field(default=1.0, metadata=rng(0.01, 1))


@dataclass(frozen=True)
class SimConfig:
    """Simulated GPUs (see gridtao/gpu/sim.py). Times in milliseconds, power in watts."""

    count: int = field(default=8, metadata=rng(1, 64))
    profile: Literal["h100-sxm", "a100-sxm", "v100-sxm2"] = "h100-sxm"
    workload: Literal["training", "inference", "idle", "trace"] = "training"
    trace_csv: str | None = None
    cap_down_ms: float = field(default=20.0, metadata=rng(0.1, 60_000))
    cap_up_ms: float = field(default=250.0, metadata=rng(0.1, 60_000))
    refresh_ms: float = field(default=20.0, metadata=rng(1, 1000))
    noise_w: float = field(default=3.0, metadata=rng(0, 100))
    set_latency_ms: float = field(default=0.2, metadata=rng(0, 10_000))
    read_latency_ms: float = field(default=0.02, metadata=rng(0, 10_000))
    seed: int = 0
    faults: tuple[SimFault, ...] = ()
    # "default": inference follows a day's shape (low at night, peak in the afternoon, lower
    # at weekends; gridtao/gpu/sim/daily.py) on the machine's wall clock; "custom": the 24
    # hourly levels of `daily_levels` (0..1, hour 0 first); "none": flat. With a shape, the
    # weekend's factor and the local time's offset east of UTC (hours) are
    # `daily_weekend_factor` and `daily_tz_offset_h`.
    daily_shape: Literal["none", "default", "custom"] = "none"
    daily_levels: tuple[float, ...] = ()
    daily_weekend_factor: float = field(default=0.6, metadata=rng(0.0, 1.0))
    daily_tz_offset_h: float = field(default=0.0, metadata=rng(-12.0, 14.0))
    # The machine-wide device these GPUs belong to (gridtao/gpu/sim/shared.py): every process
    # naming it shares them, as processes on one server share its GPUs, and limits outlive the
    # process that set them. null: GPUs private to the process (tests in virtual time).
    device: str | None = "default"
    # One workload per GPU (a mixed node), overriding `workload`; empty: all run `workload`.
    workloads: tuple[SimWorkload, ...] = ()


@dataclass(frozen=True)
class GpusConfig:
    # auto: the NVIDIA driver when installed, else the simulator (loudly, reported as simulated)
    backend: Literal["auto", "sim", "nvml"] = "auto"
    dry_run: bool = False
    # Refuse to start when no GPU accepts power-limit writes (else: start, say so, refuse cuts).
    require_actuation: bool = False
    sim: SimConfig = field(default_factory=SimConfig)


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
    file must not be readable by other users. ``error_log_interval_s``: while the broker keeps
    refusing the credentials or the TLS handshake, the error is logged once, then at most this
    often (retries go on with backoff: the broker may be fixed)."""

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
    tls: TlsConfig = field(default_factory=TlsConfig)
    error_log_interval_s: float = field(default=60.0, metadata=rng(1, 86_400))


@dataclass(frozen=True)
class FrequencyTrigger:
    """Arm a cut when grid frequency falls to ``hz`` or below.

    ``reduction_fraction`` of the node's IT draw just before the trigger is shed; the cut is held
    at least ``min_hold_s`` and until frequency has stayed above ``hz + hysteresis_hz`` for
    ``recovery_s``; then it ramps out at the island's release rate.
    """

    hz: float = field(default=49.7, metadata=rng(45.0, 65.0))
    reduction_fraction: float = field(default=0.3, metadata=rng(0.0, 1.0))
    min_hold_s: float = field(default=5.0, metadata=rng(0, 86_400))
    recovery_s: float = field(default=1.0, metadata=rng(0, 86_400))
    hysteresis_hz: float = field(default=0.02, metadata=rng(0, 1))


@dataclass(frozen=True)
class SafetyConfig:
    triggers: tuple[FrequencyTrigger, ...] = (
        FrequencyTrigger(hz=49.7, reduction_fraction=0.1),
        FrequencyTrigger(hz=49.6, reduction_fraction=0.2),
        FrequencyTrigger(hz=49.5, reduction_fraction=0.3),
    )
    release_rate_per_s: float = field(default=0.2, metadata=rng(0.001, 100))
    rearm_period_s: float = field(default=0.5, metadata=rng(0.01, 1.0))
    watchdog_timeout_s: float = field(default=3.0, metadata=rng(0.05, 3600))
    safe_state: Literal["default", "hold", "minimum"] = "default"
    max_event_s: float = field(default=3600.0, metadata=rng(1, 86_400 * 7))
    # A frequency feed silent for longer is taken as nominal: activations end by their rules.
    frequency_stale_s: float = field(default=5.0, metadata=rng(0.1, 3600))
    # A sample whose t is further than this from the node's clock is refused, signed or not:
    # a wrong meter clock, a replay, or samples queued while this process was paused (an FFR
    # level must act within 0.7-1.3 s of the dip, so a dip seen seconds late is history).
    frequency_max_skew_s: float = field(default=2.0, metadata=rng(0.01, 3600))


@dataclass(frozen=True)
class ControlConfig:
    fast_hz: float = field(default=100.0, metadata=rng(1, 1000))
    band_fraction: float = field(default=0.05, metadata=rng(0.001, 0.5))
    headroom_w: float = field(default=15.0, metadata=rng(0, 200))
    integral_gain: float = field(default=0.3, metadata=rng(0, 10))
    max_raise_w_per_s: float = field(default=2000.0, metadata=rng(1, 100_000))
    # Caps are cut from each GPU's draw smoothed over this time constant (0: the instant
    # reading): training swings by hundreds of watts within a second, and a cut computed from
    # one 10 ms reading taken in a dip (or a peak) misses its target by as much.
    basis_tau_s: float = field(default=0.5, metadata=rng(0, 60))
    # How tier 1 splits a node cut between GPUs: "proportional" (equal levels within each
    # GPU's range) or "work-aware" (equal work lost per watt: GPUs whose work suffers least
    # from a lower limit are cut first; gridtao/control/tier1/workaware.py, docs/work.md).
    allocation: Literal["proportional", "work-aware"] = "proportional"


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=9108, metadata=rng(0, 65535))


@dataclass(frozen=True)
class AuthKey:
    """A sender's key: ``kid`` names it on the wire; ``file`` holds it (never the secret inline).

    ``file`` is an Ed25519 public key (PEM or raw base64) for ``auth.mode: ed25519``, or an
    HMAC secret (base64, at least 32 bytes) for ``auth.mode: hmac``. A relative path is taken
    from the config file's folder. ``topics`` are the topics this key may sign for.
    """

    kid: str
    file: str
    topics: tuple[Literal["dispatch", "frequency"], ...] = ("dispatch", "frequency")


@dataclass(frozen=True)
class AuthConfig:
    """Signed dispatch and frequency messages (docs/security.md). Times in seconds.

    With ``mode`` other than ``none``, every dispatch must carry ``sig`` and ``kid`` and an
    ``issued_at`` no older than ``freshness_s`` nor more than ``max_future_s`` ahead; its id is
    remembered in ``replay_store`` (default: ``<state dir>/replay-<node>.jsonl``, see
    gridtao/config/paths.py) for ``freshness_s``, so a replay is refused across
    restarts. Signed frequency samples must have ``t`` within ``frequency_freshness_s`` and
    increasing per key; unsigned ones are refused when ``require_signed_frequency`` is true.
    """

    mode: Literal["none", "hmac", "ed25519"] = "none"
    keys: tuple[AuthKey, ...] = ()
    freshness_s: float = field(default=30.0, metadata=rng(0.1, 86_400))
    frequency_freshness_s: float = field(default=2.0, metadata=rng(0.05, 3600))
    max_future_s: float = field(default=2.0, metadata=rng(0, 3600))
    replay_store: str | None = None
    replay_max_entries: int = field(default=100_000, metadata=rng(10, 10_000_000))
    require_signed_frequency: bool = True
    # With mode none against a broker off this machine, anyone who can publish to it can cut
    # the node: the agent refuses to start unless the operator says so here.
    allow_unauthenticated: bool = False


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds on what remote messages may do to the node (docs/security.md).

    Rates are token buckets per topic (messages/s, burst in messages); over the rate, a dispatch
    is refused with an ack and a frequency sample is dropped (both counted). A dispatched cut is
    refused if its shed ``fraction`` exceeds ``max_reduction_fraction``, its ``node_w`` is below
    ``min_node_fraction`` of the GPUs' summed default limits (a shed that would cross that floor
    at the current draw is reduced to stop at it), its ``duration_s`` exceeds
    ``max_event_duration_s``, it comes sooner than ``min_event_interval_s`` after the last
    accepted cut, or ``max_events_in_flight`` events are already active. Releases are exempt
    from all but the rate.

    ``reject_acks_per_s`` / ``reject_ack_burst``: the budget of acks for refused messages that
    no signature vouches for (malformed, unsigned, badly signed, over the rate, or anything under
    ``auth.mode: none``); past it a refusal is counted (``gridtao_acks_suppressed_total``) but not
    acked, so a flood of junk never crowds out an activation's ack. A refused message whose
    signature verified is always acked. ``reject_records_per_s`` / ``reject_record_burst``: the
    same for their audit records; past it they are counted in one ``rejections_unrecorded``
    record.
    """

    dispatch_rate_per_s: float = field(default=5.0, metadata=rng(0.001, 10_000))
    dispatch_burst: int = field(default=20, metadata=rng(1, 100_000))
    frequency_rate_per_s: float = field(default=60.0, metadata=rng(0.001, 100_000))
    frequency_burst: int = field(default=120, metadata=rng(1, 1_000_000))
    max_events_in_flight: int = field(default=4, metadata=rng(1, 1000))
    max_reduction_fraction: float = field(default=0.8, metadata=rng(0.0, 1.0))
    min_node_fraction: float = field(default=0.3, metadata=rng(0.0, 1.0))
    min_event_interval_s: float = field(default=1.0, metadata=rng(0, 86_400))
    max_event_duration_s: float = field(default=3600.0, metadata=rng(0.1, 86_400 * 7))
    reject_acks_per_s: float = field(default=10.0, metadata=rng(0.001, 100_000))
    reject_ack_burst: int = field(default=50, metadata=rng(1, 1_000_000))
    reject_records_per_s: float = field(default=20.0, metadata=rng(0.001, 100_000))
    reject_record_burst: int = field(default=200, metadata=rng(1, 1_000_000))


@dataclass(frozen=True)
class AuditConfig:
    """The append-only, hash-chained audit trail (gridtao/records/audit.py, docs/audit.md).

    ``fsync``: ``always`` (every record on disk before the next), ``interval`` (at most
    ``fsync_interval_s`` of records lost on power loss), ``never`` (the OS decides). The file is
    rotated before it would exceed ``rotate_bytes``; ``keep_files`` rotated files are kept
    (0: all). ``queue_size`` records may wait for the writer; beyond that they are dropped and a
    ``gap`` record says how many. A relative ``path`` is taken from the configuration file's
    folder; without one, the trail lives in the agent's state directory.
    """

    enabled: bool = True
    path: str | None = None  # None: <state dir>/audit-<node>.jsonl (gridtao/config/paths.py)
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval_s: float = field(default=1.0, metadata=rng(0.01, 3600))
    rotate_bytes: int = field(default=64 * 1024 * 1024, metadata=rng(4096, 1 << 40))
    keep_files: int = field(default=0, metadata=rng(0, 1_000_000))
    queue_size: int = field(default=10_000, metadata=rng(16, 10_000_000))


@dataclass(frozen=True)
class JournalConfig:
    """Crash-recovery state journal (gridtao/records/journal.py, docs/audit.md). Times in seconds.

    The agent keeps in ``path`` (written atomically, fsynced) the limits it found at its first
    start and the events it is holding. After a crash, the next start restores a journaled event
    for what is left of its duration, but GPUs never stay capped longer than
    ``max_capped_after_crash_s`` after the crash (the journal's last heartbeat, rewritten every
    ``heartbeat_s``): past that, the limits are restored at once. A clean stop restores the limits
    the first run found and removes the journal.
    """

    enabled: bool = True
    path: str | None = None  # None: <state dir>/journal-<node>.json (gridtao/config/paths.py)
    max_capped_after_crash_s: float = field(default=300.0, metadata=rng(0, 7 * 86_400))
    heartbeat_s: float = field(default=1.0, metadata=rng(0.05, 3600))


@dataclass(frozen=True)
class Config:
    gpus: GpusConfig = field(default_factory=GpusConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    products: tuple[ProductConfig, ...] = ()
    facility: FacilityConfig = field(default_factory=FacilityConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    work: WorkConfig = field(default_factory=WorkConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load ``path``, else ``$GRIDTAO_CONFIG``, else built-in defaults.

    Raises :class:`ConfigError` naming the file, key path and reason.
    """
    if path is None:
        path = os.environ.get(ENV_VAR) or None
    if path is None:
        return Config()
    where = str(path)
    data = read_yaml_file(path)
    if data is None:
        log.warning("%s is empty: running on the built-in defaults", where)
        data = {}
    return config_from_mapping(data, source=where)


def read_yaml_file(path: str | os.PathLike[str]) -> object:
    """The parsed contents of the YAML file ``path`` (None when empty). Raises
    :class:`ConfigError` naming the file (and the line and column of a YAML error)."""
    file = Path(path)
    where = ascii(str(file))[1:-1] if not str(file).isprintable() else str(file)
    try:  # a FIFO would block, /dev/zero never end
        raw = read_regular(file, max_bytes=MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except OSError as e:
        if e.errno in (errno.EISDIR, errno.EINVAL):
            kind = "a folder" if e.errno == errno.EISDIR else "not a regular file"
            raise ConfigError(f"{where}: is {kind}: a YAML file is expected") from None
        if e.errno == errno.EFBIG:
            raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES // 1024} KiB: not a "
                              "configuration file") from None
        raise ConfigError(f"{where}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.start}): a YAML file is "
                          "expected") from None
    if "\x00" in text:
        raise ConfigError(f"{where}: contains NUL bytes: a YAML text file is expected")
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (a control byte)
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise ConfigError(f"{where} (line {line}, column {column}): invalid YAML: character "
                          f"#x{e.character:04x} is not allowed in YAML text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}{pos}: invalid YAML: {' '.join(problem.split())}") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML: nested too deeply") from None
    return data


#: The largest configuration file read (a real one is a few KiB).
MAX_CONFIG_BYTES = 1024 * 1024
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but a value its constructors cannot build (an integer of thousands
    of digits, a date such as 2024-13-45, ``!!int abc``) is a YAML error at the value's line,
    not a bare ValueError from deep inside PyYAML; and a key given twice in one mapping is an
    error (PyYAML keeps the last silently: a second ``limits:`` would drop the first's safety
    limits). Keys a merge (``<<``) brings in may still be overridden, as YAML intends."""

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        # Checked as the file is read, before any merge (<<) is flattened into a mapping (a
        # parent's merge rewrites the merged node's own list in place): keys as written, by
        # tag and text, so 1 and "1" are two keys.
        node: yaml.MappingNode = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            earlier = first.setdefault((key_node.tag, key_node.value), key_node)
            if earlier is not key_node:
                raise yaml.composer.ComposerError(
                    None, None, f"key {key_node.value!r} given twice in one mapping (first at "
                    f"line {earlier.start_mark.line + 1}): only one can count",
                    key_node.start_mark)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError, TypeError) as e:
            value = node.value if isinstance(node, yaml.ScalarNode) else ""
            shown = f"{value[:40]}..." if len(value) > 40 else value
            tag = node.tag.rsplit(":", 1)[-1]
            reason = str(e).split(";")[0]  # not Python's advice on sys.set_int_max_str_digits
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown!r} as {tag}: {reason}", node.start_mark,
            ) from None


def config_from_mapping(data: object, *, source: str = "<mapping>") -> Config:
    """Validate a parsed mapping (e.g. from YAML) into a :class:`Config`."""
    check_not_another_file(data, source)
    cfg = build(Config, data, source, "")
    check_consistency(cfg, source)
    return dataclasses.replace(cfg, source=source)
