"""Who may command the site: the signature, freshness and one-request-per-id checks.

The aggregator signs a site dispatch or a site award as it signs a node dispatch
(``auth.mode``, ``auth.keys``: docs/security.md); the site refuses an unsigned, badly signed,
stale or future-dated one, and an id used before for other terms. A signed repeat with the same
terms (a retry, possibly re-stamped, however old) is a duplicate: acted on once, answered with
the event's ack as it stands. Ids are remembered for the
coordinator's life and with its events across restarts.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

from gridtao.config.agent import AuthConfig
from gridtao.security.auth import AuthRejected, Verifier, check_fresh

__all__ = ["Duplicate", "SiteGuard"]


class Duplicate(Exception):
    """The request was seen before with the same terms."""


class SiteGuard:
    """Checks a site command before anything acts on it (see the module docstring)."""

    def __init__(self, auth: AuthConfig, verifier: Verifier | None) -> None:
        self._auth = auth
        self._verifier = verifier
        self._terms: dict[str, Hashable] = {}

    def check(self, payload: bytes, ident: str, issued_at: float | None, terms: Hashable,
              wall: float) -> None:
        """Raise :class:`AuthRejected` (with the reason) or :class:`Duplicate`; else the
        request is new and remembered."""
        if self._verifier is not None:
            try:
                body: Any = json.loads(payload)
            except ValueError:
                body = {}
            self._verifier.authenticate("dispatch", body if isinstance(body, dict) else {})
        # A signed repeat of a request seen before is a duplicate however old (the sender is
        # owed the event's ack as it stands, as a node answers one): freshness judges only
        # what would act.
        seen = self._terms.get(ident)
        if seen is not None:
            if seen != terms:
                raise AuthRejected("replayed", f"event id {ident!r} was used for another "
                                   "request")
            raise Duplicate(ident)
        if self._verifier is not None:
            check_fresh(issued_at, "issued_at", wall, max_age_s=self._auth.freshness_s,
                        max_future_s=self._auth.max_future_s)
        self._terms[ident] = terms

    def authentic(self, body: dict[str, Any]) -> bool:
        """Whether a decoded message is signed by a key the nodes trust (always, unsigned
        mode): what the site follows of the aggregator's own dispatches to every node."""
        if self._verifier is None:
            return True
        try:
            self._verifier.authenticate("dispatch", body)
        except AuthRejected:
            return False
        return True

    def remember(self, ident: str, terms: Hashable | None = None) -> None:
        """An id taken back from the retained record, with the terms it was asked with when
        the record kept them: a retry of that request is a duplicate, any other with the id is
        refused (every one, when the terms are not known)."""
        self._terms.setdefault(ident, terms if terms is not None else ("restored", ident))
