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

    def row(got: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One plan's figures over the seeds (``got``: its result in each run)."""
        hours = [g["undeliverable_hours"] for g in got]
        revenue = sum(g["revenue"] for g in got)
        return {"oracle_share": [g["oracle_share"] for g in got],
                "oracle_share_pooled": round(revenue / oracle, 4) if oracle else None,
                "undeliverable_hours": hours, "undeliverable_total": sum(hours)}

    rows: dict[str, dict[str, Any]] = {
        name: row([r["strategies"][name] for r in results]) for name in results[0]["strategies"]}
    # The variants planned beside the strategies, matched by position across the runs.
    for i, margin in enumerate(results[0]["gridtao_margin_sweep"]):
        q, b = margin["miss_quantile"], margin["block_h"]
        rows[f"gridtao, margin q{q:g} per {b} h"] = row(
            [r["gridtao_margin_sweep"][i] for r in results])
    for i, ref in enumerate(results[0]["informed_reference"]["rows"]):
        rows[_reference_name(ref)] = row([r["informed_reference"]["rows"][i] for r in results])
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


_KNOWS_TEXT = {"model": "the model", "inference": "the day's inference too",
               "jobs": "the day's jobs too"}


def _reference_kind(knows: str) -> str:
    return f"informed reference (knows {_KNOWS_TEXT[knows]})"


def _reference_name(row: dict[str, Any]) -> str:
    return f"{_reference_kind(row['knows'])}, q{row['quantile']:g}"


def _reference_lines(ref: dict[str, Any]) -> list[str]:
    """The informed reference's table (gridtao/bench/plannerinformed.py)."""
    rows = ref["rows"]
    quantiles = list(dict.fromkeys(r["quantile"] for r in rows))
    knows = list(dict.fromkeys(r["knows"] for r in rows))
    cell = {(r["knows"], r["quantile"]): r for r in rows}
    lines = ["", "Informed reference: tier 3 planned on the node's own predictive distribution at "
             f"the gate ({ref['samples']} futures a day drawn from the synthetic node's model, "
             "every job begun before the gate known), its p10 at each quantile of the futures' "
             "lowest minute per hour; two variants are also given the day's actual inference "
             "load or its actual jobs. Of oracle / undeliverable h / offered h:", "",
             "| quantile | " + " | ".join(f"knows {_KNOWS_TEXT[k]}" for k in knows) + " |",
             "|---" * (len(knows) + 1) + "|"]
    for q in quantiles:
        lines.append(f"| q{q:g} | " + " | ".join(
            f"{_pct(c['oracle_share'])} / {c['undeliverable_hours']} / {c['offered_hours']}"
            for c in (cell[k, q] for k in knows)) + " |")
    return lines


def bracket(hours: int, rows: Sequence[dict[str, Any]]
            ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The rows of the reference knowing the model that bracket ``hours`` undeliverable
    hours: the best revenue with no more, and the best of those with the fewest more (None
    where there is none). Rows carry ``knows``, ``revenue`` and ``undeliverable_hours``."""
    model = [r for r in rows if r["knows"] == "model"]
    below = max((r for r in model if r["undeliverable_hours"] <= hours),
                key=lambda r: r["revenue"], default=None)
    more = [r for r in model if r["undeliverable_hours"] > hours]
    fewest = min((r["undeliverable_hours"] for r in more), default=None)
    above = max((r for r in more if r["undeliverable_hours"] == fewest),
                key=lambda r: r["revenue"], default=None)
    return below, above


def _bracket_line(share: str, hours: int, below: dict[str, Any] | None,
                  above: dict[str, Any] | None) -> list[str]:
    """``below`` and ``above`` (:func:`bracket`) with ``share``: a share of the oracle."""
    said = [f"{r['share']} with {r['undeliverable_hours']} h" for r in (below, above)
            if r is not None]
    return ["", f"gridtao: {share} of the oracle with {hours} undeliverable h; the reference "
            "knowing the model, on either side of that many hours: "
            + (" and ".join(said) if said else "no row") + "."]


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
    lines += _reference_lines(result["informed_reference"])
    rows = [r | {"share": _pct(r["oracle_share"])}
            for r in result["informed_reference"]["rows"]]
    lines += _bracket_line(_pct(g["oracle_share"]), g["undeliverable_hours"],
                           *bracket(g["undeliverable_hours"], rows))
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
    kind = _reference_kind("model")
    pooled = [{"knows": "model", "revenue": row["oracle_share_pooled"] or 0.0,
               "share": _pct(row["oracle_share_pooled"]),
               "undeliverable_hours": row["undeliverable_total"]}
              for name, row in summary["rows"].items() if name.startswith(kind + ",")]
    lines += _bracket_line(_pct(g["oracle_share_pooled"]) + " (pooled)",
                           g["undeliverable_total"], *bracket(g["undeliverable_total"], pooled))
    lines += _delivery_lines(summary.get("site_delivery") or {})
    return "\n".join(lines) + "\n"
