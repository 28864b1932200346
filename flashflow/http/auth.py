"""Who is asking: the buyer a request speaks for, and the client address it comes from.

With a token key set, the buyer is the ``sub`` of the request's one bearer token and a
``userId`` the request names must be the same user; without one, the buyer is the
``userId`` the request names (the original API). The client address is the TCP peer's,
unless that peer is a trusted proxy (:mod:`flashflow.http.proxies`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from quart import Request

from actors.errors import Forbidden, InvalidInput, Unauthorized

from ..settings import Settings
from ..tokens import TokenVerifier, load_verifier
from . import validation
from .proxies import Network, client_address_from


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

    def identify(self, request: Request, claimed: str | None) -> str:
        """The buyer ``request`` speaks for; ``claimed`` is the ``userId`` it names, if any.

        Raises:
            Unauthorized: authentication is on and there is no single valid bearer token.
            Forbidden: ``claimed`` is another user than the token's subject.
            InvalidInput: authentication is off and no valid ``userId`` is named.
        """
        if self.verifier is None:
            return validation.user_id(claimed)
        subject = self.verifier.subject(bearer_token(request))
        try:
            buyer = validation.user_id(subject)
        except InvalidInput:
            raise Unauthorized("The token's subject is not a valid userId.") from None
        if claimed is not None and validation.user_id(claimed) != buyer:
            raise Forbidden()
        return buyer

    def client_address(self, request: Request) -> str:
        """The address rate limits count the request against (an IPv6 client by its /64)."""
        client = request.scope.get("client")
        peer = client[0] if client else "unknown"
        return client_address_from(peer, request.headers.getlist("Forwarded"),
                                   request.headers.getlist("X-Forwarded-For"),
                                   self.trusted_proxies)

    def check_metrics(self, request: Request) -> None:
        """Let a scrape through when no metrics token is set or it carries that token.

        Raises:
            Unauthorized: a metrics token is set and the request does not carry it.
        """
        if self.metrics_token is None:
            return
        presented = bearer_token(request)
        if not hmac.compare_digest(presented.encode(), self.metrics_token.encode()):
            raise Unauthorized("A valid metrics token is required.")


def bearer_token(request: Request) -> str:
    """The token of the request's one ``Authorization: Bearer`` header.

    Raises:
        Unauthorized: no such header, several, or another scheme.
    """
    values = request.headers.getlist("Authorization")
    if len(values) != 1:
        raise Unauthorized("Send exactly one Authorization: Bearer header."
                           if values else "A bearer token is required.")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("The Authorization header must be: Bearer <token>.")
    return token
