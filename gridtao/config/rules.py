"""The configuration's rules that span several keys (gridtao/config/agent.py reads each key on its
own): checked once the whole file is read, each failure naming the file, the key and why."""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING

from gridtao.config.kinds import KINDS, under_nominal
from gridtao.config.schema import fail
from gridtao.config.site import MAX_NAME_CHARS, check_site
from gridtao.config.work import check_work

if TYPE_CHECKING:
    from gridtao.config.agent import Config, MqttConfig, SimConfig

__all__ = ["GRID_NOMINALS_HZ", "MAX_NODE_ID_CHARS", "OTHER_FILES", "check_consistency",
           "check_not_another_file", "check_transport", "frequency_unsignable", "is_loopback",
           "sim_device_problem"]

MAX_NODE_ID_CHARS = MAX_NAME_CHARS  # a node id is named in site.nodes too
_DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


#: Top-level keys of gridtao's other configuration files, and how to check such a file.
OTHER_FILES = {"vtn": "gridtao openadr --config FILE --check"}


def check_not_another_file(data: object, source: str) -> None:
    """An agent's file is not another command's: one of those is named as such, with the
    command that checks it, instead of as an unknown key."""
    if not isinstance(data, dict):
        return
    for key, check in OTHER_FILES.items():
        if key in data:
            fail(source, key, f"unknown key: this is the key of another gridtao command's "
                              f"file, not an agent's: check it with `{check}`")


#: The grids' nominal frequencies (Hz): those the product kinds are defined on (50 and 60 Hz).
GRID_NOMINALS_HZ = tuple(sorted({kind.nominal_hz for kind in KINDS.values()}))


def _check_trigger_grid(levels: list[float], source: str) -> None:
    """Raw triggers are under-frequency levels of one grid: each below its grid's nominal
    (a level at or above it would cut at normal frequency) and within 5 Hz of it."""
    grids = set()
    for k, hz in enumerate(levels):
        grid = next((n for n in GRID_NOMINALS_HZ if under_nominal(hz, n)), None)
        if grid is None:
            fail(source, f"safety.triggers[{k}].hz", f"{hz:g} Hz is not below a grid's nominal "
                 "frequency (under 50 Hz for a 50 Hz grid, 55 to 60 Hz for a 60 Hz grid): it "
                 "would cut at normal frequency")
        grids.add(grid)
    if len(grids) > 1:
        fail(source, "safety.triggers", "levels for a 50 Hz and a 60 Hz grid at once: a node is "
             "on one grid")


def check_consistency(cfg: Config, source: str) -> None:
    """Rules that span several keys."""
    if cfg.mqtt.reconnect_min_s > cfg.mqtt.reconnect_max_s:
        fail(source, "mqtt.reconnect_min_s", "must be <= mqtt.reconnect_max_s")
    levels = [t.hz for t in cfg.safety.triggers]
    if len(set(levels)) != len(levels):
        fail(source, "safety.triggers", "two triggers share the same hz level")
    _check_trigger_depths(cfg, source)
    _check_trigger_grid(levels, source)
    if cfg.gpus.sim.workload == "trace" and cfg.gpus.sim.trace_csv is None:
        fail(source, "gpus.sim.trace_csv", "required when gpus.sim.workload is 'trace'")
    _check_sim_workloads(cfg.gpus.sim, source)
    _check_sim_daily(cfg.gpus.sim, source)
    device = cfg.gpus.sim.device
    if device is not None and (problem := sim_device_problem(device)) is not None:
        fail(source, "gpus.sim.device", problem)
    for k, fault in enumerate(cfg.gpus.sim.faults):
        if fault.gpu is not None and fault.gpu >= cfg.gpus.sim.count:
            fail(source, f"gpus.sim.faults[{k}].gpu", f"no GPU {fault.gpu} (count is "
                  f"{cfg.gpus.sim.count})")
    if (cfg.audit.enabled and cfg.journal.enabled and cfg.audit.path is not None
            and cfg.audit.path == cfg.journal.path):
        fail(source, "journal.path", "must differ from audit.path")
    if cfg.mqtt.prefix.startswith("$"):
        fail(source, "mqtt.prefix", "topics starting with '$' are the broker's own ($SYS)")
    if not cfg.mqtt.prefix.isprintable():
        fail(source, "mqtt.prefix", "must be printable (no control or formatting characters)")
    for part in ("+", "#"):
        if part in cfg.mqtt.prefix:
            fail(source, "mqtt.prefix", f"MQTT topics must not contain the wildcard {part!r}")
    if "" in cfg.mqtt.prefix.split("/"):
        fail(source, "mqtt.prefix", f"{cfg.mqtt.prefix!r} has an empty topic level (a leading, "
             "trailing or doubled '/'): write it as levels joined by single '/', e.g. "
             "'gridtao/site-1'")
    node = cfg.mqtt.node_id
    if node is not None and any(ch in node for ch in "+#/ "):
        fail(source, "mqtt.node_id", "must be one MQTT topic level: no '+', '#', '/' or space")
    if node is not None and (len(node) > MAX_NODE_ID_CHARS or not node.isprintable()):
        fail(source, "mqtt.node_id", f"must be printable and at most {MAX_NODE_ID_CHARS} "
             "characters (it names this node in every topic and record)")
    _check_timing(cfg, source)
    if cfg.gpus.backend == "sim":
        for k, src in enumerate(cfg.work.sources):
            for j, gpu in enumerate(src.gpus):
                if gpu >= cfg.gpus.sim.count:
                    fail(source, f"work.sources[{k}].gpus[{j}]", f"no GPU {gpu} (gpus.sim.count "
                         f"is {cfg.gpus.sim.count})")
    for key, host in (("mqtt.host", cfg.mqtt.host), ("metrics.host", cfg.metrics.host)):
        if (problem := host_problem(host)) is not None:
            fail(source, key, problem)
    _check_security(cfg, source)
    check_transport(cfg.mqtt, source)
    _check_products(cfg, source)
    check_work(cfg.work, source)
    check_site(cfg.site, source)


def _check_trigger_depths(cfg: Config, source: str) -> None:
    """Each raw trigger cuts something, and a deeper dip never cuts less than a shallower one
    (the deepest crossed level wins: a deeper level that cut less would give power back as
    frequency falls further)."""
    triggers = cfg.safety.triggers
    for k, trig in enumerate(triggers):
        if trig.reduction_fraction <= 0.0:
            fail(source, f"safety.triggers[{k}].reduction_fraction", "must be > 0: a trigger "
                 "that cuts nothing")
    for k, trig in enumerate(triggers):
        for other in triggers:
            if other.hz > trig.hz and other.reduction_fraction > trig.reduction_fraction:
                fail(source, f"safety.triggers[{k}].reduction_fraction",
                     f"{trig.reduction_fraction:g} at {trig.hz:g} Hz is less than "
                     f"{other.reduction_fraction:g} at the shallower {other.hz:g} Hz: a deeper "
                     "dip must cut at least as much")


def _check_timing(cfg: Config, source: str) -> None:
    """Settings that one another's values would defeat."""
    planner, history, tracker = cfg.planner, cfg.history, cfg.tracker
    if planner.enabled and not history.enabled:
        fail(source, "planner.enabled", "the planner forecasts from the minute history: set "
             "history.enabled: true, or planner.enabled: false")
    if planner.enabled and planner.history_days > history.retention_days:
        fail(source, "planner.history_days", f"{planner.history_days} days, but the history "
             f"keeps {history.retention_days:g} (history.retention_days)")
    if planner.margin_quantile is not None and planner.margin_days > planner.history_days:
        fail(source, "planner.margin_days", f"{planner.margin_days} days of misses, but the "
             f"planner reads {planner.history_days} days of history (planner.history_days)")
    if tracker.commitment_ttl_s <= tracker.period_s:
        fail(source, "tracker.commitment_ttl_s", f"{tracker.commitment_ttl_s:g} s lapses before "
             f"tier 2 renews it every {tracker.period_s:g} s (tracker.period_s): make it longer")


def _check_sim_daily(sim: SimConfig, source: str) -> None:
    """``gpus.sim.daily_levels``: 24 levels in [0, 1] with ``daily_shape: custom``, else none."""
    if sim.daily_shape != "custom":
        if sim.daily_levels:
            fail(source, "gpus.sim.daily_levels", "only with gpus.sim.daily_shape: custom")
        return
    if len(sim.daily_levels) != 24:
        fail(source, "gpus.sim.daily_levels", f"24 hourly levels (hour 0 first) with "
             f"daily_shape: custom; {len(sim.daily_levels)} given")
    bad = [k for k, v in enumerate(sim.daily_levels) if not 0.0 <= v <= 1.0]
    if bad:
        fail(source, f"gpus.sim.daily_levels[{bad[0]}]",
             f"{sim.daily_levels[bad[0]]!r} is not a level in [0, 1]")


def _check_sim_workloads(sim: SimConfig, source: str) -> None:
    """``gpus.sim.workloads``: none, or one per GPU; a load only for inference."""
    if sim.workloads and len(sim.workloads) != sim.count:
        fail(source, "gpus.sim.workloads", f"one per GPU: {len(sim.workloads)} listed, "
             f"gpus.sim.count is {sim.count}")
    for k, w in enumerate(sim.workloads):
        if w.kind != "inference" and w.load != 1.0:
            fail(source, f"gpus.sim.workloads[{k}].load", "only inference takes a load")
        if w.kind == "trace" and sim.trace_csv is None:
            fail(source, "gpus.sim.trace_csv", "required when a GPU's workload is 'trace'")


def sim_device_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a simulated device's name (None: nothing)."""
    if _DEVICE_NAME.fullmatch(name):
        return None
    return ("must be a name of 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (it names a file), or null")


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def host_problem(host: str) -> str | None:
    """What is wrong with ``host`` as a host name or IP address (None: nothing)."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if "://" in host:
        return f"{host!r} is a URL: give the host name or address alone (and the port apart)"
    if len(host) > 253 or not _HOST_NAME.fullmatch(host):
        return (f"{host[:64]!r} is neither an IP address nor a host name (letters, digits, "
                "'-' and '.')")
    return None


def check_transport(m: MqttConfig, source: str) -> None:
    """An ``mqtt`` section's credential keys that only make sense together, and no password
    in clear to a broker that is not this machine (files are checked when the process starts:
    gridtao/transport/tls.py). Every process's ``mqtt`` section is checked by this (the agent's,
    the site's, the OpenADR bridge's)."""
    if m.password_file is not None and m.username is None:
        fail(source, "mqtt.username", "required when mqtt.password_file is set")
    if m.username is not None and not m.username.isprintable():
        fail(source, "mqtt.username", "must be printable (one line, no control characters)")
    tls = m.tls
    if (m.password_file is not None and not tls.enabled and not is_loopback(m.host)
            and not m.allow_plaintext_password):
        fail(source, "mqtt.password_file", f"the password would go in clear to {m.host} "
             "(mqtt.tls.enabled is false): anyone on the path could read it and log in as "
             "this node; enable TLS, or set mqtt.allow_plaintext_password: true on a network "
             "you trust")
    if not tls.enabled:
        for name in ("ca_file", "cert_file", "key_file", "server_hostname"):
            if getattr(tls, name) is not None:
                fail(source, f"mqtt.tls.{name}", "set but mqtt.tls.enabled is false: enable TLS "
                      "or remove the key")
    if tls.key_file is not None and tls.cert_file is None:
        fail(source, "mqtt.tls.cert_file", "required when mqtt.tls.key_file is set")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def _check_security(cfg: Config, source: str) -> None:
    auth = cfg.auth
    if auth.mode == "none" and not auth.allow_unauthenticated and not is_loopback(cfg.mqtt.host):
        fail(source, "auth.mode", f"none with the broker at {cfg.mqtt.host}: anyone who can "
             "publish there could cut this node's GPUs; sign dispatches (auth.mode: ed25519 or "
             "hmac), or set auth.allow_unauthenticated: true if the broker's ACL is the only gate "
             "you want")
    if auth.mode == "none" and auth.keys:
        fail(source, "auth.keys", "keys are listed but auth.mode is none: nothing would be "
             "verified; set auth.mode (ed25519 or hmac) or remove the keys")
    if auth.mode != "none" and not auth.keys:
        fail(source, "auth.keys", f"at least one key is required when auth.mode is {auth.mode!r}")
    seen: set[str] = set()
    for k, key in enumerate(auth.keys):
        if key.kid in seen:
            fail(source, f"auth.keys[{k}].kid", f"duplicate key id {key.kid!r}")
        seen.add(key.kid)
        if not key.kid.isprintable() or len(key.kid) > 64:
            fail(source, f"auth.keys[{k}].kid", "must be printable and at most 64 characters")
        if not key.topics:
            fail(source, f"auth.keys[{k}].topics", "must name at least one topic")
    cap = cfg.limits.max_reduction_fraction
    for k, trig in enumerate(cfg.safety.triggers):
        if trig.reduction_fraction > cap:
            fail(source, f"safety.triggers[{k}].reduction_fraction",
                  f"{trig.reduction_fraction:g} exceeds limits.max_reduction_fraction {cap:g}")


def _check_products(cfg: Config, source: str) -> None:
    names: set[str] = set()
    kinds: list[str] = [p.kind for p in cfg.products]
    for k, prod in enumerate(cfg.products):
        key = f"products[{k}]"
        name = prod.name or prod.kind
        if name in names:
            fail(source, f"{key}.name", f"two products are named {name!r}; give each a name")
        names.add(name)
        if not name.isprintable() or any(ch in name for ch in "+#/ "):
            fail(source, f"{key}.name", "must be printable, without spaces, '+', '#' or '/'")
        if prod.kind == "ffr" and prod.support == "short" and cfg.safety.release_rate_per_s > 0.2:
            fail(source, "safety.release_rate_per_s", "short-support FFR ramps out at most "
                  f"20 %/s of its capacity; got {cfg.safety.release_rate_per_s:g}/s")
        info = KINDS[prod.kind]
        problem = (info.threshold_problem(prod.threshold_hz)
                   if prod.threshold_hz is not None and info.has_threshold else None)
        if problem is not None:
            fail(source, f"{key}.threshold_hz", problem)
        for bid in ("bid_step_w", "min_bid_w"):
            if getattr(prod, bid) > prod.capacity_w:
                fail(source, f"{key}.{bid}", f"{getattr(prod, bid):g} W exceeds capacity_w "
                     f"{prod.capacity_w:g} W: the planner could never offer this product")
        if prod.threshold_hz is not None and not info.has_threshold:
            with_threshold = ", ".join(k.name for k in KINDS.values() if k.has_threshold)
            fail(source, f"{key}.threshold_hz", f"{prod.kind} has no threshold (only "
                 f"{with_threshold}): remove the key")
        if prod.support_s is not None and info.activation != "step":
            steps = ", ".join(k.name for k in KINDS.values() if k.activation == "step")
            fail(source, f"{key}.support_s", f"only step products ({steps}) hold a support "
                 "duration: remove the key")
        if prod.baseline_w is not None and not KINDS[prod.kind].symmetric:
            symmetric = ", ".join(k.name for k in KINDS.values() if k.symmetric)
            fail(source, f"{key}.baseline_w", f"only {symmetric} runs at a baseline")
    for info in KINDS.values():
        if info.once_per_node and kinds.count(info.name) > 1:
            why = " (it sets the node's baseline)" if info.symmetric else ""
            words = info.title.lower()
            named = info.name if words == info.name else f"{words} (kind {info.name})"
            fail(source, "products", f"enrol {named} at most once{why}")
    if cfg.safety.triggers and any(KINDS[k].frequency for k in kinds):
        fail(source, "safety.triggers", "frequency products and raw safety.triggers would both "
              "cut on the same dips; set safety.triggers: [] when enrolling products")
    grids = {KINDS[k].nominal_hz for k in kinds if KINDS[k].frequency}
    if len(grids) > 1:
        fail(source, "products", "products of a 50 Hz and a 60 Hz grid at once (e.g. ffr and "
             "ercot-ffr): a node is on one grid")
    listed: dict[int, int] = {}
    for k, prio in enumerate(cfg.tracker.priorities):
        for gpu in prio.gpus:
            if listed.setdefault(gpu, k) != k or prio.gpus.count(gpu) > 1:
                fail(source, f"tracker.priorities[{k}].gpus", f"GPU {gpu} is listed twice "
                     "(each GPU has one priority)")
        if prio.priority == "flexible" and prio.floor_w > 0:
            fail(source, f"tracker.priorities[{k}].floor_w", "only critical GPUs have a floor")
        if not prio.gpus or any(g < 0 for g in prio.gpus):
            fail(source, f"tracker.priorities[{k}].gpus", "list one or more GPU indices >= 0")


def frequency_unsignable(cfg: Config) -> str | None:
    """Why no frequency sample can ever act on this node, or None: signed mode requires signed
    samples (``auth.require_signed_frequency``), something acts on frequency (raw
    ``safety.triggers`` or a frequency product), and no key in ``auth.keys`` may sign the
    ``frequency`` topic. A warning, not an error: a node may enrol for dispatch alone."""
    auth = cfg.auth
    if auth.mode == "none" or not auth.require_signed_frequency:
        return None
    products = any(KINDS[p.kind].frequency for p in cfg.products)
    if not (cfg.safety.triggers or products):
        return None
    if any("frequency" in key.topics for key in auth.keys):
        return None
    what = "frequency products" if products else "safety.triggers"
    return (f"auth.keys: no key may sign the frequency topic, and auth.require_signed_frequency "
            f"is true: every frequency sample will be refused, so the {what} can never act; "
            "list the meter's key with topics [frequency], or remove the triggers")

