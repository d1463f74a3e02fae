"""``gridtao check-config`` and ``check-broker`` for the site coordinator's file.

A file is checked for ``gridtao site`` when ``--site`` says so, or when it has a ``site:``
section and none of the sections only the agent reads (``gpus``, ``safety``, ``products``...);
``--agent`` checks any file as a node's. For a site, what ``gridtao site`` reads at start is
checked, and nothing of the agent's (GPUs, products, its records): the schema and cross-key
rules (as the file is loaded), the keys that may sign a site dispatch or award (``auth``), the
site's own signing key and every previous one (``site.signing``), and the broker's TLS and
password files. The summary says what the site is set up to do: its id and topics, broker,
nodes, keys, meter (and which readings it takes: unsigned, or signed by which keys), facility
model, market steps, metrics and timing; a site that will refuse every meter reading is
warned about on stderr.
"""

from __future__ import annotations

import argparse
from typing import Final

from gridtao.config.agent import Config, ConfigError, read_yaml_file
from gridtao.errors import one_line
from gridtao.wire.site import SiteTopics

__all__ = ["AGENT_SECTIONS", "add_role_options", "check_site_files", "check_site_keys",
           "file_sections", "for_site", "meter_auth", "site_summary"]

#: The sections only the agent reads: a file with any of them is a node's by default.
AGENT_SECTIONS: Final = frozenset({"gpus", "safety", "control", "limits", "audit", "journal",
                                   "products", "tracker", "history", "planner", "work"})


def add_role_options(p: argparse.ArgumentParser) -> None:
    """``--site`` / ``--agent``: whose needs to check (see the module docstring)."""
    role = p.add_mutually_exclusive_group()
    role.add_argument("--site", dest="role", action="store_const", const="site", default=None,
                      help="check the file for gridtao site (the default for a file with a "
                           "site: section and none of the agent's own sections)")
    role.add_argument("--agent", dest="role", action="store_const", const="agent",
                      help="check the file for the agent (gridtao run), whatever it holds")


def for_site(args: argparse.Namespace, config: Config) -> bool:
    """Whether to check ``config`` for ``gridtao site`` rather than for the agent."""
    role = getattr(args, "role", None)
    if role is not None:
        return bool(role == "site")
    sections = file_sections(config)
    return "site" in sections and not AGENT_SECTIONS & sections


def file_sections(config: Config) -> frozenset[str]:
    """The top-level sections ``config``'s file sets (none for the built-in defaults)."""
    if config.source.startswith("<"):  # the built-in defaults: no file to look at
        return frozenset()
    try:
        data = read_yaml_file(config.source)  # read and checked a moment ago
    except ConfigError:
        return frozenset()
    return frozenset(str(k) for k in data) if isinstance(data, dict) else frozenset()


def check_site_files(config: Config) -> list[str]:
    """Read every file ``gridtao site`` reads at start; the key ids that may sign a site
    dispatch or award (a key for the meter alone may not). Raises ConfigError naming the file,
    the key and the problem."""
    from gridtao.security.auth import Verifier
    from gridtao.transport.tls import read_password, ssl_context

    verifier = Verifier.from_config(config.auth, source=config.source)
    check_site_keys(config)
    ssl_context(config.mqtt, source=config.source)
    read_password(config.mqtt, source=config.source)
    return list(verifier.signers("dispatch")) if verifier is not None else []


def check_site_keys(config: Config) -> None:
    """Read the keys ``gridtao site`` signs with: ``site.signing``'s, and every previous one
    (the record an earlier key signed). Raises ConfigError naming the file and the key."""
    from gridtao.site.signing import record_verifier, signer

    signer(config)
    record_verifier(config)


def meter_auth(config: Config) -> str:
    """Which meter readings ``gridtao site`` takes: unsigned, or signed by which keys."""
    from gridtao.site.meterauth import meter_signers

    if config.auth.mode == "none":
        return "unsigned (auth.mode none): the broker's ACL alone guards them"
    signers = ", ".join(meter_signers(config)) or "(none: every reading is refused)"
    fresh = f"t at most {config.site.meter.stale_s:g} s old and increasing per key"
    if config.site.meter.require_signed:
        return f"must be signed by a key for meter: {signers}; {fresh}"
    return (f"unsigned taken (site.meter.require_signed false); a signed one must be signed "
            f"by a key for meter: {signers}; {fresh}")


def site_summary(config: Config, *, kids: list[str]) -> str:
    """What ``gridtao site`` is set up to do with ``config``, in a few lines (the first says
    the file is valid)."""
    site, m, f = config.site, config.mqtt, config.facility
    topics = SiteTopics(m.prefix)
    who = f", as {m.username!r}" if m.username else ""
    nodes = (f"{len(site.nodes)} expected ({', '.join(site.nodes)}; others taken in as they "
             "appear)" if site.nodes else "none listed: taken in as they appear")
    auth = ("unsigned (auth.mode none)" if config.auth.mode == "none"
            else f"{config.auth.mode}, keys {', '.join(kids) or '(none)'}")
    signing = site.signing
    orders = (f"signed as {signing.kid!r} ({signing.mode})"
              + (f", {len(signing.previous)} previous key(s)" if signing.previous else "")
              + ": every node's auth.keys must list it for dispatch"
              if signing.mode != "none"
              else "unsigned (site.signing.mode none): only nodes with auth.mode none take them")
    meter = site.meter
    feedback = (f"feedback on (tau {meter.tau_s:g} s)" if meter.feedback
                else "feedback off (the facility model alone)")
    market = site.market
    bids = "".join(f", {b.product} {b.w:.0f} W" for b in market.min_bids)
    metrics = (f"http://{config.metrics.host}:{config.metrics.port}/metrics"
               if config.metrics.enabled else "off")
    pooling = ("correlation 1: none claimed" if market.pooling_correlation >= 1.0 else
               f"correlation {market.pooling_correlation:g} claimed (bids raised by the "
               "pooling gain)")
    lines = [
        f"ok: {one_line(config.source)} (for gridtao site)",
        f"site      {site.id}, under {m.prefix}/ (dispatches on {topics.dispatch}, status on "
        f"{topics.status})",
        f"broker    {m.host}:{m.port}, TLS {'on' if m.tls.enabled else 'off'}{who}",
        f"nodes     {nodes}",
        f"dispatch  site dispatches and awards: {auth}",
        f"orders    node orders and awards {orders}",
        f"meter     {topics.meter}, {feedback}, readings stale after {meter.stale_s:g} s",
        f"readings  {meter_auth(config)}",
        f"facility  losses {f.losses_fraction:.1%}, COP {f.cop:g}, fixed {f.fixed_w:.0f} W",
        f"market    bids in steps of {market.bid_step_w:.0f} W, minimum "
        f"{market.min_bid_w:.0f} W{bids}",
        f"pooling   {pooling}; the award in force moved to where the room is "
        + (f"every {market.resplit_s:g} s" if market.resplit_s > 0 else "never"),
        f"metrics   {metrics}",
        f"timing    ack deadline {site.ack_deadline_s:g} s, rebalance every "
        f"{site.rebalance_s:g} s (moves over {site.rebalance_min_w:g} W), node stale after "
        f"{site.node_stale_s:g} s, events up to {site.max_event_s:g} s",
    ]
    return "\n".join(lines)
