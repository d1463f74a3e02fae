"""The one catalog of grid product kinds: what each kind is, decided here and nowhere else.

The config loader validates against it, the products package builds each kind's behaviour from
it (:func:`gridtao.products.catalog.make_product`), and the prequalification engine names and
scales its tests by it. Adding a kind starts here. Rules and sources: docs/products.md and
docs/sources.md#grid-products.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = ["FORMER_TEST_NAMES", "KINDS", "UNDER_FREQUENCY_SPAN_HZ", "Activation", "KindInfo",
           "frequency_kinds", "kind_for_test_name", "under_nominal"]

Activation = Literal["step", "static", "proportional", "scheduled"]


@dataclass(frozen=True)
class KindInfo:
    """One product kind.

    ``activation``: ``step`` fires the island's armed caps when frequency crosses a threshold,
    holds for a support duration and ramps out (FFR); ``static`` steps to full capacity below a
    threshold and follows frequency back (FCR-D up, static); ``proportional`` follows frequency
    through a droop (FCR-D up, FCR-N) as tier 2's commitment; ``scheduled`` is dispatched ahead
    of time (demand response). ``symmetric``: delivers up and down around a baseline (the node
    can enrol it once). ``test_name``: the name ``gridtao prequalify`` / ``bench compliance``
    take (the kind's own name: one name per kind, on the command line as in the config);
    ``test_time_scale``: the default time compression of its tests; ``nominal_hz``: the grid
    frequency it is defined around, the value a stale feed is taken for.
    """

    name: str
    title: str
    activation: Activation
    test_name: str
    test_time_scale: float
    symmetric: bool = False
    once_per_node: bool = False
    nominal_hz: float = 50.0  # the grid's nominal frequency (what a silent feed is taken for)
    #: The thresholds the TSO offers for it (Hz), when it names a fixed set (Nordic FFR).
    threshold_levels: tuple[float, ...] = ()

    @property
    def frequency(self) -> bool:
        """Driven by the measured grid frequency (not dispatched)."""
        return self.activation != "scheduled"

    @property
    def has_threshold(self) -> bool:
        """Activates when frequency crosses a threshold (``threshold_hz`` applies)."""
        return self.activation in ("step", "static")

    @property
    def config_keys(self) -> tuple[str, ...]:
        """The keys of a product entry (:class:`gridtao.config.grid.ProductConfig`) this kind
        reads; it ignores the others (e.g. ``rearm_s`` means nothing to demand response)."""
        keys = ["kind", "name", "capacity_w"]
        if self.has_threshold:
            keys += ["threshold_hz", "full_activation_s", "debounce_samples",
                     "debounce_budget_fraction"]
        if self.activation == "step":
            keys += ["support", "support_s", "rearm_s"] if self.name == "ffr" else [
                "support_s", "rearm_s"]
        if self.activation == "proportional":
            keys.append("median_samples")
        if self.symmetric:
            keys.append("baseline_w")
        return (*keys, "bid_step_w", "min_bid_w")

    def threshold_problem(self, hz: float) -> str | None:
        """Why ``hz`` cannot be this under-frequency product's threshold, or None."""
        if hz >= self.nominal_hz:
            return (f"{hz:g} Hz is not below the grid's nominal {self.nominal_hz:g} Hz: an "
                    "under-frequency product would activate at normal frequency")
        if not under_nominal(hz, self.nominal_hz):
            return (f"{hz:g} Hz is more than {UNDER_FREQUENCY_SPAN_HZ:g} Hz below the "
                    f"{self.nominal_hz:g} Hz grid {self.name} is defined on: a threshold of "
                    "another grid")
        if self.threshold_levels and not any(abs(hz - level) < 1e-9
                                             for level in self.threshold_levels):
            levels = ", ".join(f"{level:g}" for level in self.threshold_levels)
            return (f"{hz:g} Hz is not one of the TSO's activation levels for {self.name} "
                    f"({levels} Hz), each with its own full activation time")
        return None


#: How far under its grid's nominal frequency an under-frequency level may lie (Hz): further
#: down is a level of another grid.
UNDER_FREQUENCY_SPAN_HZ = 5.0


def under_nominal(hz: float, nominal_hz: float) -> bool:
    """Whether ``hz`` is an under-frequency level of the grid at ``nominal_hz``: below it, by
    at most :data:`UNDER_FREQUENCY_SPAN_HZ`."""
    return nominal_hz - UNDER_FREQUENCY_SPAN_HZ <= hz < nominal_hz


KINDS: Mapping[str, KindInfo] = MappingProxyType({k.name: k for k in (
    KindInfo("ffr", "Nordic Fast Frequency Reserve", "step", "ffr", 0.1,
             threshold_levels=(49.7, 49.6, 49.5)),
    KindInfo("ercot-ffr", "ERCOT Fast Frequency Response", "step", "ercot-ffr", 0.02,
             nominal_hz=60.0),
    KindInfo("fcr-d-up", "FCR-D upwards", "proportional", "fcr-d-up", 0.1),
    KindInfo("fcr-d-up-static", "FCR-D upwards, static", "static", "fcr-d-up-static", 0.1),
    KindInfo("fcr-n", "FCR-N", "proportional", "fcr-n", 0.1, symmetric=True,
             once_per_node=True),
    KindInfo("dr", "Demand response", "scheduled", "dr", 0.05, once_per_node=True),
)})


#: Names the command line took before it used the kinds' own (said so when typed).
FORMER_TEST_NAMES = {"fcr-d": "fcr-d-up", "fcr-d-static": "fcr-d-up-static"}


def frequency_kinds() -> tuple[str, ...]:
    return tuple(k.name for k in KINDS.values() if k.frequency)


def kind_for_test_name(test_name: str) -> KindInfo:
    """The kind a prequalification test name stands for (KeyError if none)."""
    for k in KINDS.values():
        if k.test_name == test_name:
            return k
    raise KeyError(test_name)
