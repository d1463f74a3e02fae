"""How gridtao starts Python children (the demo's ``gridtao gpus``, the benches' agents,
attackers and workers): with this interpreter, and without the child's working folder on its
import path (``python -P``), so a ``gridtao/`` folder where the command is run (a clone beside
an installed copy) can never stand in for the installed package."""

from __future__ import annotations

import sys

__all__ = ["module_command"]


def module_command(module: str, *args: str) -> list[str]:
    """``python -P -m module args...`` with the running interpreter, as an argument list."""
    return [sys.executable, "-P", "-m", module, *args]
