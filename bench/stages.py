"""Where receive -> command goes inside one agent, stage by stage
(``gridtao bench stages [--triggers N] [--gpus N] [--shared] [--json FILE]``).

A real Mosquitto on loopback and one agent served in this process (tier 1, tier 2, the lane and
the island's writers all running, as in ``gridtao run``) on simulated GPUs: in-process ones, or
with ``--shared`` a private machine-wide device (as ``gridtao bench latency`` uses). Each
trigger is a ``shed`` of 30 % for 0.35 s, one every 2.5 s. The harness times, per trigger, the
agent's public seams by wrapping them for the run (wall-clock stamps, the clock of the ack's
``received_at`` and ``commanded_at``):

* ``receive_to_intake``: the lane's receipt (the ack's ``received_at``) -> the intake starts on
  the message (:meth:`gridtao.hotpath.intake.Intake.on_message`);
* ``intake_to_island``: decoding, the guard and the dispatch's checks -> the island starts the
  cut (:meth:`~gridtao.safety.island.SafetyIsland.trigger_shed`);
* ``island_to_writes``: the island's decision (caps from the basis) -> the writes are queued
  (:meth:`~gridtao.safety.writer.ParallelWriter.submit` returns);
* ``writes_to_command``: queued -> the last driver call returned (the ack's ``commanded_at``),
  beside which ``submitter_writes`` is how long the submitting thread spent writing the GPUs no
  worker had taken yet (:meth:`~gridtao.safety.writer.ParallelWriter.help`: driver calls and
  read-backs, so it may end after ``commanded_at``);
* ``receive_to_command``: the sum, what the latency bench reports.

The wrappers add a few microseconds to each stage; compare stages with each other and with the
fan-out bench, not with the latency bench to the microsecond. No speed is asserted anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from gridtao.app.agent import Agent
from gridtao.app.options import AgentOptions
from gridtao.app.serve import ServeThread
from gridtao.app.simdevice import private_device
from gridtao.bench.latency import agent_config, run_info
from gridtao.bench.render import check_outputs, write_outputs
from gridtao.clock import MonotonicClock
from gridtao.config.agent import Config, config_from_mapping
from gridtao.config.paths import sim_device_path
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.hotpath.intake import Intake
from gridtao.safety.island import SafetyIsland
from gridtao.safety.writer import ParallelWriter
from gridtao.telemetry.report import percentiles
from gridtao.transport.localbroker import MosquittoBroker, Publisher, Subscriber

__all__ = ["STAGES", "main", "run"]

STAGES = ("receive_to_intake", "intake_to_island", "island_to_writes", "writes_to_command",
          "submitter_writes", "receive_to_command")
_SEAMS = ((Intake, "on_message", "intake"), (SafetyIsland, "trigger_shed", "island"),
          (ParallelWriter, "submit", "submit"), (ParallelWriter, "help", "help"))
SPACING_S = 2.5


@contextmanager
def _stamped() -> Iterator[dict[str, list[tuple[float, float]]]]:
    """While inside: each seam's (start, end) wall times, per call; the classes as they were
    after."""
    stamps: dict[str, list[tuple[float, float]]] = {name: [] for _, _, name in _SEAMS}
    saved = [(cls, attr, getattr(cls, attr)) for cls, attr, _ in _SEAMS]

    def wrapped(original: Callable[..., Any], name: str) -> Callable[..., Any]:
        def seam(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                stamps[name].append((start, time.time()))
        return seam

    try:
        for (cls, attr, name), (_, _, original) in zip(_SEAMS, saved, strict=True):
            setattr(cls, attr, wrapped(original, name))
        yield stamps
    finally:
        for cls, attr, original in saved:
            setattr(cls, attr, original)


def _trigger(pub: Publisher, topic: str, acks: Subscriber, k: int) -> dict[str, Any] | None:
    """One shed; its first ack that commanded or refused it (None if none came in 2 s)."""
    seen = len(acks.messages)
    ident = f"stage-{k}"
    pub.send(topic, json.dumps(
        {"id": ident, "kind": "shed", "fraction": 0.3, "duration_s": 0.35}).encode())
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        for m in list(acks.messages[seen:]):
            body = json.loads(m.payload)
            if body.get("id") == ident and (body.get("commanded_at")
                                            or body.get("accepted") is False):
                return dict(body)
        time.sleep(0.005)
    return None


def _stages(ack: dict[str, Any], s: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """One trigger's stages, ms, from its ack and the seams' first calls."""
    received, commanded = float(ack["received_at"]), float(ack["commanded_at"])
    intake, island, submit = s["intake"][0][0], s["island"][0][0], s["submit"][0][1]
    helped = s["help"][0][1] - s["help"][0][0] if s["help"] else 0.0
    parts = (intake - received, island - intake, submit - island, commanded - submit, helped,
             commanded - received)
    return {name: 1000.0 * v for name, v in zip(STAGES, parts, strict=True)}


def run(triggers: int, gpus: int, *, shared: bool,
        spacing_s: float = SPACING_S) -> dict[str, Any]:
    """The stages of ``triggers`` sheds, ``spacing_s`` apart (module docstring); JSON-able."""
    rows: list[dict[str, float]] = []
    missed: list[str] = []  # why a shed was not measured
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gridtao-stages-")))
        broker = stack.enter_context(MosquittoBroker(tmp))
        device = stack.enter_context(private_device("bench-stages")) if shared else None
        base = Config()  # the agent as the latency bench runs it (the trigger path alone)
        base = dataclasses.replace(base, gpus=dataclasses.replace(
            base.gpus, sim=dataclasses.replace(base.gpus.sim, device=device)))
        cfg = config_from_mapping(agent_config(base, broker.port, gpus, workdir=tmp),
                                  source="<bench stages>")
        sim = SimNvml.from_config(cfg.gpus.sim, MonotonicClock(),
                                  device_path=sim_device_path(device) if device else None)
        agent = Agent(cfg, clock=sim.clock, backend=NvmlBackend(sim),
                      options=AgentOptions(serve_metrics=False, connect_timeout_s=10.0))
        stack.callback(agent.close)
        topics = agent.topics
        agent.start()
        serving = ServeThread(agent)
        serving.start()
        stack.callback(serving.stop)
        time.sleep(2.0)  # tier 1 takes its readings; the island arms
        acks = stack.enter_context(Subscriber(broker.host, broker.port, topics.ack))
        pub = stack.enter_context(Publisher(broker.host, broker.port))
        for k in range(triggers):
            with _stamped() as stamps:
                ack = _trigger(pub, topics.node_dispatch, acks, k)
                time.sleep(0.05)  # the seams' last calls return
            if ack is None or not ack.get("commanded_at"):
                missed.append("no ack" if ack is None else f"refused: {ack.get('reason')}")
            elif all(stamps[n] for n in ("intake", "island", "submit")):
                rows.append(_stages(ack, stamps))
            else:
                missed.append("a seam was not called")
            time.sleep(spacing_s)
    return {"triggers": triggers, "measured": len(rows), "missed": missed, "gpus": gpus,
            "device": "machine-wide (private)" if shared else "in-process",
            "stages_ms": {name: percentiles([r[name] for r in rows]) for name in STAGES}
            if rows else {}, "samples": rows}


def main(argv: Sequence[str] | None = None) -> int:
    """``gridtao bench stages [--triggers N] [--gpus N] [--shared] [--json FILE]``."""
    p = argparse.ArgumentParser(prog="gridtao bench stages",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--triggers", type=int, default=30, help="sheds timed (default 30)")
    p.add_argument("--gpus", type=int, default=8, help="simulated GPUs (default 8)")
    p.add_argument("--shared", action="store_true",
                   help="on a private machine-wide simulated device, as the latency bench")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    try:
        args = p.parse_args(argv)
        if args.triggers < 1 or args.gpus < 1:
            p.error("--triggers and --gpus must be >= 1")
        check_outputs(args, p)  # before the run, not after it
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    quiet = logging.getLogger("gridtao")  # the agent's own lines, not the table
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        result = run(args.triggers, args.gpus, shared=args.shared)
    finally:
        quiet.setLevel(level)
    result |= run_info("gridtao.bench.stages", argv)
    lines = [f"{result['measured']} of {result['triggers']} sheds, {result['gpus']} GPUs, "
             f"{result['device']} (ms)"]
    lines += [f"{name:20s} p50 {v['p50']:7.3f}  p99 {v['p99']:7.3f}  max {v['max']:7.3f}"
              for name, v in result["stages_ms"].items()]
    write_outputs(args, result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
