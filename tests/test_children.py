"""gridtao.children: a child started where a ``gridtao/`` folder lies (the folder holding a
clone, beside an installed copy) still runs the installed package."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gridtao import __version__
from gridtao.children import module_command


def test_a_gridtao_folder_in_the_working_folder_does_not_shadow_the_package(
        tmp_path: Path) -> None:
    decoy = tmp_path / "gridtao"
    decoy.mkdir()
    (decoy / "README.md").write_text("a clone's folder, not a package\n")
    done = subprocess.run(module_command("gridtao", "--version"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert __version__ in done.stdout
