"""matplotlib, an optional extra: imported only by the commands that draw.

The agent's runtime never needs it. :func:`pyplot` gives ``matplotlib.pyplot`` on the
non-interactive Agg backend, or raises :class:`PlottingUnavailable` saying how to install it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from gridtao.errors import GridtaoError

__all__ = ["INSTALL_HINT", "PlottingUnavailable", "available", "pyplot"]

INSTALL_HINT = ("plots need matplotlib: pip install 'gridtao[plot]' (from a source checkout: "
                "pip install '.[plot]')")


class PlottingUnavailable(GridtaoError):
    """matplotlib is not installed; the message says how to get it."""


def available() -> bool:
    """True if matplotlib can be imported (without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise PlottingUnavailable(INSTALL_HINT) from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
