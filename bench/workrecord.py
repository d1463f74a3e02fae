"""What ``gridtao bench work --record DIR`` writes: the node's minute history and audit trail of
a run, as the agent would have kept them, and the bench's own figures for the same run, so
``gridtao report energy`` on the recording can be checked against them.

:class:`Recording` is fed by the bench's loop (gridtao/bench/work.py), in virtual time, through
the agent's own parts:

* every :data:`READ_BACK_S` (``safety.rearm_period_s``' default) a read-back round: each GPU's
  NVML energy counter and instant power (the simulator's, through the real NVML backend) into
  the history recorder (gridtao/history/recorder.py: the node's IT power between rounds from
  the counters, as gridtao/app/readback.py computes it, and each GPU's energy) and into the
  per-event energy ledger (gridtao/records/energy.py), whose ``event_energy`` records go to the
  audit trail (gridtao/records/audit.py);
* every :data:`SCRAPE_S` (a work source's default period) a scrape of two work sources, as
  ``gridtao sim serve-work`` would serve them: ``llm`` (``vllm``, the inference GPUs, generated
  tokens of model :data:`MODEL`) and ``train`` (``custom``, the training GPUs, unit
  ``samples``), their counters being the bench's own count of the work each GPU did;
* each shed: ``event_started`` at its trigger, ``event_released`` at its release and
  ``event_ended`` at the end of its release ramp (the bench's window), as the agent's intake
  records them.

Alongside, it keeps the truth the report is checked against (:meth:`Recording.truth`): the
integral of the simulator's true power per GPU over the recording and over each event, and
the work each GPU did, so energy per unit over the same span is known exactly.

Units: times monotonic s on the bench's virtual clock (``wall``: Unix s), energy J (kWh in the
output), power W. Threads: the bench's loop; the recorder and the audit trail write on their
own threads, off the loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gridtao.clock import VirtualClock
from gridtao.config.agent import AuditConfig, FacilityConfig
from gridtao.control.tier2.facility import FacilityModel
from gridtao.gpu.nvml import NvmlBackend
from gridtao.history import HistoryRecorder, HistoryStore
from gridtao.records.audit import AuditTrail
from gridtao.records.energy import EventEnergy
from gridtao.safety.island import Activation

__all__ = ["MODEL", "READ_BACK_S", "SCRAPE_S", "Recording", "print_result"]

READ_BACK_S = 0.5
SCRAPE_S = 5.0
MODEL = "gridtao-sim"
J_PER_KWH = 3.6e6
QUEUE_SIZE = 1 << 20  # the recorder never drops in a bench (checked at close)


class Recording:
    """One run's history and audit trail in ``folder``, for node ``node`` (files
    ``history-<node>.sqlite3`` and ``audit-<node>.jsonl``, replaced if present). ``kinds``:
    each GPU's workload kind (``inference`` or ``training``)."""

    def __init__(self, folder: Path, node: str, clock: VirtualClock, backend: NvmlBackend,
                 kinds: Sequence[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.node = node
        self.history_path = folder / f"history-{node}.sqlite3"
        self.audit_path = folder / f"audit-{node}.jsonl"
        for stale in (self.history_path, self.audit_path,
                      *folder.glob(f"history-{node}.sqlite3-*"),
                      *folder.glob(f"audit-{node}.jsonl.*")):
            stale.unlink(missing_ok=True)
        self._clock = clock
        self._backend = backend
        self._count = len(kinds)
        self._ids = [(i, d.uuid) for i, d in enumerate(backend.devices())]
        self._sources = [(name, kind, tuple(i for i, k in enumerate(kinds) if k == workload),
                          key)
                         for name, kind, workload, key in (
                             ("llm", "vllm", "inference", (MODEL, "generation")),
                             ("train", "custom", "training", ("", "samples")))]
        self._recorder = HistoryRecorder(HistoryStore.open(self.history_path), clock=clock,
                                         queue_size=QUEUE_SIZE)
        self._trail = AuditTrail(AuditConfig(enabled=True, path=str(self.audit_path),
                                             fsync="never"), clock=clock)
        self._trail.start()
        self._trail.record("agent_start", {"node": node, "pid": 0, "bench": "gridtao bench work"})
        self._energy = EventEnergy(FacilityModel.from_config(FacilityConfig()), self._count,
                                   on_event=lambda f: self._trail.record("event_energy", f))
        self._last: tuple[float, tuple[int, ...]] | None = None
        self._next_round = clock.now()
        self._next_scrape = clock.now()
        self._event_active = False
        self._gpu_j = [0.0] * self._count  # true energy since the first round
        self._at_round = list(self._gpu_j)  # ... as of the last round
        self._base: list[float] | None = None  # the work counts at the first scrape
        self._scrape_j = list(self._gpu_j)  # the true energy then
        #: (true energy per GPU, work per GPU) from the first scrape to the last (J, units).
        self._at_scrape: tuple[list[float], list[float]] = ([0.0] * self._count,
                                                              [0.0] * self._count)
        self._lost_at: dict[int, list[float]] = {}
        self._lost_now = [0.0] * self._count
        self._events: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self.from_wall = clock.wall()
        self.to_wall = self.from_wall

    # ---- the bench's loop -------------------------------------------------------------------

    def step(self, dt_s: float, draw_w: Sequence[float], work: Sequence[float],
             unhindered: Sequence[float]) -> None:
        """After one loop step of ``dt_s``: each GPU's true draw over it (W), its work count so
        far and what it would have counted unhindered; reads and scrapes when they are due."""
        for i in range(self._count):
            self._gpu_j[i] += draw_w[i] * dt_s
        minute = math.floor(self._clock.wall() / 60.0) * 60
        if minute not in self._lost_at:  # work lost so far per GPU, at each minute's start
            self._lost_at[minute] = [u - w for u, w in zip(unhindered, work, strict=True)]
        self._lost_now = [u - w for u, w in zip(unhindered, work, strict=True)]
        if self._open is not None:
            self._open["true_j"] += math.fsum(draw_w) * dt_s
        now = self._clock.now()
        if now >= self._next_round - 1e-9:
            if self._last is None:  # the truth starts with the first round
                self._gpu_j = [0.0] * self._count
                self.from_wall = self._clock.wall()
            self._round(now)
            self._at_round = list(self._gpu_j)
            self.to_wall = self._clock.wall()
            self._next_round += READ_BACK_S
        if now >= self._next_scrape - 1e-9:
            self._scrape(work)
            self._next_scrape += SCRAPE_S

    def _round(self, now: float) -> None:
        energy = tuple(self._backend.energy_mj(i) for i in range(self._count))
        power = tuple(float(self._backend.instant_power_mw(i)) for i in range(self._count))
        wall = self._clock.wall()
        self._energy.feed(now, energy, power)
        self._recorder.offer_gpus(wall, self._ids, energy, power)
        last, self._last = self._last, (now, energy)
        if last is not None and now > last[0]:
            joules = math.fsum(e - p for e, p in zip(energy, last[1], strict=True)) / 1000.0
            limit_w = math.fsum(self._backend.enforced_limit_mw(i)
                                for i in range(self._count)) / 1000.0
            self._recorder.offer(wall, joules / (now - last[0]), limit_w, self._event_active)

    def _scrape(self, work: Sequence[float]) -> None:
        wall = self._clock.wall()
        if self._base is None:
            self._base = list(work)
            self._scrape_j = list(self._gpu_j)
        self._at_scrape = ([g - b for g, b in zip(self._gpu_j, self._scrape_j, strict=True)],
                           [w - b for w, b in zip(work, self._base, strict=True)])
        for name, kind, gpus, key in self._sources:
            self._recorder.offer_work(wall, name, kind, gpus,
                                      {key: math.fsum(work[i] for i in gpus)})

    def started(self, act: Activation, *, fraction: float) -> None:
        """A shed's caps were written (the island's activation)."""
        self._trail.record("event_started", {
            "event": act.event_id, "kind": act.kind, "level": act.level,
            "baseline_mw": act.baseline_mw, "target_mw": act.target_mw,
            "caps_mw": act.caps_mw, "binding": act.binding, "errors": {},
            "received_at": act.commanded_wall, "commanded_at": act.commanded_wall,
            "duration_s": None, "fraction": fraction})
        self._energy.event_started(act.event_id, act.kind, t0_s=act.commanded_at,
                                   wall0_s=act.commanded_wall, baseline_mw=act.baseline_mw)
        self._event_active = True
        self._open = {"id": act.event_id, "start_s": act.commanded_wall, "true_j": 0.0}

    def released(self, event_id: str) -> None:
        self._trail.record("event_released", {"event": event_id, "why": "bench release"})

    def ended(self, event_id: str, lost: dict[str, Any]) -> None:
        """The shed's release ramp is over (the end of the bench's window); ``lost``: the
        bench's score of it (tokens and samples lost)."""
        now, wall = self._clock.now(), self._clock.wall()
        self._trail.record("event_ended", {"event": event_id, "why": "bench release"})
        self._energy.event_ended(event_id, t1_s=now, wall1_s=wall)
        self._event_active = False
        ev, self._open = self._open, None
        if ev is not None:
            self._events.append({
                "id": event_id, "start_s": ev["start_s"], "end_s": wall,
                "it_drawn_kwh": ev["true_j"] / J_PER_KWH,
                "tokens_lost": lost["tokens_lost"], "samples_lost": lost["samples_lost"]})

    # ---- the end ----------------------------------------------------------------------------

    def close(self) -> dict[str, Any]:
        """Write what is left and close the files; the recording's description and truth
        (``record`` in the bench's JSON, docs/work.md)."""
        self._recorder.close()
        self._trail.close()
        if self._recorder.dropped or self._recorder.errors:
            raise RuntimeError(f"the history recorder lost rows ({self._recorder.dropped} "
                               f"dropped, {self._recorder.errors} errors)")
        gpu_j, work = self._at_scrape
        for ev in self._events:  # the truth over the whole minutes the report compares
            first = math.floor(ev["start_s"] / 60.0) * 60
            last = math.ceil(ev["end_s"] / 60.0) * 60
            a, b = self._lost_at.get(first), self._lost_at.get(last, self._lost_now)
            for _name, _kind, gpus, key in self._sources:
                unit = "tokens" if key[1] == "generation" else key[1]
                ev[f"{unit}_lost_in_minutes"] = (None if a is None else
                                                 math.fsum(b[i] - a[i] for i in gpus))
            ev["minutes"] = [first, last]
        per_unit = []
        for name, _kind, gpus, key in self._sources:
            units = math.fsum(work[i] for i in gpus)
            joules = math.fsum(gpu_j[i] for i in gpus)
            per_unit.append({"source": name, "unit": "token" if key[1] == "generation"
                             else key[1], "gpus": list(gpus), "units": units,
                             "energy_kwh": joules / J_PER_KWH,
                             "joules_per_unit": joules / units if units > 0 else None})
        return {
            "node": self.node, "history": str(self.history_path), "audit": str(self.audit_path),
            "from_s": self.from_wall, "to_s": self.to_wall,
            "it_kwh": math.fsum(self._at_round) / J_PER_KWH,
            "gpus": [{"index": i, "uuid": uuid, "energy_kwh": self._at_round[i] / J_PER_KWH}
                     for i, uuid in self._ids],
            "per_unit": per_unit, "events": self._events,
            "read_back_s": READ_BACK_S, "scrape_s": SCRAPE_S,
        }


def print_result(result: dict[str, Any], circularity: str) -> None:
    """The bench's result on stdout (``gridtao bench work``)."""
    for title, key in (("same delivered reduction (work-aware requests calibrated)",
                        "allocations"), ("same request (the sequence as dispatched)",
                                         "same_request")):
        print(f"{title}:")
        print(f"  {'allocation':20s} {'delivered W':>11s} {'work lost':>9s} "
              f"{'tokens/kWh':>10s} {'samples/kWh':>11s} {'response s':>10s} "
              f"{'at target':>9s}")
        for name, a in result[key].items():
            print(f"  {name:20s} {a['delivered_w']:11.0f} {a['work_lost_fraction'] * 100:8.2f}% "
                  f"{a['tokens_lost_per_kwh']:10.0f} {a['samples_lost_per_kwh']:11.1f} "
                  f"{a['max_response_s'] or math.nan:10.3f} "
                  f"{a['min_at_target_fraction'] * 100:8.1f}%")
    for name, c in result.get("comparison", {}).items():
        for how, v in c.items():
            print(f"{name} ({how.replace('_', ' ')}): {v['work_lost_reduction'] * 100:.1f} % less "
                  f"work lost than proportional, {v['delivered_ratio'] * 100:.1f} % of its "
                  "delivered reduction")
    for f in result.get("learned_fit", []):
        fitted = "none" if f["fitted_exponent"] is None else f"{f['fitted_exponent']:.3f}"
        print(f"  GPU {f['gpu']} {f['kind']:9s} exponent: simulator {f['simulator_exponent']:.3f}"
              f", fitted {fitted} from {f['samples']} windows"
              + (" (prior used)" if f["used_prior"] else ""))
    for name, a in result["same_request"].items():
        if "record" in a:
            print(f"  {name} recorded: {a['record']['history']}, {a['record']['audit']}")
    print(f"note: {circularity}")
