"""``gridtao bench fleet``'s Markdown: one table per fleet size in the style of BENCHMARKS.md,
and a summary across sizes when several ran. Times in ms, CPU in % of one core."""

from __future__ import annotations

from typing import Any

__all__ = ["markdown"]


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(name: str, s: dict[str, Any] | None) -> str:
    s = s or {}
    return f"| {name} | {_f(s.get('p50'))} | {_f(s.get('p99'))} | {_f(s.get('max'))} |"


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}x"


def _run(r: dict[str, Any]) -> list[str]:
    n, d, f, b, site = r["nodes"], r["dispatch"], r["frequency"], r["broker_fanout"], r["site"]
    lines = [
        f"### {n} nodes",
        "",
        f"- layout: {r['workers']} worker processes, {r['gpus_per_node']} simulated GPUs per "
        f"node, three broker connections per node ({3 * n} node connections), islands "
        f"{'with per-GPU writer threads' if r['writer_threads'] else 'writing GPUs in turn'}, "
        f"a status every {r['status_period_s']:g} s per node; up in {r['nodes_up_s']} s",
        f"- trials: {d['trials']} dispatches per phase, every node commanded in "
        f"{d['all_commanded_trials']}; frequency: {f['samples']} samples at "
        f"{f['rate_hz']:g} Hz, {f['lost_samples']} lost ({f['deliveries_missing']} deliveries "
        f"missing, {f['refused']} refused)",
        "",
        "| measure (ms) | p50 | p99 | max |",
        "|---|---|---|---|",
        _row(f"broker fan-out: publish -> last of {n} plain subscribers", b["ms"]),
        _row("publish -> every node received the dispatch", d["publish_to_all_received_ms"]),
        _row("publish -> every node commanded", d["publish_to_all_commanded_ms"]),
        _row("first -> last node commanded", d["first_to_last_commanded_ms"]),
        _row("frequency (10 Hz): publish -> first node received",
             f["publish_to_first_received_ms"]),
        _row("frequency (10 Hz): publish -> every node received",
             f["publish_to_all_received_ms"]),
    ]
    if "skipped" not in site:
        lines += [
            _row("with the site coordinator: publish -> every node commanded",
                 site["publish_to_all_commanded_ms"]),
            _row("publish -> site ack", site["publish_to_site_ack_ms"]),
            _row("site ack after the last node's ack", site["site_ack_after_last_node_ms"]),
        ]
    ratio = r["ratio_to_broker_fanout"]
    lines += ["", f"publish -> every node commanded against the broker's own fan-out, same run: "
              f"{_ratio(ratio['p50'])} at p50, {_ratio(ratio['p99'])} at p99."]
    if "skipped" in site:
        lines.append(f"Site coordinator: not measured ({site['skipped']}).")
    else:
        lines.append(f"Site acks: {site['site_acks']} of {site['events']} events, "
                     f"{site['site_acks_every_node_accepted']} naming every node accepted; "
                     f"coordinator peak RSS {site['coordinator_peak_rss_mib']} MiB.")
    names = _cpu_names(r)
    lines += ["", "| phase | wall s | " + " | ".join(f"{k} CPU %" for k in names)
              + " | broker drop warnings |", "|---|---|" + "---|" * (len(names) + 1)]
    for phase, c in r["cpu"].items():
        cells = [str(c.get(f"{k}_cpu_pct", "-")) for k in names]
        lines.append(f"| {phase} | {c['wall_s']} | " + " | ".join(cells)
                     + f" | {c.get('broker_drop_warnings', '-')} |")
    rss = r["peak_rss_mib"]
    queue = r.get("broker_max_queued_messages")
    lines += ["", f"CPU in % of one core. Peak RSS: broker {rss['broker']} MiB, workers "
              f"{', '.join(str(x) for x in rss['workers'])} MiB. Broker: Mosquitto "
              f"with set_tcp_nodelay, max_queued_messages "
              f"{'its default (1000)' if queue is None else queue}.", ""]
    return lines


def _cpu_names(r: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for c in r["cpu"].values():
        names += [k[:-len("_cpu_pct")] for k in c if k.endswith("_cpu_pct")
                  and k[:-len("_cpu_pct")] not in names]
    return names


def _summary(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| nodes | commanded p50 | p99 | broker fan-out p50 | p99 | ratio p99 | "
             "frequency p99 | lost samples | site ack after last node p50 | p99 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c, b, s = r["publish_to_all_commanded_ms"], r["broker_fanout_ms"], \
            r["site_ack_after_last_node_ms"] or {}
        lines.append(
            f"| {r['nodes']} | {_f(c['p50'], 1)} | {_f(c['p99'], 1)} | {_f(b['p50'], 1)} | "
            f"{_f(b['p99'], 1)} | {_ratio(r['ratio_to_broker_fanout']['p99'])} | "
            f"{_f(r['frequency_publish_to_all_received_ms']['p99'], 1)} | "
            f"{r['frequency_lost_samples']} | {_f(s.get('p50'), 1)} | {_f(s.get('p99'), 1)} |")
    return [*lines, ""]


def markdown(result: dict[str, Any]) -> str:
    """The section for ``result`` (one run, or ``{"runs": [...]}``)."""
    runs = result.get("runs", [result])
    ref = result["reference"]
    lines = ["## Fleet: N nodes over one broker, and the site coordinator", "",
             f"- command: `{result['command']}`", f"- machine: {result['machine']}",
             f"- date: {result['date']}", f"- commit: {result['commit']}", ""]
    if len(runs) > 1:
        lines += ["Times in ms.", "", *_summary(runs)]
    for r in runs:
        lines += _run(r)
    lines += [f"For context only, not a baseline: {ref['what']} in {ref['mean_ms']} ms on "
              f"average ({ref['source']}); the baseline above is the same broker measured in "
              "the same run on this machine.", ""]
    return "\n".join(lines)
