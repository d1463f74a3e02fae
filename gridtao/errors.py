"""The one root of every error gridtao raises on purpose.

``except GridtaoError`` catches them all; each subclass is defined next to the code that raises
it and carries what the caller needs (a file, a key, a GPU index). Some also derive from the
builtin they refine (``ValueError`` for bad input, ``OSError`` for a store on disk), so code
written against the builtin keeps working. The safety island (``gridtao.safety``) is the one
exception: it imports nothing of gridtao, so its own few errors derive from ``Exception``.
"""

from __future__ import annotations

__all__ = ["GridtaoError", "one_line"]


class GridtaoError(Exception):
    """Base class of gridtao's own errors."""


def one_line(text: str) -> str:
    """``text`` with every character that is not printable (a newline or a control character
    in a file name, say) written as its escape, so an error message stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
