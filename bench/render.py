"""Render latency-bench results: a Markdown section for BENCHMARKS.md and a PNG."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gridtao.config.agent import ConfigError
from gridtao.config.outputs import output_path, writing
from gridtao.telemetry.plotting import pyplot

KEYS = ("publish_to_command_ms", "receive_to_command_ms", "trigger_to_target_ms",
        "command_to_target_ms")


def _row(name: str, stats: dict[str, float]) -> str:
    return f"| {name} | {stats['p50']:.2f} | {stats['p99']:.2f} | {stats['max']:.2f} |"


def markdown(result: dict[str, Any], command: str) -> str:
    hw = result["simulated_hardware_response"]
    lines = [
        f"### Trigger-to-target latency ({result['gpus']} GPUs, {result['triggers']} triggers)",
        "",
        f"- command: `{command}`",
        f"- machine: {result['machine']}",
        f"- date: {result['date']}; commit {result.get('commit', 'unknown')}; "
        f"{result.get('broker', 'broker version unknown')}",
        "- versions: " + (", ".join(f"{k} {v}" for k, v in result["dependencies"].items())
                          if result.get("dependencies") else "not recorded"),
        f"- simulated hardware: cap-down time constant {hw['cap_down_tau_ms']:.0f} ms, instant "
        f"reading refresh {hw['refresh_ms']:.0f} ms -> floor to the 5 % band "
        f"{hw['floor_ms']:.0f} ms ({hw['settle_to_band_ms']:.0f} ms settling + one refresh)"
        if hw is not None else
        "- real GPUs (NVML): the hardware response is the measured command -> target time; "
        "the baselines ran on the same GPUs, the sequential one through `nvidia-smi -pl`",
    ]
    early = result.get("in_band_at_command")
    if early and any(early.values()):
        lines.append(f"- triggers that found the node already in its band (the load in a dip; "
                     f"reached within one reading of the command, under the hardware floor): "
                     f"{early['idle']} idle, {early['under_load']} under load; counted in the "
                     "trigger -> target figures as measured")
    load = result.get("load")
    if load:
        trig = load["trigger"]
        lines.append(f"- load: {load['workload']}; each trigger a "
                     f"{trig['kind']} of {trig['fraction']:.0%} for {trig['duration_s']:g} s, "
                     f"one every ~{trig['every_s']:g} s plus its own time")
    if result.get("layout") == "island_alone_emulated":
        lines.append("- layout: the island alone in its process, emulated (tier 1 at 1 Hz; the "
                     "load phase's busy loop in a separate process, not the agent's)")
    if result.get("planner"):
        lines.append(f"- tier 3 running in the agent meanwhile: a planning round every "
                     f"{result['planner']['period_s']:.0f} s (history, forecast, HiGHS solve)")
    auth = result.get("auth")
    if auth:
        cost = ", ".join(f"{alg} p50 {v['p50']:.1f} / p99 {v['p99']:.1f} us"
                         for alg, v in auth["verify_us"].items())
        lines.append(f"- dispatches signed with {auth['alg']}; verify cost per message "
                     f"(decode + canonical form + signature): {cost}")
    lines += [
        "",
        "| measure (ms) | p50 | p99 | max |",
        "|---|---|---|---|",
    ]
    lines.append(_row("transport floor: publish -> plain paho subscriber", result["broker_hop_ms"]))
    if result.get("bare_thread_fanout_ms"):
        lines.append(_row(f"reference: {result['gpus']} driver calls on bare threads",
                          result["bare_thread_fanout_ms"]))
    for key in KEYS:
        lines.append(_row(f"gridtao {key}", result[key]))
    for key in KEYS:
        lines.append(_row(f"gridtao under load {key}", result["under_load"][key]))
    for name, base in result["baselines"].items():
        for key in ("publish_to_command_ms", "trigger_to_target_ms"):
            lines.append(_row(f"baseline {name} {key} (n={base['triggers']})", base[key]))
    lines += ["", "Ratios against the baselines measured in the same run (p50 publish->command):"]
    for name, ratio in result["ratios"].items():
        lines.append(f"- {name}: {ratio:.0f}x")
    lines += ["", "Latency targets, judged by `gridtao.bench.latency.judge_targets`:"]
    lines += _target_lines(result["targets"])
    return "\n".join(lines) + "\n"


def _verdict(target: dict[str, Any]) -> str:
    if target["met"] is None:
        return f"**not judged** (a p99 needs at least {target['min_triggers']} triggers)"
    return "**met**" if target["met"] else "**not met**"


def _target_lines(targets: dict[str, dict[str, Any]]) -> list[str]:
    p2c = targets["publish_to_command_p99_ms"]
    t2t = targets["trigger_to_target_p99_ms"]
    fast = targets["speedup_vs_sequential_subprocess_p50"]
    r2c = targets["receive_to_command_p99_ms"]
    over = targets["publish_to_command_over_transport_p99_ms"]
    return [
        f"- publish -> command p99 <= {p2c['limit']:.0f} ms, idle and under load: "
        f"{p2c['idle']:.2f} / {p2c['under_load']:.2f} ms (transport floor p99 "
        f"{p2c['transport_floor_p99']:.2f} ms): {_verdict(p2c)}",
        f"- trigger -> target p99 within 5 ms of the hardware response: {t2t['value']:.1f} ms "
        f"against {t2t['hardware_response_p99']:.1f} + 5 ms (command -> target p99, same run"
        + (f"; closed-form floor {t2t['hardware_floor']:.0f} ms" if t2t["hardware_floor"]
           is not None else "") + f"): {_verdict(t2t)}; under load "
        f"(not part of the target) {t2t['under_load']['value']:.1f} ms against "
        f"{t2t['under_load']['limit']:.1f} ms: {_verdict(t2t['under_load'])}",
        f"- >= {fast['limit']:.0f}x faster than sequential subprocesses at p50: "
        f"{fast['value']:.0f}x: {_verdict(fast)}",
        f"- receive -> command p99 <= {r2c['limit']:g} ms idle, <= {r2c['under_load_limit']:g} ms"
        f" under load: {r2c['value']:.2f} / {r2c['under_load']:.2f} ms"
        + ("" if r2c["bare_thread_fanout_p99"] is None else
           f" (the same driver calls on bare threads, same run: p99 "
           f"{r2c['bare_thread_fanout_p99']:.2f} ms)") + f": {_verdict(r2c)}",
        f"- publish -> command p99 within {over['limit']:g} ms of the transport floor's: "
        f"{over['value']:+.2f} ms: {_verdict(over)}",
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    """Empirical CDFs of publish->command and trigger->target, gridtao vs under load."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for ax, key in zip(axes, ("publish_to_command_ms", "trigger_to_target_ms"), strict=True):
        for label, samples in result["samples"].items():
            values = sorted(samples[key])
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.step(values, ys, where="post", label=f"gridtao ({label})")
        for name, base in result["baselines"].items():
            ax.axvline(base[key]["p50"], ls="--", lw=1, label=f"{name} p50", color=(
                "tab:red" if name == "sequential_subprocess" else "tab:gray"))
        ax.set_xscale("log")
        ax.set_xlabel(key.replace("_", " "))
        ax.set_ylabel("fraction of triggers")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    kind = "simulated GPUs" if result.get("backend", "sim") == "sim" else "GPUs (NVML)"
    fig.suptitle(f"gridtao latency, {result['gpus']} {kind}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


OUTPUT_OPTIONS = ("json", "plot", "markdown", "csv")


def check_outputs(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None
                  ) -> None:
    """Before a bench runs (minutes, hours), not after: every output file its options name
    (``--json``, ``--plot``, ``--markdown``, ``--csv``) can be written. A problem is a usage
    error of ``parser`` when given (exit 2), else a ConfigError naming the option."""
    for option in OUTPUT_OPTIONS:
        target = getattr(args, option, None)
        if not target:
            continue
        try:
            output_path(str(target), f"--{option}")
        except ConfigError as e:
            if parser is None:
                raise
            parser.error(str(e))


def write_outputs(
    args: argparse.Namespace, result: dict[str, Any], text: str,
    plot_fn: Callable[[dict[str, Any], Path], None] | None = None,
) -> None:
    """Print ``text`` and write the files a bench command's ``--json/--plot/--markdown`` ask for
    (checked beforehand by :func:`check_outputs`; a write that fails even so, a full disk, is
    a ConfigError naming the option)."""
    print(text)
    if args.json:
        with writing(Path(args.json), "--json"):
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if getattr(args, "plot", None) and plot_fn is not None:
        with writing(Path(args.plot), "--plot"):
            plot_fn(result, Path(args.plot))
    if getattr(args, "markdown", None):
        with writing(Path(args.markdown), "--markdown"):
            Path(args.markdown).write_text(text, encoding="utf-8")
