"""``gridtao sim``: the machine-wide simulated GPUs (gridtao/gpu/sim/shared.py).

* ``gridtao sim create``: create the configuration's device (``gpus.sim.device``) if there is
  none, with every GPU at its default limit; an existing one is left as it is (its settings
  must match the configuration's).
* ``gridtao sim status [--json]``: the device's file, when it was created, its settings, and per
  GPU the limit, the power and who set the limit last (pid and time); nothing is created.
* ``gridtao sim set-limit [--gpu I] --watts W``: an operator's ``nvidia-smi -i I -pl W`` on
  the device (every GPU without ``--gpu``): the limit is written as another process writes
  it, so a running agent sees a limit it did not set. Refused (exit 2), writing nothing, when
  the device does not exist, the GPU is not there or the limit is outside its range; a
  driver error during the writes exits 2 too, with the GPUs written before it said.
* ``gridtao sim destroy [--force]``: the analogue of a driver reload: processes holding the
  device see their GPUs lost, and the next open creates it afresh at the default limits.
  Refused (exit 2) while another process holds it open, unless ``--force``.
* ``gridtao sim serve-work [--device NAME] [--port P] [--host H] [--gpus 0,1] [--model NAME]
  [--kind vllm|custom]``: serve the work the device's GPUs do (tokens, or training samples;
  gridtao/gpu/sim/workserver.py) as Prometheus counters in vLLM's names, on
  ``http://H:P/metrics`` (said on stdout as ``serving URL`` once it listens), until
  SIGINT/SIGTERM. It never sets a limit; the device must exist.
* ``gridtao sim meter --devices N1,N2 [--losses F] ... [--key FILE --kid ID [--alg A]]``: a
  simulated site meter gateway (gridtao/site/metersim.py) publishing ``{prefix}/meter``
  readings of those devices' true power, signed with ``--key`` as ``--kid`` for a site in
  signed mode.

``--device NAME`` names another device than the configuration's. Exit 0 on success, 1 when
``status`` finds no device (or ``serve-work`` loses its GPUs), 2 with one line on stderr for a
bad device or option.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from gridtao.cli.argtypes import number, whole
from gridtao.cli.security import add_key_options, signing_key
from gridtao.config.agent import Config, ConfigError, sim_device_problem

EXIT_OK = 0
EXIT_NONE = 1
EXIT_ERROR = 2


def configure_sim(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", metavar="NAME", default=None,
                   help="the device's name (default: the configuration's gpus.sim.device)")
    sub = p.add_subparsers(dest="sim_command", metavar="ACTION", required=True)
    sub.add_parser("create", help="create the simulated device (GPUs at their default limits)",
                   description="Create the machine-wide simulated device named by "
                               "gpus.sim.device; an existing one is kept.")
    status = sub.add_parser("status", help="the device's settings and its GPUs' limits",
                            description="Show the device's file, settings and per GPU the "
                                        "limit, the power and who last set the limit.")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    destroy = sub.add_parser(
        "destroy", help="remove the device (like a driver reload)",
        description="Remove the device: processes holding it see their GPUs lost; the next "
                    "open creates it at the default limits. Refused while another process "
                    "holds it open (an agent would lose its GPUs), unless --force.")
    set_limit = sub.add_parser(
        "set-limit", help="set a GPU's power limit from outside (nvidia-smi -i I -pl W)",
        description="Set the power limit of one GPU (or every GPU) of the device, as an "
                    "operator's `nvidia-smi -i I -pl W` does on a real server: a running agent "
                    "sees a limit it did not write and follows its policy for it (README, "
                    "\"Limits set from outside\"). The device must exist.")
    set_limit.add_argument("--gpu", metavar="I", type=whole(0), default=None,
                           help="the GPU's index (default: every GPU)")
    set_limit.add_argument("--watts", metavar="W", type=number(0, unit="W", above_lo=True),
                           required=True, help="the new limit, W, within the GPU's [min, max]")
    destroy.add_argument("--force", action="store_true",
                         help="destroy it even while other processes hold it open")
    _configure_serve_work(sub.add_parser(
        "serve-work", help="serve the GPUs' simulated work (tokens, samples) for scraping",
        description="Serve the work the device's GPUs do under their limits as Prometheus "
                    "counters in vLLM's names (vllm:generation_tokens_total, "
                    "vllm:prompt_tokens_total) or, for training, "
                    "gridtao_sim_training_samples_total, until SIGINT/SIGTERM. Never sets a "
                    "limit."))
    meter = sub.add_parser(
        "meter", help="publish a simulated site meter for machine-wide simulated devices",
        description="Publish {prefix}/meter readings ({\"t\", \"w\"}): the true power of the "
                    "named devices' GPUs through a facility of its own (losses, cooling with "
                    "its lag, a fixed load), until SIGINT/SIGTERM. The site coordinator's "
                    "meter feedback reads them.")
    meter.add_argument("--devices", metavar="NAME,NAME,...", required=True,
                       help="the simulated devices behind the meter (gpus.sim.device names)")
    meter.add_argument("--losses", type=float, default=0.03, metavar="F",
                       help="distribution losses as a share of IT power (default 0.03)")
    meter.add_argument("--cop", type=float, default=4.5,
                       help="cooling's coefficient of performance (default 4.5)")
    meter.add_argument("--cooling-tau", type=float, default=120.0, metavar="S",
                       help="cooling's lag behind IT heat, s (default 120)")
    meter.add_argument("--fixed", type=float, default=0.0, metavar="W",
                       help="the site's constant load, W (default 0)")
    meter.add_argument("--period", type=float, default=0.5, metavar="S",
                       help="seconds between readings (default 0.5)")
    add_key_options(meter.add_argument_group(
        "signing", "sign every reading, for a site in signed mode (its auth.keys lists the "
        "key with topics [meter]); --key and --kid together"), required=False)


def _configure_serve_work(p: argparse.ArgumentParser) -> None:
    # Also accepted after the action (a default of SUPPRESS keeps the one given before it).
    p.add_argument("--device", metavar="NAME", default=argparse.SUPPRESS,
                   help="the device's name (default: the configuration's gpus.sim.device)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000,
                   help="the port to listen on (default: 8000, vLLM's; 0: any free port)")
    p.add_argument("--gpus", metavar="I,J,...", default=None,
                   help="the GPU indices the server runs on, summed (default: all)")
    p.add_argument("--model", default="gridtao-sim",
                   help="the model_name label of the vllm counters (default: gridtao-sim)")
    p.add_argument("--kind", choices=("vllm", "custom"), default=None,
                   help="vllm: token counters in vLLM's names; custom: "
                        "gridtao_sim_training_samples_total (training) or "
                        "gridtao_sim_generation_tokens_total (default: vllm, custom for a "
                        "training device)")


def _fail(message: str) -> int:
    print(f"gridtao: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def run_sim(args: argparse.Namespace, config: Config) -> int:
    from gridtao.config.paths import sim_device_path
    from gridtao.gpu.sim.shared import DeviceFile, SimDeviceError

    if args.sim_command == "meter":
        return _meter(args, config)
    name = args.device if args.device is not None else config.gpus.sim.device
    if name is None:
        return _fail("gpus.sim.device is null (in-process GPUs): there is no machine-wide "
                     "device; name one with --device NAME")
    problem = sim_device_problem(name)
    if problem is not None:
        return _fail(f"--device: {problem}")
    sim_cfg = dataclasses.replace(config.gpus.sim, device=name)
    path = sim_device_path(name)
    if args.sim_command == "serve-work":
        return _serve_work(args, path)
    try:
        if args.sim_command == "destroy":
            holders = DeviceFile.holders(path)
            if holders and not args.force:
                return _fail(f"{path} is held open by pid {', '.join(map(str, holders))}: "
                             "destroying it would take their GPUs away (an agent stops with "
                             "its GPUs lost); stop them first, or use --force")
            gone = DeviceFile.destroy(path)
            print(f"destroyed {path}" if gone else f"no device at {path}")
            return EXIT_OK
        if args.sim_command == "set-limit":
            return _set_limit(path, args.gpu, args.watts)
        if args.sim_command == "create":
            info = DeviceFile.peek(path)
            device = _open(sim_cfg, path).device
            if device is not None:
                device.close()
            print(f"{'kept' if info is not None else 'created'} {path} "
                  f"({sim_cfg.count} x {sim_cfg.profile})")
            return EXIT_OK
        report = _status(path)
        if report is None:
            print(f"no simulated device at {path} (created on first use, or by "
                  "`gridtao sim create`)", file=sys.stderr)
            return EXIT_NONE
    except (SimDeviceError, ConfigError, OSError) as e:
        # A key of the configuration (a trace file, a setting the device was made without) is
        # named with the file it comes from, as every configuration error is.
        said = str(e)
        keyed = isinstance(e, ConfigError) and said.startswith("gpus.sim.")
        return _fail(f"{config.source}: {said}" if keyed else said)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_status(report))
    return EXIT_OK


def _meter(args: argparse.Namespace, config: Config) -> int:
    import asyncio
    import signal

    from gridtao.clock import MonotonicClock
    from gridtao.config.paths import sim_device_path
    from gridtao.control.tier2.facility import FacilityModel
    from gridtao.site.metersim import (
        Encode,
        SimulatedMeter,
        open_devices,
        run_meter,
        signed_readings,
    )
    from gridtao.transport.mqtt import new_event_loop
    from gridtao.wire.site import site_payload

    names = [n for n in args.devices.split(",") if n]
    if not names:  # a meter of no devices would publish the fixed load alone, as if measured
        return _fail("--devices: name at least one simulated device")
    for name in names:
        problem = sim_device_problem(name)
        if problem is not None:
            return _fail(f"--devices: {problem}")
    if not 0 < args.period <= 3600:
        return _fail(f"--period must be in (0, 3600] s, got {args.period:g}")
    try:
        model = FacilityModel(args.losses, args.cop, args.cooling_tau, args.fixed)
    except ValueError as e:
        return _fail(f"--losses/--cop/--cooling-tau/--fixed: {e}")
    encode: Encode = site_payload
    if (args.key is None) != (args.kid is None):
        return _fail("--key and --kid: give both to sign the readings, or neither")
    if args.key is not None:
        try:
            key, alg = signing_key(args)
        except ConfigError as e:
            return _fail(str(e))
        encode = signed_readings(key, args.kid, alg)
    clock = MonotonicClock()
    meter = SimulatedMeter(open_devices([sim_device_path(n) for n in names], clock), model,
                           clock)
    loop = new_event_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(run_meter(config, meter, period_s=args.period, stop=stop,
                                          encode=encode))
    finally:
        loop.close()
    return EXIT_OK


def _parse_gpus(text: str) -> tuple[int, ...] | None:
    """``"0,1"`` as indices; None when malformed."""
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        return None
    return gpus if all(i >= 0 for i in gpus) else None


def _serve_work(args: argparse.Namespace, path: Path) -> int:
    from gridtao.gpu.sim.workserver import SimWork, WorkServerError, print_ready, serve

    gpus = None
    if args.gpus is not None:
        gpus = _parse_gpus(args.gpus)
        if gpus is None:
            return _fail(f"--gpus: expected GPU indices like 0,1; got {args.gpus!r}")
    if not 0 <= args.port <= 65535:
        return _fail(f"--port: must be 0-65535, got {args.port}")
    if not args.model or not args.model.isprintable() or len(args.model) > 200:
        return _fail("--model: must be 1-200 printable characters")
    try:
        work = SimWork(path, gpus=gpus, kind=args.kind, model_name=args.model)
        return serve(work, host=args.host, port=args.port, ready=print_ready)
    except WorkServerError as e:
        return _fail(str(e))


def _open(sim_cfg: Any, path: Path) -> Any:
    from gridtao.clock import MonotonicClock
    from gridtao.gpu.sim.nvml import SimNvml

    return SimNvml.from_config(sim_cfg, MonotonicClock(), device_path=path)


def _set_limit(path: Path, gpu: int | None, watts: float) -> int:
    """Write ``watts`` to GPU ``gpu`` (None: every GPU) of the device at ``path`` through the
    NVML path, as another process on the machine would; says each change as nvidia-smi does.
    Exit 2 when there is no device, no such GPU, or the limit is out of the GPU's range
    (nothing is written then), or when a driver call fails (the GPUs said set before it
    are)."""
    from gridtao.clock import MonotonicClock
    from gridtao.gpu.backend import GpuError
    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.gpu.sim.nvml import SimNvml

    sim = SimNvml.open_existing(path, MonotonicClock())
    if sim is None:
        return _fail(f"no simulated device at {path} (created on first use, or by "
                     "`gridtao sim create`)")
    try:
        backend = NvmlBackend(sim)
        if gpu is not None and gpu >= sim.count:
            return _fail(f"--gpu {gpu}: the device has GPUs 0 to {sim.count - 1}")
        indices = range(sim.count) if gpu is None else (gpu,)
        limit_mw = round(watts * 1000)
        for i in indices:  # every GPU checked before any is written
            lim = backend.power_limits(i)
            if not lim.min_mw <= limit_mw <= lim.max_mw:
                return _fail(f"--watts {watts:g}: GPU {i} takes limits from "
                             f"{lim.min_mw / 1000:g} to {lim.max_mw / 1000:g} W")
        for i in indices:
            before = backend.enforced_limit_mw(i)
            after = backend.set_limit_mw(i, limit_mw)
            print(f"Power limit for GPU {i} was set to {after / 1000:.2f} W from "
                  f"{before / 1000:.2f} W.")
        return EXIT_OK
    except GpuError as e:  # the GPUs printed above were set
        return _fail(str(e))
    finally:
        if sim.device is not None:
            sim.device.close()


def _status(path: Path) -> dict[str, Any] | None:
    """Open the device with its own settings and read every GPU (advancing it to now); None
    when there is no device (none is created)."""
    from gridtao.clock import MonotonicClock
    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.gpu.sim.nvml import SimNvml
    from gridtao.transport.instance import pid_alive

    sim = SimNvml.open_existing(path, MonotonicClock())
    if sim is None:
        return None
    device = sim.device
    assert device is not None
    try:
        info = device.info
        gpus = []
        backend = NvmlBackend(sim)  # the readings any process gets, through the NVML path
        for i in range(sim.count):
            limit_w = backend.enforced_limit_mw(i) / 1000
            power_w = backend.instant_power_mw(i) / 1000
            energy_j = backend.energy_mj(i) / 1000
            device.lock(i)
            try:
                record = device.read(i)  # who set the limit: the device's own bookkeeping
            finally:
                device.unlock(i)
            work = sim.workloads[i]
            # Work waiting (an inference server's queue), as seconds of the GPU flat out.
            queued_s = sim.work_j(i).backlog_j / sim.profile.max_w
            gpus.append({
                "index": i, "workload": work.kind, "load": work.load,
                "limit_w": round(limit_w, 3), "power_w": round(power_w, 1),
                "energy_j": round(energy_j, 3), "work_queued_s": round(queued_s, 3),
                "limit_set_by_pid": record.limit_pid or None,
                "limit_set_at": record.limit_set_wall or None,
                "limit_setter_alive": (pid_alive(record.limit_pid) if record.limit_pid
                                       else None),
            })
        return {"path": str(path), "created_at": info.created_wall,
                "boot_id": info.boot_id, "settings": info.params, "gpus": gpus}
    finally:
        device.close()


def _workloads(report: dict[str, Any]) -> str:
    """One kind for the whole device, or "mixed" (each GPU's is in its row)."""
    kinds = {g["workload"] for g in report["gpus"]}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def format_status(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"device   {report['path']}",
        f"created  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(report['created_at']))}",
        f"GPUs     {s['count']} x {s['profile']}, workload {_workloads(report)}, "
        f"seed {s['seed']}",
        "",
        "GPU  workload         limit W  power W     energy J  queued s  limit set by",
    ]
    for g in report["gpus"]:
        if g["limit_set_by_pid"] is None:
            who = "nobody (default)"
        else:
            when = time.strftime("%H:%M:%S", time.localtime(g["limit_set_at"]))
            state = "running" if g["limit_setter_alive"] else "gone"
            who = f"pid {g['limit_set_by_pid']} ({state}) at {when}"
        work = g["workload"] if g["load"] == 1.0 else f"{g['workload']} x{g['load']:g}"
        lines.append(f"{g['index']:>3}  {work:<15}  {g['limit_w']:>7.1f}  {g['power_w']:>7.1f}  "
                     f"{g['energy_j']:>11.1f}  {g['work_queued_s']:>8.2f}  {who}")
    return "\n".join(lines)
