"""Admission tokens of the waiting rooms, and the proof of work a join may have to carry.

An admitted ticket is given a JWT (HS256) bound to its user and sale that expires with its
admission window; a purchase in a sale with a waiting room carries it, and any worker or host
checks it with the shared key alone, without a lookup. The key is
``FLASHFLOW_ADMISSION_SECRET``, or else one drawn once and kept in PostgreSQL
(:func:`actors.places_sql.signing_key`), the same for every process.

A join's proof of work (``FLASHFLOW_LINE_PROOF_BITS`` above 0) is a ``nonce`` such that
sha256("{saleId}:{userId}:{nonce}") starts with that many zero bits: about 2^bits hashes to
find, one to check. Bound to the sale and the user, a proof buys one ticket, so a thousand
tickets cost a thousand proofs.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt

from actors import Ledger, Sale, Ticket
from actors.places_sql import signing_key

from .settings import Settings

#: The audience of an admission token: it is good for nothing else.
AUDIENCE = "flashflow:admission"
#: The name the drawn key is kept under in PostgreSQL.
KEY_NAME = "admission"
#: The longest nonce a proof of work may carry.
NONCE_MAX = 64


@dataclass(frozen=True, slots=True)
class Admissions:
    """Mints and checks admission tokens with one key."""

    key: bytes

    def mint(self, sale: Sale, ticket: Ticket, position: int,
             admitted_at: datetime) -> tuple[str, datetime]:
        """The token of an admitted ticket, and when it expires: the admission window after
        ``admitted_at``."""
        assert sale.waiting_room is not None
        expires = admitted_at + timedelta(seconds=sale.waiting_room.window_s)
        claims: dict[str, Any] = {
            "sub": ticket.user_id, "aud": AUDIENCE, "sale": str(sale.id),
            "ticket": str(ticket.id), "position": position,
            "iat": int(admitted_at.timestamp()), "exp": int(expires.timestamp())}
        return jwt.encode(claims, self.key, algorithm="HS256"), expires

    def admits(self, token: str | None, sale_id: uuid.UUID, user_id: str) -> bool:
        """Whether ``token`` is a valid, unexpired admission of ``user_id`` to the sale."""
        if not token:
            return False
        try:
            claims = jwt.decode(token, self.key, algorithms=["HS256"], audience=AUDIENCE,
                                options={"require": ["exp", "sub", "sale"]})
        except jwt.PyJWTError:
            return False
        return claims["sub"] == user_id and claims["sale"] == str(sale_id)


async def load_admissions(settings: Settings, ledger: Ledger) -> Admissions:
    """The admissions of the configured key, or of the one kept in PostgreSQL.

    Raises:
        BackendUnavailable: PostgreSQL is down or too slow (the key is read once, at start).
    """
    if settings.admission_secret:
        return Admissions(settings.admission_secret.encode())
    return Admissions(await ledger.call(signing_key, KEY_NAME, secrets.token_bytes(32)))


def proof_holds(sale_id: uuid.UUID, user_id: str, nonce: str, bits: int) -> bool:
    """Whether sha256("{sale_id}:{user_id}:{nonce}") starts with ``bits`` zero bits."""
    if bits <= 0:
        return True
    digest = hashlib.sha256(f"{sale_id}:{user_id}:{nonce}".encode()).digest()
    return int.from_bytes(digest, "big") >> (256 - bits) == 0


def solve_proof(sale_id: uuid.UUID, user_id: str, bits: int) -> str:
    """A nonce that proves ``bits`` of work for the user's ticket (for load tests and tests;
    the page solves it in a Web Worker)."""
    nonce = 0
    while not proof_holds(sale_id, user_id, str(nonce), bits):
        nonce += 1
    return str(nonce)


__all__ = ["AUDIENCE", "NONCE_MAX", "Admissions", "load_admissions", "proof_holds",
           "solve_proof"]
