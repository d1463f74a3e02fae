"""MQTT topic names of wire contract v1 for one node. Nothing else.

Every topic lives under ``prefix`` (config ``mqtt.prefix``, e.g. ``gridtao/demo``): the shared
``{prefix}/frequency`` and ``{prefix}/dispatch`` inputs, and this node's topics under
``{prefix}/nodes/{node}/`` (its outputs, its award and its own dispatch inbox). Names are
checked once, at construction, so a topic built here is never a wildcard filter and never has
an empty level.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Topics"]


def _check_topic_part(what: str, value: str, *, single_level: bool) -> None:
    if not value:
        raise ValueError(f"MQTT {what} must not be empty")
    bad = "+#/\x00" if single_level else "+#\x00"
    for ch in bad:
        if ch in value:
            raise ValueError(f"MQTT {what} {value!r} must not contain {ch!r}")
    if not single_level and "" in value.split("/"):
        raise ValueError(f"MQTT {what} {value!r} has an empty topic level")


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one node under ``prefix`` (e.g. ``gridtao/demo``).

    ``prefix`` may span levels but has no wildcards or empty levels; ``node`` is one level.
    """

    prefix: str
    node: str

    def __post_init__(self) -> None:
        _check_topic_part("prefix", self.prefix, single_level=False)
        _check_topic_part("node id", self.node, single_level=True)

    @property
    def frequency(self) -> str:
        return f"{self.prefix}/frequency"

    @property
    def dispatch(self) -> str:
        return f"{self.prefix}/dispatch"

    @property
    def node_dispatch(self) -> str:
        """This node's own dispatch inbox: the site coordinator's share of a site event for this
        node (same payloads, guard and acks as ``dispatch``)."""
        return f"{self.prefix}/nodes/{self.node}/dispatch"

    @property
    def ack(self) -> str:
        return f"{self.prefix}/nodes/{self.node}/ack"

    @property
    def status(self) -> str:
        return f"{self.prefix}/nodes/{self.node}/status"

    @property
    def tracker(self) -> str:
        return f"{self.prefix}/nodes/{self.node}/tracker"

    @property
    def plan(self) -> str:
        """Retained: what tier 3 offers per product and MTU (gridtao/wire/awards.py)."""
        return f"{self.prefix}/nodes/{self.node}/plan"

    @property
    def award(self) -> str:
        """What the market accepted of the plan, per product and MTU."""
        return f"{self.prefix}/nodes/{self.node}/award"

    @property
    def signals(self) -> str:
        """Retained: prices and carbon for the planner (docs/planner-inputs.md)."""
        return f"{self.prefix}/signals"
