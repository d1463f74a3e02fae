"""A plan as people read it: the hourly table, JSON, and a plot (``gridtao plan``, the demo).

Per MTU: the forecast quantiles of the natural IT draw (W), the offer per product (W at the
settlement point), the planned node ceiling (IT W, where one binds), the work the plan expects
the jobs to lose (IT W·h: under the ceiling and to expected activations), and the expected
reserve revenue and energy cost (EUR) and carbon (kg) of the expected draw. Pure but for
:func:`draw`, which writes a PNG (matplotlib at run time).
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

from gridtao.tier3.planner import Plan

__all__ = ["draw", "rows", "table", "to_json", "why_no_offer"]


def rows(plan: Plan) -> list[dict[str, Any]]:
    """One row per MTU: forecast, offers and money (EUR), carbon (kg)."""
    f, p, r = plan.forecast, plan.problem, plan.result
    hours = f.mtu_s / 3600.0
    out = []
    for k in range(f.horizon):
        revenue = 0.0
        for e in p.enrolments:
            price = p.reserve_eur_mw_h.get(e.kind)
            if price is not None and math.isfinite(float(price[k])):
                revenue += float(r.offers_w[e.name][k]) / 1e6 * float(price[k]) * hours
        draw_mwh = float(r.expected_draw_w[k]) * p.pue / 1e6 * hours
        energy = _times(p.energy_eur_mwh, k, draw_mwh)
        carbon = _times(p.carbon_g_kwh, k, draw_mwh)  # g/kWh x MWh = kg
        out.append({
            "start": f.start_s + k * f.mtu_s,
            "p10_w": float(f.p10_w[k]), "p50_w": float(f.p50_w[k]), "p90_w": float(f.p90_w[k]),
            "offers_w": {name: float(v[k]) for name, v in r.offers_w.items()},
            "ceiling_w": None if r.ceiling_w is None or not math.isfinite(float(r.ceiling_w[k]))
            else float(r.ceiling_w[k]),
            "work_shed_wh": max(0.0, float(f.p50_w[k]) - float(r.expected_draw_w[k])) * hours,
            "revenue_eur": revenue, "energy_cost_eur": energy, "carbon_kg": carbon})
    return out


def _times(series: Any, k: int, mwh: float) -> float | None:
    if series is None or not math.isfinite(float(series[k])):
        return None
    return float(series[k]) * mwh


def table(plan: Plan) -> str:
    names = list(plan.result.offers_w)
    head = (f"{'hour (local)':<17}{'p10 W':>8}{'p50 W':>8}{'p90 W':>8}"
            + "".join(f"{n[:10]:>11}" for n in names)
            + f"{'ceiling W':>11}{'shed Wh':>9}{'rev EUR':>9}{'energy EUR':>11}{'CO2 kg':>8}")
    lines = [f"plan for {plan.forecast.horizon} MTUs of {plan.forecast.mtu_s} s "
             f"(node floor {plan.problem.floor_w:.0f} W IT; offers in W at the settlement "
             "point)", head]
    for row in rows(plan):
        when = datetime.fromtimestamp(row["start"]).strftime("%Y-%m-%d %H:%M")
        lines.append(
            f"{when:<17}{row['p10_w']:>8.0f}{row['p50_w']:>8.0f}{row['p90_w']:>8.0f}"
            + "".join(f"{row['offers_w'][n]:>11.0f}" for n in names)
            + f"{_num(row['ceiling_w'], 11, 0)}{row['work_shed_wh']:>9.0f}"
            + f"{row['revenue_eur']:>9.3f}{_num(row['energy_cost_eur'], 11, 3)}"
            + f"{_num(row['carbon_kg'], 8, 2)}")
    r = plan.result
    lines.append(f"total: revenue {r.revenue:.3f} EUR, energy {r.energy_cost:.3f} EUR, carbon "
                 f"{r.carbon_kg:.2f} kg, work shed {r.work_shed_wh / 1000:.2f} kWh; solved in "
                 f"{r.solve_s * 1000:.0f} ms ({r.status})")
    lines += [f"note: {n}" for n in (*r.notes, *plan.signal_warnings, *why_no_offer(plan))]
    return "\n".join(lines)


def why_no_offer(plan: Plan) -> list[str]:
    """Why MTUs have no offer at all, counted by cause (empty when every MTU has one): the
    forecast's low quantile (as the program used it: after any margin) at or under the node's
    floor leaves no room; else no enrolled product has a capacity price there; else offering
    did not pay (the energy, carbon or work it would cost is worth more)."""
    p, r = plan.problem, plan.result
    n = plan.forecast.horizon
    idle = [k for k in range(n) if all(float(v[k]) <= 0.0 for v in r.offers_w.values())]
    if not idle:
        return []
    no_room = [k for k in idle if float(p.p10_w[k]) <= p.floor_w]
    priced = [k for k in idle if k not in no_room and any(
        math.isfinite(float(price[k])) and float(price[k]) > 0.0
        for kind, price in p.reserve_eur_mw_h.items()
        if any(e.kind == kind for e in p.enrolments))]
    unpriced = len(idle) - len(no_room) - len(priced)
    causes = [(len(no_room), f"the forecast's p10 is at or under the node's floor "
                             f"({p.floor_w:.0f} W IT): no room to offer"),
              (unpriced, "no capacity price for any enrolled product"),
              (len(priced), "offering did not pay (energy, carbon or lost work)")]
    found = [(count, why) for count, why in causes if count]
    if len(found) == 1:  # one cause for every MTU without an offer: no count to repeat
        return [f"no offer in {len(idle)} of {n} MTUs: {found[0][1]}"]
    said = "; ".join(f"{count} MTU{'s' if count > 1 else ''}: {why}" for count, why in found)
    return [f"no offer in {len(idle)} of {n} MTUs: {said}"]


def _num(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def to_json(plan: Plan) -> dict[str, Any]:
    """The plan as JSON: the summary and its hours, watts to 0.1 W, money to 0.1 cent,
    carbon to the gram, work to 0.1 W·h (what the figures can mean)."""
    return {"made_at": plan.made_at_s, "mtu_s": plan.forecast.mtu_s,
            "start": plan.forecast.start_s, **plan.summary(),
            "hours": [_rounded(row) for row in rows(plan)]}


_DIGITS = {"p10_w": 1, "p50_w": 1, "p90_w": 1, "ceiling_w": 1, "work_shed_wh": 1,
           "revenue_eur": 4, "energy_cost_eur": 4, "carbon_kg": 3}


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key, digits in _DIGITS.items():
        if isinstance(out.get(key), float):
            out[key] = round(out[key], digits)
    out["offers_w"] = {k: round(v, 1) for k, v in row["offers_w"].items()}
    return out


def draw(plan: Plan, path: Path) -> None:
    """Forecast band and the stacked offers (IT W) per MTU."""
    from gridtao.telemetry.plotting import pyplot

    plt = pyplot()
    data = rows(plan)
    t = [datetime.fromtimestamp(r["start"]) for r in data]
    # The steps hold each MTU's value to its end: the last one needs its end as a point too.
    edges = [*t, datetime.fromtimestamp(plan.forecast.end_s)]

    def held(key: str) -> list[float]:
        values = [float(r[key]) for r in data]
        return [*values, values[-1]]

    fig, ax = plt.subplots(figsize=(11, 4), dpi=110)
    ax.fill_between(edges, held("p10_w"), held("p90_w"), step="post",
                    alpha=0.2, label="forecast p10-p90 (IT W)")
    ax.step(edges, held("p50_w"), where="post", label="forecast p50 (IT W)")
    ax.axhline(plan.problem.floor_w, color="k", ls=":", lw=1, label="node floor")
    bottom = [plan.problem.floor_w] * len(data)
    for name in plan.result.offers_w:
        height = [r["offers_w"][name] for r in data]
        ax.bar(t, height, bottom=bottom, width=plan.forecast.mtu_s / 86_400, align="edge",
               alpha=0.6, label=f"offer {name} (W at the settlement point)")
        bottom = [b + h for b, h in zip(bottom, height, strict=True)]
    ax.set_ylabel("W")
    ax.set_title(f"gridtao plan: expected revenue {plan.result.revenue:.2f} EUR")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
