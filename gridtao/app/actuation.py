"""Can this node move its GPUs' limits, and putting them back: the start-up checks and the
restore at stop. Functions over the GPU backend; the agent calls them from its own thread."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from gridtao.gpu.backend import (
    GpuBackend,
    GpuError,
    GpuNotSupported,
    GpuPermissionDenied,
    PowerLimits,
)

__all__ = ["check_write_permission", "report_actuation", "restore_limits"]

log = logging.getLogger("gridtao.app.agent")


def check_write_permission(backend: GpuBackend, indices: Sequence[int]) -> None:
    """Write each GPU's current limit back (a no-op for the device): a node that may not set
    limits stops here, with the fix in the message. Other errors are left to the island's write
    probe (:func:`report_actuation`), which says them once for the node."""
    if getattr(backend, "dry_run", False):
        return
    for i in indices:
        try:
            backend.set_limit_mw(i, backend.enforced_limit_mw(i))
        except GpuPermissionDenied as e:
            raise GpuPermissionDenied(
                f"{e}: setting GPU power limits needs root or CAP_SYS_ADMIN"
                " (or run with --dry-run to observe only)", index=i,
            ) from None
        except GpuError:
            pass


def report_actuation(faults: Mapping[int, str], gpu_count: int, *, require: bool,
                     count_error: Callable[[int, str], None]) -> None:
    """Say at start, in one line, which GPUs refuse limit writes (the island's probe: each GPU's
    own limit written back). With none writable the node takes no cut (each is acked with the
    per-GPU reasons); ``require`` (``gpus.require_actuation``) makes that a start-up error."""
    for i, kind in faults.items():
        count_error(i, kind)
    if not faults:
        log.info("all %d GPUs accept power-limit writes (each wrote its own limit back)",
                 gpu_count)
        return
    detail = ", ".join(f"gpu {i}: {kind}" for i, kind in sorted(faults.items()))
    if len(faults) < gpu_count:
        log.warning("%d of %d GPUs refuse power-limit writes (%s): cuts will be short",
                    len(faults), gpu_count, detail)
        return
    line = (f"no GPU accepts power-limit writes ({detail}): this node can take no cut and "
            "will refuse every one")
    if require:
        raise GpuNotSupported(f"{line}; gpus.require_actuation is set, so it does not start")
    log.error("%s; set gpus.require_actuation: true to refuse to start instead", line)


def restore_limits(backend: GpuBackend, indices: Sequence[int], limits: Sequence[PowerLimits],
                   initial_mw: Sequence[int]) -> int:
    """Write back, GPU by GPU, the limit found at start (clamped into [min, max]), skipping
    GPUs that already enforce it. Returns how many GPUs could not be restored."""
    failed = 0
    for i, lim, initial in zip(indices, limits, initial_mw, strict=True):
        target = min(max(initial, lim.min_mw), lim.max_mw)
        try:
            if backend.enforced_limit_mw(i) == target:
                continue  # nothing to undo: a write would only fail where none is needed
            backend.set_limit_mw(i, target)
        except GpuError as e:
            failed += 1
            log.error("GPU %d: could not restore %d W: %s", i, target // 1000, e)
    return failed
