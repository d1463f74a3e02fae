"""Configuration of what the node trusts from the network (re-exported by
:mod:`gridtao.config.agent`; ranges live next to each field in ``metadata``): the keys signed
dispatch, frequency and (at the site coordinator) meter messages are checked against
(``auth:``) and the bounds on what remote messages may do (``limits:``); both read by
gridtao/security/ (docs/security.md).

Times in seconds, rates in messages per second, fractions of 0..1. The dataclasses are frozen,
so a configuration is shared between threads as it is; each key is checked on its own as it is
read (gridtao/config/schema.py), the rules spanning several keys (keys for the mode, an
unauthenticated remote broker) in gridtao/config/rules.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gridtao.config.schema import rng

__all__ = ["AuthConfig", "AuthKey", "LimitsConfig"]


@dataclass(frozen=True)
class AuthKey:
    """A sender's key: ``kid`` names it on the wire; ``file`` holds it (never the secret inline).

    ``file`` is an Ed25519 public key (PEM or raw base64) for ``auth.mode: ed25519``, or an
    HMAC secret (base64, at least 32 bytes) for ``auth.mode: hmac``. A relative path is taken
    from the config file's folder. ``topics`` are the topics this key may sign for:
    ``dispatch`` (dispatches and awards, a node's or the site's), ``frequency`` (frequency
    samples, read by the nodes) and ``meter`` (the site meter's readings, read by the site
    coordinator). The default is the first two: a key that may sign a reading of the settlement
    meter is named so on purpose (``topics: [meter]``, a meter gateway's key), never a key
    listed before readings were signed.
    """

    kid: str
    file: str
    topics: tuple[Literal["dispatch", "frequency", "meter"], ...] = ("dispatch", "frequency")


@dataclass(frozen=True)
class AuthConfig:
    """Signed dispatch and frequency messages (docs/security.md). Times in seconds.

    With ``mode`` other than ``none``, every dispatch must carry ``sig`` and ``kid`` and an
    ``issued_at`` no older than ``freshness_s`` nor more than ``max_future_s`` ahead; its id is
    remembered in ``replay_store`` (default: ``<state dir>/replay-<node>.jsonl``, see
    gridtao/config/paths.py) for ``freshness_s``, so a replay is refused across
    restarts. Signed frequency samples must have ``t`` within ``frequency_freshness_s`` and
    increasing per key; unsigned ones are refused when ``require_signed_frequency`` is true.
    """

    mode: Literal["none", "hmac", "ed25519"] = "none"
    keys: tuple[AuthKey, ...] = ()
    freshness_s: float = field(default=30.0, metadata=rng(0.1, 86_400))
    frequency_freshness_s: float = field(default=2.0, metadata=rng(0.05, 3600))
    max_future_s: float = field(default=2.0, metadata=rng(0, 3600))
    replay_store: str | None = None
    replay_max_entries: int = field(default=100_000, metadata=rng(10, 10_000_000))
    require_signed_frequency: bool = True
    # With mode none against a broker off this machine, anyone who can publish to it can cut
    # the node: the agent refuses to start unless the operator says so here.
    allow_unauthenticated: bool = False


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds on what remote messages may do to the node (docs/security.md).

    Rates are token buckets per topic (messages/s, burst in messages); over the rate, a dispatch
    is refused with an ack and a frequency sample is dropped (both counted). A dispatched cut is
    refused if its shed ``fraction`` exceeds ``max_reduction_fraction``, its ``node_w`` is below
    ``min_node_fraction`` of the GPUs' summed default limits (a shed that would cross that floor
    at the current draw is reduced to stop at it), its ``duration_s`` exceeds
    ``max_event_duration_s``, it comes sooner than ``min_event_interval_s`` after the last
    accepted cut, or ``max_events_in_flight`` events are already active. Releases are exempt
    from all but the rate.

    ``reject_acks_per_s`` / ``reject_ack_burst``: the budget of acks for refused messages that
    no signature vouches for (malformed, unsigned, badly signed, over the rate, or anything under
    ``auth.mode: none``); past it a refusal is counted (``gridtao_acks_suppressed_total``) but not
    acked, so a flood of junk never crowds out an activation's ack. A refused message whose
    signature verified is always acked. ``reject_records_per_s`` / ``reject_record_burst``: the
    same for their audit records; past it they are counted in one ``rejections_unrecorded``
    record.
    """

    dispatch_rate_per_s: float = field(default=5.0, metadata=rng(0.001, 10_000))
    dispatch_burst: int = field(default=20, metadata=rng(1, 100_000))
    frequency_rate_per_s: float = field(default=60.0, metadata=rng(0.001, 100_000))
    frequency_burst: int = field(default=120, metadata=rng(1, 1_000_000))
    max_events_in_flight: int = field(default=4, metadata=rng(1, 1000))
    max_reduction_fraction: float = field(default=0.8, metadata=rng(0.0, 1.0))
    min_node_fraction: float = field(default=0.3, metadata=rng(0.0, 1.0))
    min_event_interval_s: float = field(default=1.0, metadata=rng(0, 86_400))
    max_event_duration_s: float = field(default=3600.0, metadata=rng(0.1, 86_400 * 7))
    reject_acks_per_s: float = field(default=10.0, metadata=rng(0.001, 100_000))
    reject_ack_burst: int = field(default=50, metadata=rng(1, 1_000_000))
    reject_records_per_s: float = field(default=20.0, metadata=rng(0.001, 100_000))
    reject_record_burst: int = field(default=200, metadata=rng(1, 1_000_000))
