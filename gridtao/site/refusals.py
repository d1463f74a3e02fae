"""A node that refuses the site's orders for their signature, made visible to the operator.

The site takes in nodes not listed in ``site.nodes`` as they appear (docs/site.md), and such a
node may check dispatch signatures (its ``auth.mode`` not ``none``) where the site signs
nothing (``site.signing.mode: none``), or not list the site's key. A node's status says what
it requires (``auth``: its mode and the key ids that may sign a dispatch), so the site warns
as soon as it sees a node that will refuse its orders; a node that does not say (an older
agent) is found out at its first refusal of an order for authentication: a node prefixes the
reason of every such refusal with ``auth:`` (its dispatch guard). :class:`OrderAuth` logs one
warning per node, and gives the hint the site ack puts beside that node's own reason.

Not thread-safe: the coordinator's loop owns it.
"""

from __future__ import annotations

import logging
from typing import Final

from gridtao.config.site import SiteSigningConfig

__all__ = ["AUTH_PREFIX", "OrderAuth"]

log = logging.getLogger("gridtao.site")

#: How a node's ack reason starts when its guard refused a message's authentication.
AUTH_PREFIX: Final = "auth:"


class OrderAuth:
    """What the site says about its nodes' authentication refusals (module docstring)."""

    def __init__(self, signing: SiteSigningConfig) -> None:
        self.signing = signing
        self.warned: set[str] = set()  # nodes already named in a warning

    def hint(self, reason: str | None) -> str | None:
        """The site's hint for a node's refusal ``reason``; None when it is not about
        authentication."""
        if reason is None or not reason.startswith(AUTH_PREFIX):
            return None
        if self.signing.mode == "none":
            return ("the node requires signed dispatches and the site signs none: set "
                    "site.signing to a key the node's auth.keys lists for dispatch")
        if "unknown key id" in reason or "may not sign" in reason:
            return (f"the node does not take the site's key {self.signing.kid!r}: list it in "
                    "the node's auth.keys for the dispatch topic")
        return ("the node refused the site's signature: check site.signing against the "
                "node's auth.keys, and both clocks")

    def on_status(self, node: str, auth: object) -> None:
        """A node's status ``auth`` (its requirements; anything else is ignored): warn once
        when the site's orders would be refused for their signature."""
        if not isinstance(auth, dict) or node in self.warned:
            return
        mode, kids = auth.get("mode"), auth.get("dispatch_kids")
        if mode in (None, "none"):
            return
        if self.signing.mode == "none":
            hint = self.hint(f"{AUTH_PREFIX} unsigned")
        elif mode != self.signing.mode or (
                isinstance(kids, list) and self.signing.kid not in kids):
            hint = (f"the node takes {mode} dispatches signed by {kids}, the site signs "
                    f"{self.signing.mode} as {self.signing.kid!r}: list the site's key in the "
                    "node's auth.keys for the dispatch topic, or match site.signing")
        else:
            return
        self.warned.add(node)
        log.warning("node %s will refuse the site's orders: %s", node, hint)

    def on_refusal(self, node: str, reason: str | None) -> None:
        """A node refused an order: warn once per node when it was for authentication."""
        hint = self.hint(reason)
        if hint is None or node in self.warned:
            return
        self.warned.add(node)
        log.warning("node %s refused the site's order (%s): %s", node, reason, hint)
