"""``gridtao check-config``: everything the agent checks in its configuration before it opens a
GPU or a broker connection, and nothing more, then exit.

For operators editing a node's file (and a deployment's pre-start hook, as ``nginx -t`` or
``promtool check config`` are used): the file's schema and cross-key rules (checked as it is
loaded), the agent's own files (audit trail, journal, replay store, history: each a file of its
own), every key and broker-credential file (signing keys, TLS, password, the site
coordinator's signing key), the simulated GPUs' trace and the planner's signals file when set
(one refused for its time alone, a late feed, is a warning: the agent starts and plans without
it), and the machine's simulated device when it exists and would be used. Exit 0 with a
summary on stdout; 2 with one line naming the file, the key and the problem. What needs the
GPUs or the broker (priority floors against the GPUs' real limits, the broker's answer) is left
to the agent and ``gridtao check-broker``. The site coordinator's file is checked for what
``gridtao site`` needs instead (gridtao/cli/checksite.py).
"""

from __future__ import annotations

import argparse
import sys
import time

from gridtao.cli.checksite import (
    add_role_options,
    check_site_files,
    check_site_keys,
    file_sections,
    for_site,
    site_summary,
)
from gridtao.config.agent import Config, ConfigError
from gridtao.errors import one_line

__all__ = ["configure_check_config", "run_check_config", "site_line", "split_line",
           "summary"]


def configure_check_config(p: argparse.ArgumentParser) -> None:
    add_role_options(p)  # --config names the file, as for every command


def run_check_config(args: argparse.Namespace, config: Config) -> int:
    if for_site(args, config):
        from gridtao.site.meterauth import meter_unsignable

        kids = check_site_files(config)
        unreadable = meter_unsignable(config)
        if unreadable is not None:
            _warn(config, unreadable)
        print(site_summary(config, kids=kids))
        return 0
    from gridtao.app.options import default_node_id
    from gridtao.app.planning import checked_signals_file
    from gridtao.app.reload import read_credentials
    from gridtao.config.paths import with_state_paths
    from gridtao.config.rules import frequency_unsignable
    from gridtao.gpu.sim.devices import load_configured_trace

    node_id = config.mqtt.node_id or default_node_id()
    resolved = with_state_paths(config, node_id)
    credentials = read_credentials(resolved)
    if resolved.gpus.sim.trace_csv is not None and resolved.gpus.backend != "nvml":
        try:  # as the simulator reads it, said as the agent says it
            load_configured_trace(resolved.gpus.sim)
        except ConfigError as e:
            raise ConfigError(f"{config.source}: {e}") from None
    # A late feed is the feed's, not the file's: the agent starts and plans without it.
    checked_signals_file(resolved, time.time(), where=f"{config.source}: planner.signals_file",
                         out_of_date=lambda line: print(
                             f"gridtao: warning: {one_line(line)}: the agent starts and plans "
                             "without it until a fresh one comes", file=sys.stderr))
    unsignable = frequency_unsignable(resolved)
    if unsignable is not None:
        _warn(config, unsignable)
    if resolved.site.signing.mode != "none":  # what `gridtao site` signs its orders with
        check_site_keys(resolved)
    simulated = _simulated(resolved)
    if simulated:
        _check_sim_device(resolved)
        _check_sim_priorities(resolved)
    print(summary(resolved, node_id, kids=list(credentials.verifier.kids)
                  if credentials.verifier is not None else [], simulated=simulated,
                  site="site" in file_sections(config)))
    return 0


def _warn(config: Config, problem: str) -> None:
    """A problem that does not stop the file from working: said on stderr, exit 0."""
    print(f"gridtao: warning: {config.source}: {problem}", file=sys.stderr)


def _simulated(config: Config) -> bool:
    """Whether the agent would run on simulated GPUs: ``sim``, or ``auto`` without the
    driver."""
    from gridtao.gpu import driver_present

    backend = config.gpus.backend
    return backend == "sim" or (backend == "auto" and not driver_present())


def _check_sim_device(config: Config) -> None:
    """The machine's simulated device, when this configuration names one and it exists,
    against this configuration's GPUs: the agent refuses to start on one made with other
    settings (``gridtao sim status`` shows it). Nothing is created or opened for writing."""
    from gridtao.config.paths import sim_device_path
    from gridtao.gpu.sim.devices import device_params
    from gridtao.gpu.sim.shared import DeviceFile, SimDeviceError, check_params

    gpus = config.gpus
    if gpus.sim.device is None:
        return
    path = sim_device_path(gpus.sim.device)
    try:
        info = DeviceFile.peek(path)
        if info is not None:
            check_params(info, device_params(gpus.sim), path)
    except SimDeviceError as e:
        raise ConfigError(f"{config.source}: {e}") from None


def _check_sim_priorities(config: Config) -> None:
    """``tracker.priorities`` against the GPUs this configuration simulates (their indices and
    limits are the configuration's own; real GPUs' are checked by the agent at start)."""
    import dataclasses

    from gridtao.app.checks import check_priority_floors
    from gridtao.clock import VirtualClock
    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.gpu.sim.nvml import SimNvml

    gpus = config.gpus
    if not config.tracker.priorities:
        return
    # In this process and on a virtual clock: nothing is created or written on the machine.
    sim = SimNvml(VirtualClock(), dataclasses.replace(gpus.sim, device=None, faults=(),
                                                      workload="idle", workloads=()))
    with NvmlBackend(sim) as backend:
        indices = [d.index for d in backend.devices()]
        check_priority_floors(config, indices, [backend.power_limits(i) for i in indices])


def split_line(config: Config, *, simulated: bool) -> str:
    """How tier 1 will split a node cut between GPUs, and why it may not be as configured (the
    agent says the same at start: gridtao/app/workmodel.py). The GPUs a source must cover are
    known here only when ``simulated`` (the agent would run on simulated GPUs); real GPUs are
    counted by the agent."""
    if config.control.allocation != "work-aware":
        return "split proportionally (control.allocation)"
    sources = config.work.sources
    if not sources:
        return ("work-aware asked, but work.sources lists no work: cuts will be split "
                "proportionally")
    covered = {g for s in sources for g in s.gpus}
    line = f"work-aware, {len(sources)} work source(s) on GPU(s) {_indices(covered)}"
    if simulated:
        missing = set(range(config.gpus.sim.count)) - covered
        if missing:
            return (f"{line}; no source names simulated GPU(s) {_indices(missing)}: cuts will "
                    "be split proportionally")
    return line


def site_line(config: Config) -> str:
    """What ``gridtao site`` would run with this file (the same file may serve both)."""
    site = config.site
    signing = (f"signs as {site.signing.kid!r} ({site.signing.mode})"
               if site.signing.mode != "none" else "signs nothing")
    nodes = f"{len(site.nodes)} node(s) expected" if site.nodes else "nodes as they appear"
    return f"for gridtao site: id {site.id}, {nodes}, {signing}"


def _indices(indices: set[int]) -> str:
    return ", ".join(str(i) for i in sorted(indices))


def summary(config: Config, node_id: str, *, kids: list[str], simulated: bool,
            site: bool = False) -> str:
    """What the configuration sets up, in a few lines (the first says it is valid).
    ``simulated``: the agent would run on simulated GPUs (``sim``, or ``auto`` without the
    driver); ``site``: the file has a ``site:`` section too (one file serving both), so a line
    says what ``gridtao site`` would run with it."""
    mqtt = config.mqtt
    products = ", ".join(f"{p.name or p.kind} {p.capacity_w:g} W" for p in config.products)
    auth = config.auth.mode if config.auth.mode == "none" else (
        f"{config.auth.mode}, keys {', '.join(kids) or '(none)'}")
    gpus = config.gpus
    sim = (f", simulated: {gpus.sim.count} x {gpus.sim.profile} "
           f"({'in-process' if gpus.sim.device is None else 'device ' + gpus.sim.device})"
           if simulated else "")
    lines = [
        f"ok: {one_line(config.source)}",
        f"node      {node_id}",
        f"gpus      backend {gpus.backend}{sim}",
        f"broker    {mqtt.host}:{mqtt.port}, prefix {mqtt.prefix}, "
        f"TLS {'on' if mqtt.tls.enabled else 'off'}",
        f"signing   {auth}",
        f"products  {products or f'none (raw safety.triggers: {len(config.safety.triggers)})'}",
        f"cuts      {split_line(config, simulated=simulated)}",
        *([f"site      {site_line(config)}"] if site else []),
        f"records   audit {config.audit.path if config.audit.enabled else 'off'}; "
        f"journal {config.journal.path if config.journal.enabled else 'off'}",
        f"planner   {planner_line(config)}",
    ]
    return "\n".join(lines)


def planner_line(config: Config) -> str:
    """Tier 3 and the history it reads, in a line."""
    history = (f"history {config.history.path} (kept {config.history.retention_days:g} days)"
               if config.history.enabled else "history off")
    p = config.planner
    if not p.enabled:
        return f"off; {history}"
    signals = p.signals_file or f"from {config.mqtt.prefix}/signals only"
    return (f"every {p.period_s:g} s, {p.horizon_h} h of {p.mtu_s // 60}-minute units, "
            f"signals {signals}, unawarded: {p.unawarded}; {history}")
