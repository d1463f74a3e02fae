"""The package's shape as an operator installs it: what starting the agent loads, what the wheel
holds. (The import layering itself is checked by lint-imports in ``make lint``.)"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _loaded_after(code: str) -> list[str]:
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_starting_the_agent_loads_no_bench_harness_and_no_plotting() -> None:
    loaded = _loaded_after(
        "from gridtao.cli.main import build_parser\n"
        "build_parser().parse_args(['run'])\n"
        "import gridtao.app.run, gridtao.app.agent, gridtao.app.demo\n"
    )
    assert [m for m in loaded if m.startswith("gridtao.bench")] == []
    assert [m for m in loaded if m.split(".")[0] == "matplotlib"] == []


def test_the_safety_island_loads_nothing_else_of_gridtao() -> None:
    loaded = _loaded_after("import gridtao.safety.island\n")
    others = [m for m in loaded if m.startswith("gridtao.") and not m.startswith("gridtao.safety")]
    assert others == []



def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, timeout=300,
                   capture_output=True)
    (wheel,) = tmp_path.glob("gridtao-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(meta).decode()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"gridtao"}
    assert "gridtao/safety/island.py" in names and "gridtao/bench/latency.py" in names
    assert "License-Expression: Apache-2.0" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert not any("matplotlib" in r for r in runtime)
    assert any("matplotlib" in r and 'extra == "plot"' in r for r in requires)
