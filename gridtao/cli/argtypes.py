"""Argument types of the command line: numbers checked as argparse reads them, so a bad value
is one line naming its option (``argument --days: must be in (0, 3660] days, got 0``, exit 2),
never a traceback."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["number", "whole"]


def number(lo: float, hi: float = math.inf, unit: str = "", *,
           above_lo: bool = False) -> Callable[[str], float]:
    """A finite number in ``[lo, hi]`` (``above_lo``: in ``(lo, hi]``), ``unit`` said with the
    bounds when one is refused."""
    lo_text = f"{'>' if above_lo else '>='} {lo:g}"
    bounds = (f"{lo_text}" if math.isinf(hi)
              else f"in {'(' if above_lo else '['}{lo:g}, {hi:g}]") + (f" {unit}" if unit else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(value) and (value > lo if above_lo else value >= lo)
                and value <= hi):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def whole(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """A whole number ``>= lo`` (and ``<= hi`` when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"must be >= {lo}, got {value}" if hi is None
                else f"must be in {lo}..{hi}, got {value}")
        return value

    return parse
