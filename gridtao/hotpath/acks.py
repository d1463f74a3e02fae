"""What an activation's ack says beyond wire contract v1, from the :class:`Activation` alone:
structured fields an aggregator can add up, and the sentence for ``reason``. Pure functions."""

from __future__ import annotations

from gridtao.safety.island import Activation

__all__ = ["shed_fields", "shed_note", "shortfall_note", "write_fields", "write_note"]


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


def _shed_figures(act: Activation, asked_fraction: float) -> tuple[float, float] | None:
    """``(deliverable_w, asked_w)`` of a shed that delivers 1 W or more short of what it
    asked, else None: the reduction its target gives from its baseline, and what it asked."""
    asked_w = act.baseline_mw * asked_fraction / 1000.0
    deliverable_w = max(0.0, act.baseline_mw - act.target_mw) / 1000.0
    return (deliverable_w, asked_w) if asked_w - deliverable_w >= 1.0 else None


def shed_fields(act: Activation, asked_fraction: float) -> dict[str, object]:
    """A shed the node cannot deliver in full (whichever floor stopped it): ``deliverable_w``
    and ``shortfall_w``, the rest of what it asked. Empty when it delivers what it asked."""
    figures = _shed_figures(act, asked_fraction)
    if figures is None:
        return {}
    deliverable_w, asked_w = figures
    return {"deliverable_w": round(deliverable_w, 1),
            "shortfall_w": round(asked_w - deliverable_w, 1)}


def shed_note(act: Activation, asked_fraction: float, floor_mw: float) -> str | None:
    """The sentence for :func:`shed_fields`: what the shed is limited to, and by which floor
    (the GPUs' minimums and priority floors when they hold the target above the node floor,
    else ``limits.min_node_fraction``'s)."""
    figures = _shed_figures(act, asked_fraction)
    if figures is None:
        return None
    deliverable_w, asked_w = figures
    requested = act.requested_target_mw if act.requested_target_mw is not None else 0.0
    if act.target_mw - requested >= 1000.0:
        why = (f"the GPUs' minimums and priority floors ({act.target_mw / 1000.0:.0f} W, every "
               "GPU at its lowest)")
    else:
        why = f"the node's floor {floor_mw / 1000.0:.0f} W (limits.min_node_fraction)"
    limited = deliverable_w * 1000.0 / act.baseline_mw if act.baseline_mw > 0 else 0.0
    return (f"shed limited to {limited:.3f} (asked {asked_fraction:g}) by {why}: "
            f"{deliverable_w:.0f} W of the {asked_w:.0f} W asked")
