"""The planner bench's verdicts and tables (``gridtao bench planner``): its targets judged, its
Markdown sections, several seeds side by side. Pure functions of the result dictionaries that
:func:`gridtao.bench.planner.run_planner_bench` returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gridtao.bench.plannerlive import add_delivery

#: Targets: gridtao's revenue at least this share of the oracle's ...
TARGET_ORACLE_SHARE = 0.9
#: ... and 48 hourly MTUs with every product kind solved in less than this (s).
TARGET_SOLVE_S = 1.0


def summarise_seeds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several seeds' results side by side: per strategy and margin, revenue share of the
    oracle per seed and pooled (summed revenue over summed oracle revenue), undeliverable
    hours per seed and in all."""
    oracle = sum(r["strategies"]["oracle"]["revenue"] for r in results)

    def row(revenues: list[float], shares: list[float | None],
            hours: list[int]) -> dict[str, Any]:
        return {"oracle_share": shares,
                "oracle_share_pooled": round(sum(revenues) / oracle, 4) if oracle else None,
                "undeliverable_hours": hours, "undeliverable_total": sum(hours)}

    rows: dict[str, dict[str, Any]] = {}
    for name in results[0]["strategies"]:
        got = [r["strategies"][name] for r in results]
        rows[name] = row([g["revenue"] for g in got], [g["oracle_share"] for g in got],
                         [g["undeliverable_hours"] for g in got])
    for i, margin in enumerate(results[0]["gridtao_margin_sweep"]):
        q, b = margin["miss_quantile"], margin["block_h"]
        got = [r["gridtao_margin_sweep"][i] for r in results]
        rows[f"gridtao, margin q{q:g} per {b} h"] = row(
            [g["revenue"] for g in got], [g["oracle_share"] for g in got],
            [g["undeliverable_hours"] for g in got])
    for i, bound in enumerate(results[0]["informed_bound"]["rows"]):
        got = [r["informed_bound"]["rows"][i] for r in results]
        rows[_bound_name(bound)] = row(
            [g["revenue"] for g in got], [g["oracle_share"] for g in got],
            [g["undeliverable_hours"] for g in got])
    return {"seeds": [r["seed"] for r in results], "days": results[0]["days"],
            "nodes": results[0]["nodes"], "gpus": results[0]["node"]["gpus"],
            "lead_h": results[0]["lead_h"],
            "job_hours": results[0]["job_hours"],
            "p10_coverage": [r["strategies"]["gridtao"]["p10_coverage"] for r in results],
            "rows": rows, "site_delivery": _summed_delivery(results)}


def _summed_delivery(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The seeds' ``site_delivery`` summed (empty for one node)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in results:
        for name, ways in (r.get("site_delivery") or {}).items():
            add_delivery(out, name, ways)
    return {name: {way: {k: round(v, 1) for k, v in f.items()} for way, f in ways.items()}
            for name, ways in out.items()}


def _bound_name(row: dict[str, Any]) -> str:
    known = "the day's inference" if row["knows_inference"] else "the model only"
    return f"informed bound ({known}), q{row['quantile']:g}"


def _bound_lines(bound: dict[str, Any]) -> list[str]:
    """The informed bound's table (gridtao/bench/plannerbound.py)."""
    rows = bound["rows"]
    quantiles = list(dict.fromkeys(r["quantile"] for r in rows))
    cell = {(r["knows_inference"], r["quantile"]): r for r in rows}
    lines = ["", "What any day-ahead forecast could earn: tier 3 planned on the node's own "
             f"predictive distribution at the gate ({bound['samples']} futures a day drawn from "
             "the synthetic node's model, with every job begun before the gate known), its "
             "p10 taken at each quantile of the futures' lowest minute per hour; 'the day's "
             "inference' also knows the day's actual inference draw. Of oracle / undeliverable "
             "h / offered h:", "",
             "| quantile | knows the model only | knows the day's inference too |",
             "|---|---|---|"]
    for q in quantiles:
        lines.append(f"| q{q:g} | " + " | ".join(
            f"{_pct(c['oracle_share'])} / {c['undeliverable_hours']} / {c['offered_hours']}"
            for c in (cell[False, q], cell[True, q])) + " |")
    return lines


def matched_bound(gridtao: dict[str, Any], bound: dict[str, Any]) -> dict[str, Any] | None:
    """The informed bound's best row knowing the model only with no more undeliverable hours
    than ``gridtao`` (a strategy's row): what a perfect forecaster of this node earns at
    gridtao's delivery record. None if every row missed more."""
    rows = [r for r in bound["rows"] if not r["knows_inference"]
            and r["undeliverable_hours"] <= gridtao["undeliverable_hours"]]
    return max(rows, key=lambda r: r["revenue"], default=None)


def judge_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    s = result["strategies"]
    g, o = s["gridtao"], s["oracle"]
    share = g["revenue"] / o["revenue"] if o["revenue"] > 0 else None
    return {
        "gridtao_undeliverable_hours": {"value": g["undeliverable_hours"], "limit": 0,
                                        "met": g["undeliverable_hours"] == 0},
        "revenue_vs_oracle": {"value": share, "limit": TARGET_ORACLE_SHARE,
                              "met": share is not None and share >= TARGET_ORACLE_SHARE},
        "revenue_above_static_and_reference": {
            "value": g["revenue"], "static": s["static"]["revenue"],
            "reference": s["reference"]["revenue"],
            "met": g["revenue"] > max(s["static"]["revenue"], s["reference"]["revenue"])},
        "solve_48h_all_products_s": {
            "value": result["solve_48h_all_products"]["max_s"], "limit": TARGET_SOLVE_S,
            "met": result["solve_48h_all_products"]["max_s"] < TARGET_SOLVE_S},
    }


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f} %"


def _site(node: dict[str, Any]) -> str:
    n, gpus = node["nodes"], node["gpus"]
    if n == 1:
        return f"1 node, {gpus} GPUs x {node['tdp_w']:g} W"
    return (f"{n} nodes of {gpus // n} GPUs x {node['tdp_w']:g} W pooled as one site "
            f"({gpus} GPUs)")


def _delivery_lines(found: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The site strategies' awards delivered by their nodes (gridtao/bench/plannerlive.py)."""
    if not found:
        return []
    lines = ["", "The site strategies' awards delivered node by node (each minute, each node "
             "gives what its mean draw above its floor allows of its share): hours with a "
             "minute short by more than 1 % / share of the awarded IT energy short:", "",
             "| strategy | summed room | shares moved (a minute late) | first split held |",
             "|---|---|---|---|"]
    for name, ways in found.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{int(ways[w]['short_hours'])} / "
            f"{ways[w]['short_wh'] / max(ways[w]['awarded_wh'], 1e-9):.2%}"
            for w in ("pooled", "live", "static")) + " |")
    return lines


def markdown(result: dict[str, Any], command: str) -> str:
    node = result["node"]
    fc = result["forecast"]
    g = result["strategies"]["gridtao"]
    lo, hi = result["job_hours"]
    lines = [
        f"### Tier 3 day-ahead plan vs static, reference and oracle ({result['days']} days, "
        "simulated)",
        "",
        f"- command: `{command}`",
        f"- machine: {result.get('machine', 'unknown')}",
        f"- date: {result.get('date', 'unknown')}",
        f"- node: {_site(node)}, floor {node['floor_w']:g} W IT, "
        f"offers at the meter (losses {node['losses_fraction'] * 100:g} %), PUE {node['pue']:g};"
        f" lost work {node['lost_work_eur_wh'] * 1e6:g} EUR/MWh, carbon "
        f"{node['carbon_eur_t']:g} EUR/t, DR at most {node['dr_max_hours_per_day']} h/day; "
        f"training jobs {lo:g}-{hi:g} h (log-uniform)",
        f"- planned {result['lead_h']:g} h before each day starts, from the history up to "
        "then only",
        f"- forecast (hourly, day ahead): mean pinball {fc['model']['mean_pinball_w']:.0f} W "
        f"against persistence {fc['persistence']['mean_pinball_w']:.0f} W (skill "
        f"{fc['skill_vs_persistence']:+.2f}); p10 pinball {fc['model']['pinball_p10_w']:.0f} W;"
        f" p10 coverage {g['p10_coverage']:.2f} over the week's hours, "
        + ("-" if g["p10_coverage_offered"] is None else f"{g['p10_coverage_offered']:.2f}")
        + f" over the {g['offered_hours']} hours gridtao offered in",
        "",
        "| strategy | revenue EUR | of oracle | offered EUR | undeliverable h | energy cost EUR "
        "| carbon kg | work shed kWh | solve p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["strategies"].items():
        solve_ms = "-" if row["solve_s_p99"] is None else f"{row['solve_s_p99'] * 1000:.1f}"
        lines.append(
            f"| {name} | {row['revenue']:.3f} | {_pct(row['oracle_share'])} | "
            f"{row['revenue_offered']:.3f} | {row['undeliverable_hours']} | "
            f"{row['energy_cost']:.2f} | {row['carbon_kg']:.1f} | "
            f"{row['work_shed_wh'] / 1000:.1f} | {solve_ms} |")
    lines += ["", "revenue: capacity paid for the hours the node could deliver; offered: every "
              "hour offered (an undeliverable hour is not paid, and not penalised either).", "",
              "gridtao with its p10 lowered by a margin learnt from the forecaster's misses over "
              f"the {result['calibration_days']} days before each day (the quantile of the "
              "misses per block of hours; the largest at 1):", "",
              "| margin | median W | revenue EUR | of oracle | undeliverable h | offered h |",
              "|---|---|---|---|---|---|"]
    for row in result["gridtao_margin_sweep"]:
        lines.append(f"| q{row['miss_quantile']:g} per {row['block_h']} h | "
                     f"{row['margin_w_median']:.0f} | {row['revenue']:.3f} | "
                     f"{_pct(row['oracle_share'])} | {row['undeliverable_hours']} | "
                     f"{row['offered_hours']} |")
    lines += _bound_lines(result["informed_bound"])
    best = matched_bound(g, result["informed_bound"])
    if best is not None:
        lines += ["", f"gridtao: {_pct(g['oracle_share'])} of the oracle with "
                  f"{g['undeliverable_hours']} undeliverable h; the bound knowing the model, at "
                  f"no more: {_pct(best['oracle_share'])} (q{best['quantile']:g}, "
                  f"{best['undeliverable_hours']} h)."]
    lines += _delivery_lines(result.get("site_delivery") or {})
    t = result["targets"]
    share = t["revenue_vs_oracle"]["value"]
    lines += [
        "",
        "Targets:",
        f"- no undeliverable hour for gridtao: {t['gridtao_undeliverable_hours']['value']}: "
        f"{_verdict(t['gridtao_undeliverable_hours']['met'])}",
        "- revenue >= 90 % of the oracle's: "
        + ("no oracle revenue" if share is None else f"{share * 100:.0f} %")
        + f": {_verdict(t['revenue_vs_oracle']['met'])}",
        f"- revenue above static ({t['revenue_above_static_and_reference']['static']:.3f}) and "
        f"reference ({t['revenue_above_static_and_reference']['reference']:.3f}): "
        f"{t['revenue_above_static_and_reference']['value']:.3f}: "
        f"{_verdict(t['revenue_above_static_and_reference']['met'])}",
        f"- 48 hourly MTUs x every product kind solved in < 1 s: "
        f"{t['solve_48h_all_products_s']['value'] * 1000:.1f} ms: "
        f"{_verdict(t['solve_48h_all_products_s']['met'])}",
    ]
    return "\n".join(lines) + "\n"


def markdown_seeds(summary: dict[str, Any], command: str) -> str:
    """The table of :func:`summarise_seeds`."""
    lo, hi = summary["job_hours"]
    seeds = summary["seeds"]
    n = summary["nodes"]
    lines = [f"### Tier 3 plan over seeds {', '.join(map(str, seeds))} ({summary['days']} days "
             f"each, {n} node{'s' if n > 1 else ''}, {summary['gpus']} GPUs, training jobs "
             f"{lo:g}-{hi:g} h)", "", f"- command: `{command}`",
             f"- planned {summary['lead_h']:g} h before each day starts",
             "- gridtao's p10 coverage per seed: "
             + ", ".join(f"{c:.2f}" for c in summary["p10_coverage"]), "",
             "| strategy | of oracle, pooled | per seed | undeliverable h | per seed |",
             "|---|---|---|---|---|"]
    for name, row in summary["rows"].items():
        lines.append(f"| {name} | {_pct(row['oracle_share_pooled'])} | "
                     + " / ".join(_pct(x) for x in row["oracle_share"])
                     + f" | {row['undeliverable_total']} | "
                     + " / ".join(str(h) for h in row["undeliverable_hours"]) + " |")
    g = summary["rows"]["gridtao"]
    bound = [(name, row) for name, row in summary["rows"].items()
             if name.startswith("informed bound (the model only)")
             and row["undeliverable_total"] <= g["undeliverable_total"]]
    if bound:
        name, row = max(bound, key=lambda nr: nr[1]["oracle_share_pooled"] or 0.0)
        lines += ["", f"gridtao, pooled: {_pct(g['oracle_share_pooled'])} of the oracle with "
                  f"{g['undeliverable_total']} undeliverable h; the best {name} row at no more: "
                  f"{_pct(row['oracle_share_pooled'])} ({row['undeliverable_total']} h)."]
    lines += _delivery_lines(summary.get("site_delivery") or {})
    return "\n".join(lines) + "\n"
