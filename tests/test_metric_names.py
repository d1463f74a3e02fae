"""Every metric a node agent exports (with work sources, CPU power and the history's ledger
enabled, so the energy and work metrics are there too) follows the Prometheus naming
conventions: counters' samples end in ``_total``, nothing else does, and values are in base
units (seconds, joules, watts, bytes, hertz; no milli-, kilo- or hour-based units, no
percentages)."""

from __future__ import annotations

import re
from pathlib import Path

from powercap import zone

from gridtao.app.agent import Agent, AgentOptions
from gridtao.clock import VirtualClock
from gridtao.config.agent import config_from_mapping
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml

NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
#: Name parts that mean a scaled or non-base unit.
NOT_BASE = re.compile(r"(^|_)(ms|us|ns|milli\w*|micro\w*|kilo\w*|mega\w*|kw|kwh|wh|mw|mj|"
                      r"minutes?|hours?|days?|percent|celsius_milli)(_|$)")


def test_the_agents_metrics_follow_the_naming_conventions(tmp_path: Path) -> None:
    zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 1_000_000)
    cfg = config_from_mapping({
        "gpus": {"sim": {"count": 2, "device": None}},
        "metrics": {"enabled": False},
        "audit": {"enabled": False}, "journal": {"enabled": False}, "safety": {"triggers": []},
        "history": {"path": str(tmp_path / "history.sqlite3")},
        "products": [{"kind": "ffr", "capacity_w": 100, "threshold_hz": 49.6},
                     {"kind": "dr", "capacity_w": 100}],
        "work": {"sources": [
            {"name": "llm", "url": "http://127.0.0.1:9/metrics", "kind": "vllm", "gpus": [0]},
            {"name": "train", "url": "http://127.0.0.1:9/metrics", "kind": "custom",
             "gpus": [1], "counters": ["samples_total"]}],
            "cpu_power": {"root": str(tmp_path / "powercap")}},
    }, source="<test metric names>")
    clock = VirtualClock()
    agent = Agent(cfg, clock=clock, backend=NvmlBackend(SimNvml.from_config(cfg.gpus.sim, clock)),
                  options=AgentOptions(serve_metrics=False))
    try:
        collected = list(agent.registry.collect())
    finally:
        agent.close()
    families = {}
    for family in collected:
        if family.name.startswith(("process_", "python_")):
            continue
        families[family.name] = family.type
        assert NAME.match(family.name), family.name
        assert family.name.startswith("gridtao_"), family.name
        assert not NOT_BASE.search(family.name), family.name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            elif family.type in ("gauge", "histogram", "info", "stateset"):
                assert not sample.name.endswith("_total"), sample.name
    # The energy and work ledger's families are there, counters as counters.
    assert families["gridtao_work_lost"] == "counter"
    assert families["gridtao_work_joules_per_token"] == "gauge"
    assert families["gridtao_gpu_energy_joules"] == "counter"
    assert families["gridtao_event_energy_not_drawn_joules"] == "counter"
    assert families["gridtao_cpu_energy_joules"] == "counter"
    assert any(name.startswith("gridtao_work_") and kind == "counter"
               and name != "gridtao_work_lost" for name, kind in families.items())
