"""``tracker.priorities`` against the GPUs the agent finds (gridtao/app/checks.py).

A floor above a GPU's maximum power limit, or a GPU index the node does not have, passes the
file's own validation (it cannot know the GPUs) and is refused when the agent has read its GPUs'
limits: one line naming the key and the GPU's range, exit status 2, nothing written. A floor
below the GPU's minimum protects nothing: accepted, with a warning naming the key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from broker import MosquittoBroker
from nodes import merge, running

from gridtao.app.agent import Agent, AgentOptions
from gridtao.cli import main as cli
from gridtao.clock import MonotonicClock
from gridtao.config.agent import Config, ConfigError, config_from_mapping
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml

N = 4  # simulated H100s: limits settable from 200 to 700 W


def _mapping(priorities: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "gpus": {"backend": "sim", "sim": {"count": N, "noise_w": 0.0}},
        "mqtt": {"node_id": "floors", "prefix": "gridtao/floors"},
        "metrics": {"enabled": False},
        "tracker": {"priorities": priorities},
    }
    return merge(base, over)


def _config(priorities: list[dict[str, Any]], **over: Any) -> Config:
    return config_from_mapping(_mapping(priorities, **over), source="<test floors>")


def _construct(cfg: Config) -> None:
    """Build an agent on simulated GPUs (and close it, should it get that far)."""
    sim = SimNvml.from_config(cfg.gpus.sim, MonotonicClock())
    Agent(cfg, clock=sim.clock, backend=NvmlBackend(sim),
          options=AgentOptions(serve_metrics=False)).close()


@pytest.mark.parametrize(("priorities", "message"), [
    ([{"gpus": [0], "floor_w": 100_000}],
     "<test floors>: tracker.priorities[0].floor_w: 100000 W is above GPU 0's maximum limit "
     "700 W (its power limit can be set from 200 to 700 W)"),
    ([{"gpus": [1], "floor_w": 300}, {"gpus": [2, 3], "floor_w": 700.5}],
     "<test floors>: tracker.priorities[1].floor_w: 700.5 W is above GPU 2's maximum limit "
     "700 W (its power limit can be set from 200 to 700 W)"),
    ([{"gpus": [0, 9], "floor_w": 300}],
     "<test floors>: tracker.priorities[0].gpus[1]: no GPU 9 on this node (its GPUs: 0-3)"),
    ([{"gpus": [4], "priority": "flexible"}],
     "<test floors>: tracker.priorities[0].gpus[0]: no GPU 4 on this node (its GPUs: 0-3)"),
], ids=["far-above-max", "just-above-max", "no-such-gpu", "no-such-flexible-gpu"])
def test_a_floor_the_gpus_cannot_hold_is_refused_before_anything_is_written(
    tmp_path: Path, priorities: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        _construct(_config(priorities))
    assert str(exc.value) == message
    state = tmp_path / "state"  # tests/conftest.py: the agent's state directory
    assert not state.exists() or not any(state.iterdir()), list(state.iterdir())


def test_the_cli_says_it_in_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_start(self: Agent) -> None:  # else a regression would serve until killed
        raise AssertionError("the agent started with a floor its GPUs cannot hold")

    monkeypatch.setattr(Agent, "start", must_not_start)
    path = tmp_path / "floors.yaml"
    path.write_text(yaml.safe_dump(_mapping([{"gpus": [0], "floor_w": 100_000}])),
                    encoding="utf-8")
    assert cli.main(["--config", str(path), "run"]) == 2
    err = capsys.readouterr().err
    assert err == (f"gridtao: error: {path}: tracker.priorities[0].floor_w: 100000 W is above "
                   "GPU 0's maximum limit 700 W (its power limit can be set from 200 to 700 W)\n")


def test_floors_within_the_range_start_and_one_below_the_minimum_is_warned(
    mqtt_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config([{"gpus": [0], "floor_w": 100}, {"gpus": [1], "floor_w": 450},
                   {"gpus": [2], "floor_w": 700}],
                  mqtt={"port": mqtt_broker.port, "reconnect_min_s": 0.05,
                        "reconnect_max_s": 0.5})
    sim = SimNvml.from_config(cfg.gpus.sim, MonotonicClock())
    with caplog.at_level(logging.WARNING, logger="gridtao.app.checks"), \
            running(mqtt_broker, cfg, sim) as node:
        assert node.agent.tier2.floors_w == [100.0, 450.0, 700.0, 0.0]
    warnings = [r.getMessage() for r in caplog.records if r.name == "gridtao.app.checks"]
    assert warnings == ["<test floors>: tracker.priorities[0].floor_w: 100 W is below GPU 0's "
                        "minimum limit 200 W: no limit goes below the minimum, so this floor "
                        "protects nothing"]
