"""Who is asking: the buyer a request speaks for, and the client address it comes from.

With a token key set, the buyer is the ``sub`` of the request's one bearer token and a
``userId`` the request names must be the same user; without one, the buyer is the
``userId`` the request names (the original API). The client address is the TCP peer's,
unless that peer is a trusted proxy (:mod:`flashflow.http.proxies`).

Both are read from an :class:`Asking`: the few headers that matter and the peer, taken from
a Quart request or straight from an ASGI scope, so every path answers alike.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from quart import Request

from actors.errors import Forbidden, InvalidInput, Unauthorized

from ..settings import Settings
from ..tokens import TokenVerifier, load_verifier
from . import validation
from .proxies import Network, client_address_from


@dataclass(frozen=True, slots=True)
class Asking:
    """What a request says about who sends it: its TCP peer and the headers read for that."""

    peer: str
    authorization: tuple[str, ...] = ()
    forwarded: tuple[str, ...] = ()
    x_forwarded_for: tuple[str, ...] = ()

    @classmethod
    def of(cls, request: Request) -> Asking:
        """What a Quart request says, read from its ASGI scope as the fast path reads it."""
        return cls.from_asgi(request.scope.get("client"), request.scope["headers"])

    @classmethod
    def from_asgi(cls, client: Any, headers: Iterable[tuple[bytes, bytes]]) -> Asking:
        """What an ASGI scope's ``client`` and (lower-case) ``headers`` say."""
        found: dict[bytes, list[str]] = {AUTHORIZATION: [], FORWARDED: [], X_FORWARDED_FOR: []}
        for name, value in headers:
            values = found.get(name)
            if values is not None:
                values.append(value.decode("latin1"))
        return cls(client[0] if client else "unknown", tuple(found[AUTHORIZATION]),
                   tuple(found[FORWARDED]), tuple(found[X_FORWARDED_FOR]))


AUTHORIZATION, FORWARDED, X_FORWARDED_FOR = b"authorization", b"forwarded", b"x-forwarded-for"


@dataclass(frozen=True, slots=True)
class Auth:
    """What the HTTP front checks about who is asking, built once from the settings."""

    verifier: TokenVerifier | None
    trusted_proxies: tuple[Network, ...]
    metrics_token: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        """Load the token key named by the settings.

        Raises:
            SettingsError: the public key file cannot be used.
        """
        return cls(load_verifier(settings), settings.trusted_proxies, settings.metrics_token)

    def identify(self, asking: Asking, claimed: str | None) -> str:
        """The buyer a request speaks for; ``claimed`` is the ``userId`` it names, if any.

        Raises:
            Unauthorized: authentication is on and there is no single valid bearer token.
            Forbidden: ``claimed`` is another user than the token's subject.
            InvalidInput: authentication is off and no valid ``userId`` is named.
        """
        if self.verifier is None:
            return validation.user_id(claimed)
        subject = self.verifier.subject(bearer_token(asking.authorization))
        try:
            buyer = validation.user_id(subject)
        except InvalidInput:
            raise Unauthorized("The token's subject is not a valid userId.") from None
        if claimed is not None and validation.user_id(claimed) != buyer:
            raise Forbidden()
        return buyer

    def client_address(self, asking: Asking) -> str:
        """The address rate limits count the request against (an IPv6 client by its /64)."""
        return client_address_from(asking.peer, list(asking.forwarded),
                                   list(asking.x_forwarded_for), self.trusted_proxies)

    def check_metrics(self, asking: Asking) -> None:
        """Let a scrape through when no metrics token is set or it carries that token.

        Raises:
            Unauthorized: a metrics token is set and the request does not carry it.
        """
        if self.metrics_token is None:
            return
        presented = bearer_token(asking.authorization)
        if not hmac.compare_digest(presented.encode(), self.metrics_token.encode()):
            raise Unauthorized("A valid metrics token is required.")


def bearer_token(values: tuple[str, ...] | list[str]) -> str:
    """The token of a request's one ``Authorization: Bearer`` header (``values``: all of them).

    Raises:
        Unauthorized: no such header, several, or another scheme.
    """
    if len(values) != 1:
        raise Unauthorized("Send exactly one Authorization: Bearer header."
                           if values else "A bearer token is required.")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("The Authorization header must be: Bearer <token>.")
    return token
