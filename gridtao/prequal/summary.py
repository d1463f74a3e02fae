"""Markdown summary of ``gridtao bench compliance --json`` files (for BENCHMARKS.md).

``python -m gridtao.prequal.summary FILE.json...`` prints one table row per test: the product,
the test, PASS/FAIL and every rule as ``name value (limit)``, failed rules in bold, then the
command, date and machine of each file. ``gridtao prequalify score --json`` files are read too
(their workload column says ``recorded``: the recording's own); any other file is one error
line naming it, exit 2. The numbers are the scorer's own (scoring.py);
nothing is recomputed here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _limit(rule: dict[str, Any]) -> str:
    lim, op, unit = rule["limit"], rule["op"], rule["unit"]
    if op == "in":
        return f"[{lim[0]:g}, {lim[1]:g}] {unit}"
    return f"{op} {lim:g} {unit}"


def _rule(rule: dict[str, Any]) -> str:
    value = "n/a" if rule["value"] is None else f"{rule['value']:.3g}"
    text = f"{rule['name']} {value} ({_limit(rule)})"
    return text if rule["passed"] else f"**{text}**"


def rows(results: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown table (header included) of every test in ``results``."""
    out = ["| product | test | workload | result | rules: measured (limit) |",
           "|---|---|---|---|---|"]
    for res in results:
        for test in res["tests"]:
            verdict = "PASS" if test["passed"] else "**FAIL**"
            rules = "; ".join(_rule(r) for r in test["rules"])
            workload = res.get("workload", "recorded" if "source" in res else "?")
            out.append(f"| {res['product']} | {test['name']} | {workload} | {verdict} "
                       f"| {rules} |")
    return out


def provenance(results: Sequence[dict[str, Any]]) -> list[str]:
    """One line per file: the command that produced it, its date and machine."""
    return [f"- `{res.get('command', '?')}` ({res.get('date', 'date not recorded')}, "
            f"{res.get('machine', 'machine not recorded')})" for res in results]


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m gridtao.prequal.summary FILE.json...", file=sys.stderr)
        return 2
    results = []
    for p in paths:
        try:
            res = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            print(f"gridtao: error: {p}: cannot read it as JSON: {e}", file=sys.stderr)
            return 2
        if not (isinstance(res, dict) and "product" in res and isinstance(res.get("tests"), list)):
            print(f"gridtao: error: {p}: not a result of `gridtao bench compliance --json` or "
                  "`gridtao prequalify score --json` (no product and tests)", file=sys.stderr)
            return 2
        results.append(res)
    print("\n".join([*rows(results), "", *provenance(results)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
