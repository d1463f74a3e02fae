"""The latency bench's result (``bench/latency.py``): the percentiles of every measure, the
agent's and the two baselines', the simulator's closed-form response, and the three latency
targets judged. Its Markdown and figure are bench/render.py's.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from typing import Any

from gridtao.bench.baselines import Timing
from gridtao.config.agent import Config
from gridtao.security.auth import Alg
from gridtao.telemetry.report import percentiles
from gridtao.telemetry.runinfo import machine_description


def hardware_response_ms(config: Config) -> dict[str, float]:
    """The simulator's closed-form response (real GPUs have none: see ``command_to_target_ms``)."""
    sim = config.gpus.sim
    settle = sim.cap_down_ms * math.log(1.0 / config.control.band_fraction)
    return {"cap_down_tau_ms": sim.cap_down_ms, "refresh_ms": sim.refresh_ms,
            "settle_to_band_ms": settle, "floor_ms": settle + sim.refresh_ms}


def _baseline(timings: Sequence[Timing]) -> dict[str, Any]:
    return {
        "triggers": len(timings),
        "publish_to_command_ms": percentiles([(t.commanded - t.published) * 1e3 for t in timings]),
        "trigger_to_target_ms": percentiles(
            [(t.reached - t.published) * 1e3 for t in timings if t.reached is not None]),
    }


def result_of(config: Config, m: dict[str, Any], *, triggers: int, gpus: int, auth: Alg | None,
              backend: str, trigger: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able result of one run from its measurements ``m`` (what
    :func:`gridtao.bench.latency.run_latency_bench` gathers); ``trigger``: what each trigger
    asked and how often it came."""
    idle, loaded, verify, seq, poll = m["idle"], m["loaded"], m["verify"], m["seq"], m["poll"]
    result: dict[str, Any] = {
        "triggers": triggers,
        "gpus": gpus,
        "backend": backend,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "simulated_hardware_response": (
            hardware_response_ms(config) if backend == "sim" else None),
        # What was measured: the load the triggers met and what each asked.
        "load": {"workload": (f"the simulated GPUs' {config.gpus.sim.workload} workload"
                              if backend == "sim" else "the real GPUs' own work"),
                 "trigger": trigger},
        "broker_hop_ms": percentiles(m["hop"]),
        # Bare threads sleeping the simulated driver call, no gridtao code (bench/barethreads.py).
        "bare_thread_fanout_ms": (None if m.get("bare") is None
                                  else percentiles(m["bare"])),
        "auth": None if auth is None else {"alg": auth, "verify_us": verify},
        **{k: percentiles(v) for k, v in idle.items()},
        "under_load": {k: percentiles(v) for k, v in loaded.items()},
        "baselines": {"sequential_subprocess": _baseline(seq), "polling_1s": _baseline(poll)},
        "samples": {"idle": idle, "under_load": loaded},
    }
    hw = result["simulated_hardware_response"]
    if hw is not None:
        # A trigger that met the load in a dip finds the node already in its band: reached
        # within one reading of the command, faster than the GPUs can respond. Counted, so the
        # percentiles below the hardware floor are read for what they are.
        result["in_band_at_command"] = {
            phase: sum(1 for ms in samples.get("command_to_target_ms", ()) if ms < hw["refresh_ms"])
            for phase, samples in (("idle", idle), ("under_load", loaded))}
    result["ratios"] = {
        f"{name}_vs_gridtao_p50_publish_to_command": (
            result["baselines"][name]["publish_to_command_ms"]["p50"]
            / result["publish_to_command_ms"]["p50"])
        for name in ("sequential_subprocess", "polling_1s")
    }
    result["targets"] = judge_targets(result)
    return result


PUBLISH_TO_COMMAND_P99_MAX_MS = 2.0
#: gridtao's own share, receive -> command, p99: idle and under load (ms) ...
RECEIVE_TO_COMMAND_P99_MAX_MS = (1.0, 1.5)
#: ... and publish -> command p99 at most this far above the transport floor's p99 (ms).
OVER_TRANSPORT_P99_MAX_MS = 1.0
TARGET_WITHIN_HARDWARE_MS = 5.0
MIN_SPEEDUP_VS_SEQUENTIAL = 20.0
#: Fewer triggers than this and a p99 is only the largest of a handful: not judged.
MIN_TRIGGERS_TO_JUDGE_P99 = 20


def judge_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The latency targets (BENCHMARKS.md, "Trigger-to-target latency"), each with its
    limit, the measured value(s) and ``met``.

    Trigger -> target is judged against the hardware response measured in the same run
    (``command_to_target_ms``: every limit in force -> node power in the band, the simulated
    GPUs' share, which varies with where the training load was when the cut landed); the
    closed-form floor of ``simulated_hardware_response`` is reported beside it.
    """
    idle, loaded = result["publish_to_command_ms"]["p99"], (
        result["under_load"]["publish_to_command_ms"]["p99"])
    hw_p99 = result["command_to_target_ms"]["p99"]
    t2t = result["trigger_to_target_ms"]["p99"]
    loaded_hw_p99 = result["under_load"]["command_to_target_ms"]["p99"]
    loaded_t2t = result["under_load"]["trigger_to_target_ms"]["p99"]
    speedup = result["ratios"]["sequential_subprocess_vs_gridtao_p50_publish_to_command"]
    r2c = result["receive_to_command_ms"]["p99"]
    loaded_r2c = result["under_load"]["receive_to_command_ms"]["p99"]
    # met: None when too few triggers ran for a p99 to mean anything (said in the report).
    judged = result["triggers"] >= MIN_TRIGGERS_TO_JUDGE_P99
    targets = {
        "publish_to_command_p99_ms": {
            "limit": PUBLISH_TO_COMMAND_P99_MAX_MS, "idle": idle, "under_load": loaded,
            "transport_floor_p99": result["broker_hop_ms"]["p99"],
            "met": max(idle, loaded) <= PUBLISH_TO_COMMAND_P99_MAX_MS,
        },
        "trigger_to_target_p99_ms": {
            "limit": hw_p99 + TARGET_WITHIN_HARDWARE_MS, "value": t2t,
            "hardware_response_p99": hw_p99,
            # The simulator's closed form; real GPUs have only the measured response.
            "hardware_floor": (result["simulated_hardware_response"] or {}).get("floor_ms"),
            "met": t2t <= hw_p99 + TARGET_WITHIN_HARDWARE_MS,
            # Not part of the target as stated (idle machine); reported so nobody has to ask.
            "under_load": {
                "limit": loaded_hw_p99 + TARGET_WITHIN_HARDWARE_MS, "value": loaded_t2t,
                "met": loaded_t2t <= loaded_hw_p99 + TARGET_WITHIN_HARDWARE_MS,
            },
        },
        "receive_to_command_p99_ms": {
            "limit": RECEIVE_TO_COMMAND_P99_MAX_MS[0], "value": r2c,
            "under_load_limit": RECEIVE_TO_COMMAND_P99_MAX_MS[1], "under_load": loaded_r2c,
            # What bare threads take for the same driver calls on this host: thread wake-ups
            # and hand-offs with no gridtao code (a reference; None on real GPUs).
            "bare_thread_fanout_p99": (result.get("bare_thread_fanout_ms") or {}).get("p99"),
            "met": (r2c <= RECEIVE_TO_COMMAND_P99_MAX_MS[0]
                    and loaded_r2c <= RECEIVE_TO_COMMAND_P99_MAX_MS[1]),
        },
        "publish_to_command_over_transport_p99_ms": {
            "limit": OVER_TRANSPORT_P99_MAX_MS, "value": idle - result["broker_hop_ms"]["p99"],
            "met": idle - result["broker_hop_ms"]["p99"] <= OVER_TRANSPORT_P99_MAX_MS,
        },
        "speedup_vs_sequential_subprocess_p50": {
            "limit": MIN_SPEEDUP_VS_SEQUENTIAL, "value": speedup,
            "met": speedup >= MIN_SPEEDUP_VS_SEQUENTIAL,
        },
    }
    if not judged:
        for target in (targets["publish_to_command_p99_ms"], targets["trigger_to_target_p99_ms"],
                       targets["trigger_to_target_p99_ms"]["under_load"],
                       targets["receive_to_command_p99_ms"],
                       targets["publish_to_command_over_transport_p99_ms"]):
            target |= {"met": None, "min_triggers": MIN_TRIGGERS_TO_JUDGE_P99}
    return targets

