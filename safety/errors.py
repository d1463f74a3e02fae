"""Errors the island itself raises or records (the GPU's own errors pass through unchanged)."""

from __future__ import annotations

__all__ = ["IslandWriteError", "UnexpectedWriteError", "WriteTimeout"]


class IslandWriteError(Exception):
    """A write the island gave up on, for GPU ``index``."""

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(message)
        self.index = index


class WriteTimeout(IslandWriteError):
    """The GPU's write had not finished by the batch deadline (it may still land later)."""


class UnexpectedWriteError(IslandWriteError):
    """The backend raised something it should not have (a bug); recorded, never propagated."""
