"""The Grafana dashboard (deploy/grafana): its JSON is a current dashboard, every PromQL
expression in it parses, and every series it names is exported, with the type and labels the
expression needs, by a real agent (and a real site coordinator) scraped over HTTP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentproc import WAIT_S, agent_processes, spawn_agent, status_wait, write_agent_config
from broker import MosquittoBroker, publish
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD: dict[str, Any] = json.loads((GRAFANA / "gridtao-dashboard.json").read_text("utf-8"))
# The site coordinator's series, as agreed for its exporter (name -> labels).
SITE_SERIES = {
    "gridtao_site_nodes": {"state"}, "gridtao_site_it_power_watts": set(),
    "gridtao_site_meter_power_watts": set(), "gridtao_site_target_watts": {"at"},
    "gridtao_site_capacity_watts": {"product", "kind"}, "gridtao_site_events_active": set(),
    "gridtao_site_acks_total": {"result"}, "gridtao_site_ack_delay_seconds_bucket": {"le"},
    "gridtao_site_meter_model_error_ratio": set(),
}
# A fresh agent has no tier 3 plan, so no product is offered yet: the family is declared empty.
DECLARED_EMPTY = {"gridtao_capacity_offered_watts"}
TARGET_LABELS = {"instance", "job", "node"}  # added by Prometheus and the ServiceMonitor

# ---------------------------------------------------------------- a PromQL reader

FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "day_of_month", "day_of_week", "delta",
    "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "idelta", "increase", "irate", "label_join",
    "label_replace", "last_over_time", "ln", "log10", "log2", "max_over_time",
    "min_over_time", "predict_linear", "present_over_time", "quantile_over_time", "rate",
    "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev_over_time",
    "sum_over_time", "time", "timestamp", "vector",
}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile"}
RANGE_FUNCTIONS = {"rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets",
                   "predict_linear"} | {f for f in FUNCTIONS if f.endswith("_over_time")}
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"bool", "and", "or", "unless", "atan2", "offset"}
TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\[\]]+\])
  | (?P<duration>\d+(?:ms|[smhdwy])\b)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<variable>\$\{?\w+\}?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}@])
""", re.VERBOSE)


@dataclass
class Selector:
    name: str
    matchers: dict[str, str] = field(default_factory=dict)  # label -> operator
    ranged: bool = False
    function: str | None = None  # the innermost function call around it


@dataclass
class Query:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # labels in by/without/on/ignoring (...)


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"{expr!r}: cannot read {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "space":
            out.append((str(m.lastgroup), m.group()))
    return out


def parse(expr: str) -> Query:
    """The selectors and grouping labels of ``expr``; ValueError for what is not PromQL."""
    toks, query = tokens(expr), Query()
    toks += [("end", "")] * 3  # every look-ahead has a token to see
    stack: list[str | None] = []  # per open parenthesis: the function it calls, or None
    k = 0

    def labels(k: int, closing: str) -> tuple[list[tuple[str, str]], int]:
        """``label op "value", ...`` or ``label, ...`` up to ``closing``; returns the next k."""
        found: list[tuple[str, str]] = []
        while toks[k][1] != closing:
            kind, text = toks[k]
            if kind != "ident":
                raise ValueError(f"{expr!r}: label name expected, got {text!r}")
            if closing == "}":
                op, value = toks[k + 1], toks[k + 2]
                if op[1] not in ("=", "!=", "=~", "!~") or value[0] != "string":
                    raise ValueError(f"{expr!r}: bad matcher after {text!r}")
                found.append((text, op[1]))
                k += 3
            else:
                found.append((text, ""))
                k += 1
            if toks[k][1] == ",":
                k += 1
        return found, k + 1

    while toks[k][0] != "end":
        kind, text = toks[k]
        nxt = toks[k + 1][1]
        if kind == "ident" and text in AGGREGATIONS and nxt in ("by", "without"):
            if toks[k + 2][1] != "(":  # sum by (labels) (expr)
                raise ValueError(f"{expr!r}: {nxt} needs a label list")
            found, k = labels(k + 3, ")")
            query.grouping |= {name for name, _ in found}
            if toks[k][1] != "(":
                raise ValueError(f"{expr!r}: {text} needs an expression")
            stack.append(text)
            k += 1
        elif kind == "ident" and text in GROUPING:
            if nxt != "(" and text not in ("group_left", "group_right"):
                raise ValueError(f"{expr!r}: {text} needs a label list")
            if nxt == "(":
                found, k = labels(k + 2, ")")
                query.grouping |= {name for name, _ in found}
            else:
                k += 1
        elif kind == "ident" and text in KEYWORDS:
            k += 1
        elif kind == "ident" and nxt == "(":
            if text not in FUNCTIONS | AGGREGATIONS:
                raise ValueError(f"{expr!r}: unknown function {text!r}")
            stack.append(text)
            k += 2
        elif kind == "ident" or text == "{":
            sel = Selector(text if kind == "ident" else "")
            k += 1 if kind == "ident" else 0
            if toks[k][1] == "{":
                found, k = labels(k + 1, "}")
                sel.matchers = dict(found)
            sel.ranged = toks[k][0] == "range"
            k += 1 if sel.ranged else 0
            sel.function = next((f for f in reversed(stack) if f is not None), None)
            if not sel.name:
                raise ValueError(f"{expr!r}: a selector without a metric name")
            query.selectors.append(sel)
        elif text == "(":
            stack.append(None)
            k += 1
        elif text == ")":
            if not stack:
                raise ValueError(f"{expr!r}: unbalanced ')'")
            stack.pop()
            k += 1
        elif kind in ("number", "string", "duration", "op", "variable"):
            k += 1
        else:
            raise ValueError(f"{expr!r}: unexpected {text!r}")
    if stack:
        raise ValueError(f"{expr!r}: unbalanced '('")
    return query


def dashboard_queries() -> dict[str, Query]:
    """Every PromQL expression of the dashboard (panel targets and the variables' queries)."""
    out = {}
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            out[target["expr"]] = parse(target["expr"])
    for var in DASHBOARD["templating"]["list"]:
        if var["type"] == "query":  # Grafana's label_values(<selector>, <label>)
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
            assert m is not None, var["query"]
            out[var["query"]["query"]] = parse(m.group(1))
    return out


def test_the_reader_knows_promql_from_mistakes() -> None:
    q = parse('histogram_quantile(0.99, sum by (le, instance) (rate(x_bucket{a=~"$i"}'
              '[$__rate_interval]))) / on (instance) group_left y offset 5m')
    assert [(s.name, s.ranged, s.function) for s in q.selectors] == [
        ("x_bucket", True, "rate"), ("y", False, None)]
    assert q.grouping == {"le", "instance"} and q.selectors[0].matchers == {"a": "=~"}
    assert parse('sum(rate(c_total[5m])) by (result)').grouping == {"result"}
    assert parse("sum without (gpu) (z)").selectors[0].function == "sum"
    for bad in ["rat(x[5m])", "sum(x", 'x{a="b"', "x{a}", "sum by x", "x) + (y", '{a="b"}',
                "sum by (a) x", "x + on y"]:
        with pytest.raises(ValueError):
            parse(bad)


def test_the_dashboard_is_current_and_every_query_reads_well() -> None:
    assert DASHBOARD["schemaVersion"] >= 39 and DASHBOARD["uid"]
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert {t["refId"] for t in panel["targets"]} and panel["gridPos"]["w"] <= 24
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
    for expr, query in dashboard_queries().items():
        for sel in query.selectors:
            assert sel.name.startswith("gridtao_"), (expr, sel.name)
            assert sel.ranged == (sel.function in RANGE_FUNCTIONS), (expr, sel.name)
            if sel.function in COUNTER_FUNCTIONS:
                assert sel.name.endswith(("_total", "_bucket", "_count", "_sum")), expr
            if sel.function == "rate" and sel.name.endswith("_bucket"):
                assert expr.startswith("histogram_quantile(") and "le" in query.grouping, expr
    site = {s.name for q in dashboard_queries().values() for s in q.selectors
            if s.name.startswith("gridtao_site_")}
    assert site == set(SITE_SERIES), "the site row names other series than the site exports"
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert rows == ["Node", "Site"]
    for name in ("dashboards/gridtao.yaml", "datasources/prometheus.yaml"):
        provisioning = yaml.safe_load((GRAFANA / "provisioning" / name).read_text("utf-8"))
        assert provisioning["apiVersion"] == 1, name


# ---------------------------------------------------------------- against real exporters


@dataclass
class Family:
    type: str
    labels: set[str]
    samples: int
    total: float = 0.0  # the samples' sum


def exporter_port(log: Path) -> int:
    """The port an agent or site started with ``metrics.port: 0`` serves on, from its log
    (a free port picked by the test could be taken by another process before it binds)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        found = re.search(r"metrics at http://[^:]+:(\d+)/metrics", text)
        if found:
            return int(found.group(1))
        assert time.monotonic() < deadline, f"no metrics port in {log}: {text[-2000:]}"
        time.sleep(0.05)


def scrape(port: int) -> dict[str, Family]:
    """Series name (as PromQL names it) -> its family, from a live /metrics."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode("utf-8")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    out = {}
    for fam in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        for suffix in suffixes.get(fam.type, [""]):
            samples = [s for s in fam.samples if s.name == fam.name + suffix]
            out[fam.name + suffix] = Family(fam.type, {k for s in samples for k in s.labels},
                                            len(samples), sum(s.value for s in samples))
    return out


def check_exported(names: set[str], exported: dict[str, Family], *, empty: set[str]) -> None:
    queries = dashboard_queries()
    missing = sorted(n for n in names if n not in exported)
    assert missing == [], f"series on the dashboard that nobody exports: {missing}"
    for expr, query in queries.items():
        for sel in (s for s in query.selectors if s.name in names):
            fam = exported[sel.name]
            if sel.name in empty:
                continue
            assert fam.samples, f"{sel.name} is declared but has no sample"
            if sel.function in COUNTER_FUNCTIONS:
                assert fam.type in ("counter", "histogram"), (expr, fam.type)
            known = fam.labels | TARGET_LABELS
            assert set(sel.matchers) <= known, (expr, sel.matchers, fam.labels)
        inside = set(TARGET_LABELS)
        for sel in (s for s in query.selectors if s.name in names):
            inside |= exported[sel.name].labels
        if all(s.name in names for s in query.selectors):
            assert query.grouping <= inside, (expr, query.grouping, inside)


def test_every_node_series_on_the_dashboard_is_exported(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    cfg = write_agent_config(
        tmp_path, mqtt_broker, "dash", prefix="gridtao/dash", gpus=2,
        metrics={"enabled": True, "host": "127.0.0.1", "port": 0},
        safety={"triggers": []}, products=[{"kind": "ffr", "capacity_w": 200}])
    with agent_processes() as procs, mqtt_broker.subscriber("gridtao/dash/nodes/+/ack") as acks, \
            mqtt_broker.subscriber("gridtao/dash/nodes/dash/status") as status:
        procs.append(spawn_agent(cfg, tmp_path / "agent.log"))
        port = exporter_port(tmp_path / "agent.log")
        scrape(port)  # up
        # Online, so its dispatch subscription is in place: a dispatch sent before that is
        # not kept for it (clean sessions), and this test would wait for an ack in vain.
        status_wait(status, lambda p: p.get("online") is True, "the agent online")
        publish(mqtt_broker.host, mqtt_broker.port, "gridtao/dash/dispatch", json.dumps(
            {"id": "e1", "kind": "shed", "fraction": 0.2, "duration_s": 30}).encode())
        deadline = time.monotonic() + WAIT_S  # both latency histograms get an observation
        while not any(json.loads(m.payload).get("reached_at") for m in list(acks.messages)):
            assert time.monotonic() < deadline, "no ack with reached_at"
            time.sleep(0.05)
        exported = scrape(port)
    names = {s.name for q in dashboard_queries().values() for s in q.selectors
             if not s.name.startswith("gridtao_site_")}
    check_exported(names, exported, empty=DECLARED_EMPTY)
    for latency in ("command", "target"):
        assert exported[f"gridtao_trigger_to_{latency}_seconds_count"].total >= 1, latency


def test_every_site_series_on_the_dashboard_is_exported(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    prefix = "gridtao/dash-site"
    agent = write_agent_config(tmp_path, mqtt_broker, "n1", prefix=prefix, gpus=2,
                               safety={"triggers": []}, tracker={"period_s": 0.2},
                               products=[{"kind": "ffr", "capacity_w": 200}])
    cfg = tmp_path / "site.yaml"
    cfg.write_text(yaml.safe_dump({"mqtt": {"port": mqtt_broker.port, "prefix": prefix},
                                   "metrics": {"enabled": True, "port": 0},
                                   "site": {"id": "dash-site", "status_period_s": 0.2}}),
                   encoding="utf-8")
    with open(tmp_path / "site.log", "ab") as log, agent_processes() as procs:
        procs.append(spawn_agent(agent, tmp_path / "agent.log"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gridtao", "--config", str(cfg), "--log-level", "info",
             "site"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        port = exporter_port(tmp_path / "site.log")
        deadline = time.monotonic() + WAIT_S  # the node's products reach the site
        while not (exported := scrape(port)).get(
                "gridtao_site_capacity_watts", Family("", set(), 0)).samples:
            assert time.monotonic() < deadline, "the site never counted the node's capacity"
            time.sleep(0.1)
    check_exported(set(SITE_SERIES), exported, empty=set())
    for name, labels in SITE_SERIES.items():
        assert exported[name].labels == labels, name
