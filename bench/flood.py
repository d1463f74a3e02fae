"""Genuine triggers under a flood of junk: real Mosquitto, the agent in its own process, the
attackers in processes of their own, and an idle baseline measured in the same run.

Target (judged by :func:`gridtao.bench.floodreport.judge_targets`; BENCHMARKS.md, "Flood"):

    Under a 20,000-message flood of invalid dispatches and a 10,000 samples/s storm of invalid
    frequency, a genuine FFR trigger is commanded within 50 ms p99 of publish, a genuine signed
    dispatch within 100 ms p99, and every genuine ack is delivered. The agent's peak resident
    memory during the flood stays under 100 MiB.

``gridtao bench flood [--triggers N] [--dispatch-junk N] [--frequency-junk-rate R]
[--agent-nice N] [--json FILE] [--markdown FILE]`` runs, against one Mosquitto on 127.0.0.1 and
one ``gridtao run`` (8 simulated GPUs in real time, ``auth.mode: ed25519``, two keys:
``aggregator`` may sign dispatches only, ``meter`` frequency only):

1. **idle**: ``N`` genuine FFR triggers and ``N`` genuine signed ``shed`` dispatches, alternated,
   nothing else on the broker;
2. **flood**: the same sequence again while two attacker processes (each its own paho connection
   and its own interpreter, so neither shares a GIL with the measuring code) publish

   * ``--dispatch-junk`` invalid dispatches as fast as the broker takes them, at QoS 1 by default
     (``--dispatch-junk-qos``; the topic's contract), a third each: malformed JSON, a
     well-formed ``shed`` without a signature, and a well-formed ``shed`` signed as
     ``aggregator`` with a random signature (the dearest: a full verification);
   * invalid frequency samples at ``--frequency-junk-rate`` per second, QoS 0 (the topic's
     contract), for the whole flood phase (as long as its genuine sequence takes), a third
     each: malformed, an unsigned dip to 49.0 Hz, a dip signed as ``meter`` with a random
     signature.

   A subscriber that reads more slowly than messages arrive makes Mosquitto queue up to its
   ``max_queued_messages`` (default 1000) per client and drop the rest, QoS 1 included; the
   report counts its "Outgoing messages are being dropped" warnings.

A genuine **FFR trigger** is a grid dip as a meter reports it: the bench's meter publishes a
signed sample every ``METER_PERIOD_S`` (50 ms, nominal 50.0 Hz) throughout; a trigger switches it
to 49.4 Hz (the first dip sample at once) until the agent's ack arrives, then back to 50.0 Hz so
the event recovers. Its latency is publish of the *first* dip sample -> ``commanded_at`` of the
``ffr-`` ack, matched by the ack's ``sample_t`` (the firing sample's own ``t``), so a first
sample the broker dropped counts against the agent, not for it. A genuine **dispatch** is a
signed ``shed`` of 30 % for 0.35 s (QoS 1), matched by id, sent once: the bench's aggregator
does not retry, so a dispatch the broker or the agent drops shows as never acked.

Measured per trigger, in ms, Unix clock of this one machine: ``publish_to_command`` (the target),
``publish_to_receive`` (the broker and the agent's socket: where a backlog waits) and
``receive_to_command`` (the agent's inbox and lane). Counted: each genuine trigger's first ack
and its ``reached_at`` ack (a second ack once measured power is in the band), acks still
arriving within ``DRAIN_S`` after the flood count as delivered (late); reject acks seen; any
accepted activation that no genuine trigger explains (a forgery getting through: must be 0).
From the agent's audit trail after the run: how many junk messages the agent actually handled
per topic, records lost (``gap``; the counts are then lower bounds), and when it handled its
last junk dispatch (so each genuine trigger is known to have met the junk backlog or not).
Memory: the agent's ``VmRSS`` sampled every 50 ms per phase and ``VmHWM`` (its peak since start)
at the end; CPU: the agent's user + system time per phase as % of one core. The attackers
report what rate they achieved: on a small machine they share its cores with the agent and the
broker, which the report states.

Settings that differ from the defaults, and why (everything else, ``limits.*`` rates and the
reject-ack budget included, is the default):

* ``gpus.backend: sim`` (8 GPUs), ``mqtt``: the bench broker, prefix ``gridtao/flood``;
* ``auth``: ``ed25519`` (``--auth hmac`` possible) with the two bench keys made in the run's
  temporary folder; ``require_signed_frequency: true`` (the default, stated);
* ``safety.triggers``: one level, 49.5 Hz, reduction 0.3, ``min_hold_s`` 0.3, ``recovery_s``
  0.2 (default: three Nordic levels held >= 5 s), and ``safety.release_rate_per_s: 20``
  (default 0.2: a 5 s ramp-out): events short enough for 2 x N triggers in a few minutes;
* ``limits.min_event_interval_s: 0`` (default 1): genuine cuts come about a second apart;
* ``metrics.enabled: false``: nothing scrapes it, and no fixed port to collide on;
* audit trail and journal ON (the defaults) in a temporary ``STATE_DIRECTORY``: their cost
  under a flood is part of what is measured;
* the agent runs at nice ``--agent-nice`` (default -10, as deploy/systemd/gridtao-agent.service
  starts it, where the bench may start a process so, i.e. with CAP_SYS_NICE; else 0, said on
  stderr; ``0``: a plain process), read back from ``/proc`` into the report (a run whose agent
  is not at the nice asked fails); the broker, the attackers and the genuine senders at the
  bench's own (0 from a shell).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from gridtao.app.simdevice import private_device
from gridtao.bench.floodagent import Agent, RssSampler, audit_counts, broker_drop_lines
from gridtao.bench.floodattack import Attacker, attack
from gridtao.bench.floodgenuine import AckBook, Genuine
from gridtao.bench.floodreport import markdown, result_of
from gridtao.bench.floodsetup import (
    AGENT_NICE,
    DRAIN_S,
    NODE,
    PREFIX,
    READY_TIMEOUT_S,
    Keys,
    Options,
    agent_yaml,
    make_keys,
)
from gridtao.bench.render import check_outputs, write_outputs
from gridtao.telemetry.runinfo import provenance
from gridtao.transport.localbroker import MosquittoBroker, Publisher, Subscriber

# ---- the run -----------------------------------------------------------------------------------


def run(opts: Options, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The idle phase, then the flood phase, on one broker and one agent process; the result
    (see :func:`main` for the JSON it becomes)."""
    with tempfile.TemporaryDirectory(prefix="gridtao-flood-") as tmp, \
            private_device("bench-flood") as device:
        workdir = Path(tmp) if opts.keep_dir is None else opts.keep_dir
        workdir.mkdir(parents=True, exist_ok=True)
        state = workdir / "state"
        state.mkdir()
        with MosquittoBroker(workdir / "mosquitto") as broker:
            keys = make_keys(opts.alg, workdir)
            cfg_path = workdir / "agent.yaml"
            cfg_path.write_text(yaml.safe_dump(agent_yaml(broker.port, opts.gpus, keys,
                                                          device)))
            progress(f"broker 127.0.0.1:{broker.port}; {opts.gpus} simulated GPUs; "
                     f"{opts.triggers} genuine triggers per kind and phase; {opts.alg}")
            measured = _measure(broker, cfg_path, state, workdir, keys, opts, progress)
            measured["audit"] = audit_counts(state)
            measured["broker_drop_warnings"] = broker_drop_lines(broker)
            measured["agent_log_lines"] = len(
                (workdir / "agent.log").read_bytes().splitlines())
    return result_of(opts, measured)


def _measure(broker: MosquittoBroker, cfg_path: Path, state: Path, workdir: Path, keys: Keys,
             opts: Options, progress: Callable[[str], None]) -> dict[str, Any]:
    agent = Agent(cfg_path, state, workdir / "agent.log", nice=opts.agent_nice)
    attackers: list[Attacker] = []
    rss: RssSampler | None = None
    out: dict[str, Any] = {"phases": {}}
    try:
        with Subscriber(broker.host, broker.port, f"{PREFIX}/nodes/{NODE}/status") as status:
            status.wait(1, timeout=READY_TIMEOUT_S)  # retained online status: the agent is up
        out["agent_nice"] = agent.nice()  # the agent's interpreter by now, not nice(1)
        if out["agent_nice"] != opts.agent_nice:  # nice(1) warns in the log and runs it anyway
            raise RuntimeError(f"the agent runs at nice {out['agent_nice']}, not the "
                               f"{opts.agent_nice} asked (see {agent.log_path})")
        # Started now, so their interpreters' start-up is not part of the flood phase.
        attackers = [
            Attacker("dispatch", broker, opts.alg, count=opts.dispatch_junk,
                     qos=opts.dispatch_junk_qos),
            Attacker("frequency", broker, opts.alg, rate=opts.frequency_junk_rate),
        ]
        for attacker in attackers:
            attacker.wait_ready()
        rss = RssSampler(agent)
        with Subscriber(broker.host, broker.port, f"{PREFIX}/nodes/{NODE}/ack") as acks, \
                Publisher(broker.host, broker.port) as pub:
            genuine = Genuine(pub, AckBook(acks), keys)
            genuine.settle(1.5)  # the meter's feed, tier 1's first readings, the island armed
            for phase in ("idle", "flood"):
                rss.phase = phase
                cpu0, t0, wall0 = agent.cpu_s(), time.monotonic(), time.time()
                if phase == "flood":
                    for attacker in attackers:
                        attacker.go()
                genuine.sequence(phase, opts.triggers, progress)
                seconds = time.monotonic() - t0
                cpu = 100.0 * (agent.cpu_s() - cpu0) / seconds
                out["phases"][phase] = {"seconds": seconds, "started_at": wall0,
                                        "agent_cpu_percent": cpu}
                if phase == "flood":
                    out["attack"] = {a.kind: a.finish() for a in attackers}
                    failed = [f"the {kind} attacker: {s.get('error') or 'no summary'}"
                              for kind, s in out["attack"].items()
                              if s.get("error") or s.get("sent") is None]
                    if failed:  # no flood, nothing measured under one
                        raise RuntimeError("; ".join(failed))
            rss.phase = "drain"
            progress(f"  drain: up to {DRAIN_S:.0f} s for {genuine.missing()} acks still owed")
            genuine.until(lambda: genuine.missing() == 0, DRAIN_S)
            out["vmhwm_mib"] = agent.status_kib("VmHWM") / 1024.0
            out["triggers"] = genuine.triggers
            out["acks"] = genuine.book.acks
    finally:
        if rss is not None:
            rss.close()
        for attacker in attackers:
            attacker.kill()
        died = agent.proc.poll()
        t0 = time.monotonic()
        rc = agent.stop()
    if died is not None:  # before the end of the run: nothing after that was measured
        tail = agent.log_path.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"the agent exited with {died} during the run:\n" + "\n".join(tail))
    # Stopping may be slow (or fail) after a flood: part of the result, not a bench error.
    out["agent_stop"] = {"exit_status": rc, "seconds": time.monotonic() - t0}
    out["rss_peak_mib"] = dict(rss.peak_mib) if rss is not None else {}
    return out


# ---- command line ------------------------------------------------------------------------------


def may_run_at(nice: int) -> bool:
    """Whether this process may start a child at nice ``nice``: asked of a throwaway child, as
    the kernel answers it (root in a container may lack CAP_SYS_NICE)."""
    probe = f"import os; os.setpriority(os.PRIO_PROCESS, 0, {int(nice)})"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True,
                          check=False).returncode == 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gridtao bench flood",
        description="Genuine FFR triggers and signed dispatches under a flood of invalid "
                    "dispatches and frequency samples, against an idle baseline in the same run "
                    "(a real Mosquitto on 127.0.0.1, the agent in its own process).")
    p.add_argument("--triggers", type=int, default=30,
                   help="genuine FFR triggers and genuine dispatches per phase (default 30 each)")
    p.add_argument("--dispatch-junk", type=int, default=20_000,
                   help="invalid dispatches sent as fast as possible (default 20000)")
    p.add_argument("--dispatch-junk-qos", type=int, choices=(0, 1), default=1,
                   help="QoS of the junk dispatches (default 1, the dispatch topic's)")
    p.add_argument("--frequency-junk-rate", type=float, default=10_000.0,
                   help="invalid frequency samples per second during the flood (default 10000)")
    p.add_argument("--gpus", type=int, default=8, help="simulated GPUs (default 8)")
    p.add_argument("--auth", choices=("ed25519", "hmac"), default="ed25519",
                   help="signature algorithm of the genuine senders (default ed25519)")
    p.add_argument("--agent-nice", type=int, default=None, metavar="N",
                   help=f"the agent's nice value, -20..19 (default {AGENT_NICE}, as "
                        "deploy/systemd/gridtao-agent.service runs it, where this process may "
                        "raise a priority: root with CAP_SYS_NICE; else 0, said on stderr "
                        "and in the report)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write a BENCHMARKS.md section to FILE")
    p.add_argument("--keep-dir", metavar="DIR", type=Path,
                   help="keep the broker's and the agent's logs, configuration and state "
                        "(audit trail) in DIR instead of a temporary folder")
    # An attacker child process (started by the bench itself).
    p.add_argument("--attack", choices=("dispatch", "frequency"), help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--topic", default="", help=argparse.SUPPRESS)
    p.add_argument("--alg", default="ed25519", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--qos", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.attack:
        if args.host != "127.0.0.1":
            p.error("attackers only ever point at 127.0.0.1")
        return attack(args)
    if not 1 <= args.triggers <= 1000 or not 1 <= args.gpus <= 64:
        p.error("--triggers must be in 1..1000 and --gpus in 1..64")
    if args.dispatch_junk < 0 or args.frequency_junk_rate < 0:
        p.error("--dispatch-junk and --frequency-junk-rate must be >= 0")
    nice = args.agent_nice
    if nice is None:
        nice = AGENT_NICE if may_run_at(AGENT_NICE) else 0
        if nice != AGENT_NICE:
            print(f"gridtao: bench flood: the agent runs at nice 0: this process may not "
                  f"start one at {AGENT_NICE} (the systemd unit's; needs CAP_SYS_NICE)",
                  file=sys.stderr)
    elif not -20 <= nice <= 19:
        p.error("--agent-nice must be in -20..19")
    elif not may_run_at(nice):
        p.error(f"--agent-nice {nice}: this process may not start one at that priority "
                "(a lower value than its own needs CAP_SYS_NICE)")
    check_outputs(args, p)  # before the run, not after it
    if args.keep_dir is not None and args.keep_dir.exists() and any(args.keep_dir.iterdir()):
        p.error(f"--keep-dir {args.keep_dir}: not empty (its audit trail would be counted)")
    opts = Options(triggers=args.triggers, dispatch_junk=args.dispatch_junk,
                   dispatch_junk_qos=args.dispatch_junk_qos,
                   frequency_junk_rate=args.frequency_junk_rate, gpus=args.gpus, alg=args.auth,
                   keep_dir=args.keep_dir, agent_nice=nice)
    try:
        result = run(opts, progress=lambda line: print(line, file=sys.stderr))
    except RuntimeError as e:  # an attacker or the agent failed: the run measured nothing
        print(f"gridtao: error: bench flood: {e}", file=sys.stderr)
        return 2
    words = list(sys.argv[1:] if argv is None else argv)
    result |= provenance("gridtao bench flood " + shlex.join(words))
    text = markdown(result)
    write_outputs(args, result, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
