"""What an activation's ack says beyond wire contract v1, from the :class:`Activation` alone:
structured fields an aggregator can add up, and the sentence for ``reason``. Pure functions."""

from __future__ import annotations

from gridtao.safety.island import Activation

__all__ = ["shortfall_note", "write_fields", "write_note"]


def write_fields(act: Activation) -> dict[str, object]:
    """Structured ack fields of an activation's writes: the GPUs whose write failed, and
    ``binding: false`` when a more restrictive event already held the GPUs (nothing written)."""
    fields: dict[str, object] = {}
    if act.errors:
        fields["failed_gpus"] = list(act.failed_gpus)
    if not act.binding:
        fields["binding"] = False
    if act.dry_run:
        fields["dry_run"] = True  # the caps were logged, not written: nothing changed
    if act.shortfall_mw >= 1000.0:
        fields["deliverable_w"] = round((act.baseline_mw - act.target_mw) / 1000.0, 1)
        fields["shortfall_w"] = round(act.shortfall_mw / 1000.0, 1)
    return fields


def shortfall_note(act: Activation) -> str | None:
    """A cut deeper than the node can go: say what it delivers instead, and why."""
    if act.shortfall_mw < 1000.0:
        return None
    asked = (act.baseline_mw - (act.requested_target_mw or act.target_mw)) / 1000.0
    can = (act.baseline_mw - act.target_mw) / 1000.0
    return (f"can deliver {can:.0f} W of the {asked:.0f} W asked: the node's floor is "
            f"{act.target_mw / 1000.0:.0f} W (every GPU at its minimum or priority floor)")


def write_note(act: Activation) -> str | None:
    """Accepted with failures on some GPUs: say which, so the aggregator knows the cut is short."""
    if not act.errors:
        return None
    return "; ".join(f"gpu {i}: {err}" for i, err in sorted(act.errors.items()))
