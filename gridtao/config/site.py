"""The ``site:`` section: the site coordinator (``gridtao site``, docs/site.md).

The coordinator reads the same configuration file format as the agent: ``mqtt`` (its broker
connection; ``mqtt.prefix`` is the site's prefix), ``auth`` (the keys that may sign a site
dispatch, checked as the agent checks a dispatch), ``metrics`` (its Prometheus endpoint) and
``facility`` (the site's model between the nodes' IT power and the settlement meter). This module
holds what only the coordinator has. Times in seconds, power in watts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gridtao.config.schema import fail, rng

__all__ = ["MarketConfig", "MeterConfig", "MinBid", "SiteConfig", "SiteKey", "SiteSigningConfig",
           "check_site"]


@dataclass(frozen=True)
class SiteKey:
    """A key the site signed with before its current one (``kid`` and its ``file``, as
    ``site.signing``'s, same mode)."""

    kid: str
    file: str


@dataclass(frozen=True)
class SiteSigningConfig:
    """The key the coordinator signs its per-node dispatches and awards with, as the aggregator
    would (the nodes' ``auth.keys`` must list its public key or secret under ``kid``). ``file``:
    an Ed25519 private key (PEM or raw base64) or an HMAC secret (base64); a relative path is
    taken from the config file's folder. ``mode: none`` sends unsigned dispatches, accepted
    only by nodes with ``auth.mode: none``. ``previous``: the keys it signed with before, for
    the first start after a key change: the retained events record the old key signed is then
    still taken back (the site signs nothing new with them)."""

    mode: Literal["none", "hmac", "ed25519"] = "none"
    kid: str | None = None
    file: str | None = None
    previous: tuple[SiteKey, ...] = ()


@dataclass(frozen=True)
class MeterConfig:
    """The site's settlement meter, read from ``{prefix}/meter`` (``{"t", "w"}``, a meter
    gateway's readings). ``feedback``: correct the IT budget of a meter-level event by the
    ratio of metered to modelled power (the facility model's error), estimated with an
    exponential average of time constant ``tau_s``; off, the budget is the model's alone.
    ``stale_s``: a reading whose ``t`` is further than this from the site's clock, either way,
    is not used (the model alone then).

    With ``auth.mode`` other than ``none``, a reading must be signed by a key that may sign
    ``meter`` (``auth.keys[].topics``), its ``t`` no older than ``stale_s`` (the age from which
    a reading is not used anyway) nor more than ``auth.max_future_s`` (or ``stale_s``) ahead,
    and increasing per key (gridtao/site/meterauth.py). ``require_signed: false`` takes
    unsigned readings too (the broker's ACL then guards them); a signed one is still
    checked."""

    feedback: bool = True
    tau_s: float = field(default=4.0, metadata=rng(0.0, 3600))
    stale_s: float = field(default=10.0, metadata=rng(0.1, 3600))
    require_signed: bool = True


@dataclass(frozen=True)
class MinBid:
    """The smallest bid the market takes for ``product`` (a product name in the nodes' plans,
    or a product kind), W."""

    product: str
    w: float = field(metadata=rng(0.0, 1e9))


@dataclass(frozen=True)
class MarketConfig:
    """How the site pools its nodes' offers into bids: each product's pooled capacity per
    market time unit is rounded down to ``bid_step_w`` and offered only from its minimum bid
    (``min_bids`` by product name or kind, else ``min_bid_w``). The defaults are Fingrid's:
    0.1 MW steps, FCR-N 0.1 MW, FCR-D 1 MW (docs/sources.md).

    ``pooling_correlation``: how the nodes' draws move together (0: independent, 1: as one).
    Below 1 the site's forecast p10 is the pooled one (gridtao/site/pooling.py) and its bids
    grow by the pooling gain over the nodes' own offers, each node still awarded at most its
    configured capacity. The default, 1, claims no pooling: measure before lowering it.
    ``resplit_s``: how often the capacity awarded for the current market time unit is moved
    off nodes short of live room for their shares to nodes with room to spare, so a node short
    of its share is covered by another (0: never; the award's first split, by offer, then holds
    all the MTU; gridtao/site/resplit.py)."""

    bid_step_w: float = field(default=100_000.0, metadata=rng(1.0, 1e9))
    min_bid_w: float = field(default=100_000.0, metadata=rng(0.0, 1e9))
    min_bids: tuple[MinBid, ...] = (MinBid("fcr-d-up", 1_000_000.0),
                                    MinBid("fcr-d-up-static", 1_000_000.0))
    pooling_correlation: float = field(default=1.0, metadata=rng(0.0, 1.0))
    resplit_s: float = field(default=10.0, metadata=rng(0.0, 3600.0))

    def min_bid_for(self, name: str, kind: str | None) -> float:
        for bid in self.min_bids:
            if bid.product == name:
                return bid.w
        for bid in self.min_bids:
            if bid.product == kind:
                return bid.w
        return self.min_bid_w


@dataclass(frozen=True)
class SiteConfig:
    """The site coordinator.

    ``id``: the site's name in its status and acks. ``nodes``: node ids the site expects (a
    node listed here and not online is reported missing; nodes not listed are taken in as
    they appear). ``ack_deadline_s``: how long after an event the site ack waits for nodes
    that have not answered. ``node_stale_s``: a node whose retained status is older than this
    counts as offline. ``rebalance_s``: how often the split of a site event is checked against
    the nodes' draw, online state and faults; a node's share moves only by more than
    ``rebalance_min_w``. ``margin_fraction``: each node's cap is kept this share of its
    headroom above its floor, so a node is never asked for a cap its guard refuses.
    ``status_period_s``: how often the retained site status is published. ``max_event_s``: a
    site event longer than this is refused; the default is a node's own default limit
    (``limits.max_event_duration_s``, 3600 s): a longer event is one every node left at that
    default refuses (raise both together).
    """

    id: str = "site"
    nodes: tuple[str, ...] = ()
    ack_deadline_s: float = field(default=2.0, metadata=rng(0.05, 3600))
    node_stale_s: float = field(default=5.0, metadata=rng(0.1, 3600))
    rebalance_s: float = field(default=2.0, metadata=rng(1.0, 3600))
    rebalance_min_w: float = field(default=50.0, metadata=rng(0.0, 10_000_000))
    margin_fraction: float = field(default=0.02, metadata=rng(0.0, 0.5))
    status_period_s: float = field(default=1.0, metadata=rng(0.05, 3600))
    max_event_s: float = field(default=3600.0, metadata=rng(1.0, 7 * 86_400))
    signing: SiteSigningConfig = field(default_factory=SiteSigningConfig)
    meter: MeterConfig = field(default_factory=MeterConfig)
    market: MarketConfig = field(default_factory=MarketConfig)


def check_site(site: SiteConfig, source: str) -> None:
    """Rules that span several ``site`` keys (raises ConfigError naming the key)."""
    signing = site.signing
    if signing.mode != "none":
        if not signing.kid:
            fail(source, "site.signing.kid", f"is required with site.signing.mode {signing.mode}")
        if not signing.file:
            fail(source, "site.signing.file",
                 f"is required with site.signing.mode {signing.mode}")
    elif signing.kid is not None or signing.file is not None or signing.previous:
        fail(source, "site.signing.mode", "none, but a signing kid, file or previous key is "
             "set: the site would send unsigned dispatches; set the mode (ed25519 or hmac) or "
             "remove them")
    kids = [signing.kid, *(k.kid for k in signing.previous)]
    for k, key in enumerate(signing.previous):
        if kids.count(key.kid) > 1:
            fail(source, f"site.signing.previous[{k}].kid", f"{key.kid!r} is named twice")
    if not _topic_level(site.id):
        fail(source, "site.id", f"{site.id[:64]!r} is not one MQTT topic level (printable, at "
             f"most {MAX_NAME_CHARS} characters, no '+', '#', '/' or space)")
    if len(set(site.nodes)) != len(site.nodes):
        fail(source, "site.nodes", "lists a node twice")
    for i, node in enumerate(site.nodes):
        if not _topic_level(node):
            fail(source, f"site.nodes[{i}]", f"{node[:64]!r} is not a node id (one MQTT topic "
                 f"level: printable, at most {MAX_NAME_CHARS} characters, no '+', '#', '/' or "
                 "space)")
    if 0.0 < site.market.resplit_s < 1.0:
        fail(source, "site.market.resplit_s", f"{site.market.resplit_s:g} s: 0 (never) or at "
             "least 1 s (each split sends every node an award)")
    if site.node_stale_s <= site.status_period_s:
        fail(source, "site.node_stale_s", f"{site.node_stale_s:g} s: a node must be allowed "
             f"longer than one status period ({site.status_period_s:g} s) before it counts as "
             "offline")
    products = [bid.product for bid in site.market.min_bids]
    for k, product in enumerate(products):
        if product in products[:k]:
            fail(source, f"site.market.min_bids[{k}].product", f"{product!r} is listed twice")


#: The longest site id or node id (they name topics, records and status entries).
MAX_NAME_CHARS = 128


def _topic_level(name: str) -> bool:
    return (0 < len(name) <= MAX_NAME_CHARS and name.isprintable()
            and not any(ch in name for ch in "+#/ "))
