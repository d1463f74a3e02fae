"""The flood bench's result: per-phase statistics, the targets judged, and its Markdown
(``bench/flood.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gridtao.bench.floodgenuine import Trigger
from gridtao.bench.floodsetup import (
    AGENT_NICE,
    DISPATCH_P99_MAX_MS,
    FFR_P99_MAX_MS,
    MEASURES,
    RSS_PEAK_MAX_MIB,
    RSS_PERIOD_S,
    TARGET,
    Options,
)
from gridtao.telemetry.report import percentiles

# ---- the result ----------------------------------------------------------------------------------


def _stats(trigs: Sequence[Trigger]) -> dict[str, Any]:
    measured = [m for m in (t.measures() for t in trigs) if m is not None]
    out: dict[str, Any] = {k: percentiles([m[k] for m in measured]) for k in MEASURES}
    out |= {
        "triggers": len(trigs),
        "commanded": len(measured),
        "first_acks": sum(t.first is not None for t in trigs),
        "reached_acks": sum(t.reached is not None for t in trigs),
        # Accepted but nothing written: a deeper event (a late earlier trigger) held the GPUs.
        "not_binding": sum(t.first is not None and t.first.get("accepted") is True
                           and t.first.get("commanded_at") is None for t in trigs),
        "never_acked": sum(t.first is None for t in trigs),
        "refused": [str(t.first.get("reason")) for t in trigs
                    if t.first is not None and not t.first.get("accepted")],
    }
    if trigs and trigs[0].kind == "ffr":
        # 0: the first dip sample fired; more: earlier ones were lost or queued past the ack wait.
        out["dip_samples_before_firing"] = [
            t.dip_t.index(t.first["sample_t"]) for t in trigs
            if t.first is not None and t.first.get("sample_t") in t.dip_t]
    return out


def _sample(t: Trigger, junk_until: float | None) -> dict[str, Any]:
    return {"index": t.index, "id": t.event_id, "sent": t.sent,
            "first_ack": t.first is not None, "reached_ack": t.reached is not None,
            # Published before the agent had handled its last junk dispatch.
            "met_junk_dispatch_backlog": junk_until is not None and t.sent <= junk_until,
            **(t.measures() or {})}


def result_of(opts: Options, m: dict[str, Any]) -> dict[str, Any]:
    trigs: list[Trigger] = m["triggers"]
    junk_until = m["audit"]["last_dispatch_rejected_at"]

    def pick(phase: str, kind: str) -> list[Trigger]:
        return [t for t in trigs if t.phase == phase and t.kind == kind]

    phases: dict[str, Any] = {}
    for phase in ("idle", "flood"):
        phases[phase] = {kind: _stats(pick(phase, kind)) for kind in ("ffr", "dispatch")}
        phases[phase] |= m["phases"][phase]
        phases[phase]["rss_peak_mib"] = m["rss_peak_mib"].get(phase)
    genuine_ids = {t.event_id for t in trigs if t.event_id is not None}
    others = [a for a in m["acks"] if a.get("id") not in genuine_ids]
    unexpected = sorted({str(a.get("id")) for a in others if a.get("accepted")})
    flood = phases["flood"]
    flood["attack"] = m["attack"]
    flood["agent_handled"] = m["audit"]
    flood["broker_drop_warnings"] = m["broker_drop_warnings"]
    flood["met_junk_dispatch_backlog"] = {
        kind: sum(junk_until is not None and t.sent <= junk_until for t in pick("flood", kind))
        for kind in ("ffr", "dispatch")}
    result: dict[str, Any] = {
        "target": TARGET,
        "gpus": opts.gpus,
        "auth": opts.alg,
        "agent_nice": m["agent_nice"],  # as the kernel had it, not as asked
        "triggers": opts.triggers,
        "dispatch_junk": opts.dispatch_junk,
        "dispatch_junk_qos": opts.dispatch_junk_qos,
        "frequency_junk_rate": opts.frequency_junk_rate,
        "idle": phases["idle"],
        "flood": flood,
        "reject_acks_seen": sum(1 for a in others if not a.get("accepted")),
        "unexpected_activations": unexpected,
        "agent_log_lines": m["agent_log_lines"],
        "agent_stop": m["agent_stop"],
        "rss": {"idle_peak_mib": m["rss_peak_mib"].get("idle"),
                "flood_peak_mib": m["rss_peak_mib"].get("flood"),
                "vmhwm_mib": m["vmhwm_mib"]},
        "ratios": {f"{kind}_p99_flood_vs_idle": _ratio(
            flood[kind]["publish_to_command_ms"]["p99"],
            phases["idle"][kind]["publish_to_command_ms"]["p99"]) for kind in ("ffr", "dispatch")},
        "samples": {phase: {kind: [_sample(t, junk_until) for t in pick(phase, kind)]
                            for kind in ("ffr", "dispatch")} for phase in ("idle", "flood")},
    }
    result["targets"] = judge_targets(result)
    return result


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 and a == a and b == b else None  # NaN != NaN: nothing measured


def judge_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The flood target, part by part (:data:`TARGET`), each with its limit, value and ``met``.
    A latency part is met only if every genuine trigger of that kind was commanded and the
    p99 over them is within the limit (a trigger never commanded is no fast one)."""
    flood = result["flood"]

    def latency(kind: str, limit: float) -> dict[str, Any]:
        s = flood[kind]
        p99 = s["publish_to_command_ms"]["p99"]
        return {"limit": limit, "value": p99, "idle": result["idle"][kind][
            "publish_to_command_ms"]["p99"], "commanded": s["commanded"],
            "triggers": s["triggers"], "met": s["commanded"] == s["triggers"] and p99 <= limit}

    expected = 2 * (flood["ffr"]["triggers"] + flood["dispatch"]["triggers"])
    delivered = sum(flood[k]["first_acks"] + flood[k]["reached_acks"] for k in ("ffr", "dispatch"))
    peak = result["rss"]["flood_peak_mib"]
    return {
        "ffr_publish_to_command_p99_ms": latency("ffr", FFR_P99_MAX_MS),
        "dispatch_publish_to_command_p99_ms": latency("dispatch", DISPATCH_P99_MAX_MS),
        "genuine_acks_delivered": {"expected": expected, "value": delivered,
                                   "met": delivered == expected},
        "rss_peak_mib": {"limit": RSS_PEAK_MAX_MIB, "value": peak, "vmhwm": result["rss"][
            "vmhwm_mib"], "met": peak is not None and peak < RSS_PEAK_MAX_MIB},
        "no_forged_activation": {"value": len(result["unexpected_activations"]),
                                 "met": not result["unexpected_activations"]},
    }


# ---- Markdown ----------------------------------------------------------------------------------


def _row(name: str, idle: dict[str, float], flood: dict[str, float], n: str) -> str:
    ratio = _ratio(flood["p99"], idle["p99"])
    return (f"| {name} | {n} | {idle['p50']:.2f} | {idle['p99']:.2f} | {idle['max']:.2f} | "
            f"{flood['p50']:.2f} | {flood['p99']:.2f} | {flood['max']:.2f} | "
            + (f"{ratio:.1f}x |" if ratio is not None else "- |"))


def _target_sizes(result: dict[str, Any]) -> bool:
    """Whether the run's flood is at least the one the target is stated for."""
    return bool(result["dispatch_junk"] >= Options.dispatch_junk
                and result["frequency_junk_rate"] >= Options.frequency_junk_rate)


def _verdict(target: dict[str, Any]) -> str:
    return "**met**" if target["met"] else "**not met**"


def markdown(result: dict[str, Any]) -> str:
    """A BENCHMARKS.md section: setup, the table flood against idle, acks, memory, verdicts."""
    idle, flood = result["idle"], result["flood"]
    att = flood["attack"]
    handled = flood["agent_handled"]
    d_att, f_att = att.get("dispatch", {}), att.get("frequency", {})

    def rate(a: dict[str, Any]) -> str:
        r = a.get("rate_per_s")
        return f"{r:,.0f}/s" if isinstance(r, (int, float)) else "?"

    lines = [
        f"### Genuine triggers under a flood ({result['gpus']} simulated GPUs, {result['auth']}, "
        f"{result['triggers']} triggers per kind)",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {result['machine']}",
        f"- date: {result['date']}; commit {result['commit']}; {result['broker']}",
        f"- target: {result['target']}",
        f"- flood: {d_att.get('sent')} invalid dispatches (QoS {result['dispatch_junk_qos']}, "
        f"malformed / unsigned / bad signature) sent in {d_att.get('seconds', 0):.1f} s "
        f"({rate(d_att)}); invalid frequency samples (QoS 0, same mix) at {rate(f_att)} "
        f"(asked {result['frequency_junk_rate']:,.0f}/s) for {f_att.get('seconds', 0):.0f} s; "
        f"the agent handled {handled['rejected']['dispatch']} junk dispatches and "
        f"{handled['rejected']['frequency']} junk samples one by one in the audit trail"
        + (f", and {handled.get('unrecorded', 0)} more refusals past its audit budget"
           if handled.get("unrecorded") else "")
        + (f"; {handled['records_lost']} audit records lost, so at least that many"
           if handled["records_lost"] else "")
        + f"; broker drop warnings: {flood['broker_drop_warnings']}",
        f"- genuine triggers that met the junk dispatch backlog: "
        f"{flood['met_junk_dispatch_backlog']['dispatch']} dispatches, "
        f"{flood['met_junk_dispatch_backlog']['ffr']} FFR triggers",
        f"- agent at nice {result.get('agent_nice', 0)}"
        + (" (as deploy/systemd/gridtao-agent.service runs it)"
           if result.get("agent_nice") == AGENT_NICE else "")
        + f"; CPU: idle phase {idle['agent_cpu_percent']:.0f} %, flood phase "
        f"{flood['agent_cpu_percent']:.0f} % of one core; agent log: "
        f"{result['agent_log_lines']} lines in all; stopped (SIGTERM) with status "
        f"{result['agent_stop']['exit_status']} in {result['agent_stop']['seconds']:.1f} s",
        "",
        "| publish -> ... (ms) | n idle / flood | idle p50 | idle p99 | idle max | flood p50 "
        "| flood p99 | flood max | p99 flood/idle |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"publish_to_command_ms": "command", "publish_to_receive_ms": "agent receives",
             "receive_to_command_ms": "(receive -> command)"}
    for kind, label in (("ffr", "FFR trigger"), ("dispatch", "signed dispatch")):
        n = f"{idle[kind]['commanded']} / {flood[kind]['commanded']}"
        for key in MEASURES:
            lines.append(_row(f"{label}: {names[key]}", idle[kind][key], flood[kind][key], n))
    lines += ["", "Genuine acks (first ack / `reached_at` ack, of triggers; never acked; "
              "accepted but not binding, i.e. a late earlier event already held the GPUs):"]
    for phase in ("idle", "flood"):
        parts = [f"{kind} {result[phase][kind]['first_acks']} / "
                 f"{result[phase][kind]['reached_acks']} of {result[phase][kind]['triggers']}"
                 f" (never acked {result[phase][kind]['never_acked']}, not binding "
                 f"{result[phase][kind]['not_binding']})"
                 for kind in ("ffr", "dispatch")]
        lines.append(f"- {phase}: " + "; ".join(parts))
    rss = result["rss"]
    lines += [
        f"- reject acks seen during the run: {result['reject_acks_seen']}; accepted "
        f"activations no genuine trigger explains: {len(result['unexpected_activations'])}",
        "",
        f"Agent memory (VmRSS sampled every {RSS_PERIOD_S * 1000:.0f} ms): idle peak "
        f"{rss['idle_peak_mib']:.1f} MiB, flood peak {rss['flood_peak_mib']:.1f} MiB, VmHWM "
        f"at the end {rss['vmhwm_mib']:.1f} MiB.",
        "",
        "Targets, judged by `gridtao.bench.floodreport.judge_targets`"
        + ("" if _target_sizes(result) else
           f" at this run's smaller flood ({result['dispatch_junk']:,} dispatches, "
           f"{result['frequency_junk_rate']:,.0f} samples/s): not verdicts on the target, "
           "which is stated for 20,000 and 10,000/s")
        + ":",
    ]
    t = result["targets"]
    for key, label in (("ffr_publish_to_command_p99_ms", "FFR publish -> command p99"),
                       ("dispatch_publish_to_command_p99_ms", "dispatch publish -> command p99")):
        x = t[key]
        lines.append(f"- {label} <= {x['limit']:.0f} ms under the flood: {x['value']:.1f} ms "
                     f"(idle {x['idle']:.1f} ms; {x['commanded']} of {x['triggers']} "
                     f"commanded): {_verdict(x)}")
    acks = t["genuine_acks_delivered"]
    lines.append(f"- every genuine ack delivered under the flood: {acks['value']} of "
                 f"{acks['expected']}: {_verdict(acks)}")
    mem = t["rss_peak_mib"]
    lines.append(f"- agent RSS peak during the flood < {mem['limit']:.0f} MiB: "
                 f"{mem['value']:.1f} MiB: {_verdict(mem)}")
    forged = t["no_forged_activation"]
    lines.append(f"- no activation from junk: {forged['value']}: {_verdict(forged)}")
    return "\n".join(lines) + "\n"
