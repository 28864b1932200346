"""Bearer tokens (JWT): the verifier the HTTP front uses, and minting for demos and load tests.

The key decides the algorithm: an HS256 secret accepts only HS256, an RSA public key only
RS256, a P-256 public key only ES256. ``none`` is never accepted, and a token signed with
an HMAC algorithm cannot pass against a public key (the HS/RS confusion), since the list
of algorithms never comes from the token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from actors.errors import Unauthorized

from .settings import Settings, SettingsError

#: Claims every token must carry.
REQUIRED_CLAIMS = ("exp", "sub")


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Checks a token's signature and claims against one key."""

    key: Any
    algorithms: tuple[str, ...]
    issuer: str | None
    audience: str | None
    leeway_s: float

    def subject(self, token: str) -> Any:
        """The ``sub`` claim of a valid token, as the token holds it.

        Raises:
            Unauthorized: the token is malformed, forged, expired, not yet valid, for
                another issuer or audience, or lacks ``exp`` or ``sub``.
        """
        return self.claims(token)["sub"]

    def has_scope(self, token: str, scope: str) -> bool:
        """Whether a valid token's ``scope`` claim (space-separated, RFC 8693) holds ``scope``.

        Raises:
            Unauthorized: as :meth:`subject`.
        """
        granted = self.claims(token).get("scope", "")
        return isinstance(granted, str) and scope in granted.split()

    def claims(self, token: str) -> dict[str, Any]:
        """Every claim of a valid token.

        Raises:
            Unauthorized: as :meth:`subject`.
        """
        try:
            claims = jwt.decode(token, self.key, algorithms=list(self.algorithms),
                                issuer=self.issuer, audience=self.audience,
                                leeway=self.leeway_s, options={"require": list(REQUIRED_CLAIMS)})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The token is not valid yet.") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise Unauthorized("The token was not issued for this service.") from None
        except jwt.PyJWTError:
            raise Unauthorized("The token is not valid.") from None
        return claims


def load_verifier(settings: Settings) -> TokenVerifier | None:
    """The verifier the settings describe, or None when no key is set.

    Raises:
        SettingsError: the public key file cannot be read or holds an unsupported key.
    """
    if settings.auth_jwt_secret is not None:
        key: Any = settings.auth_jwt_secret
        algorithms: tuple[str, ...] = ("HS256",)
    elif settings.auth_jwt_public_key_file is not None:
        key, algorithms = _public_key(settings)
    else:
        return None
    return TokenVerifier(key, algorithms, settings.auth_jwt_issuer, settings.auth_jwt_audience,
                         settings.auth_jwt_leeway_s)


def _public_key(settings: Settings) -> tuple[Any, tuple[str, ...]]:
    name = "FLASHFLOW_AUTH_JWT_PUBLIC_KEY_FILE"
    path = settings.auth_jwt_public_key_file
    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise SettingsError(f"{name}={str(path)!r}: {exc.strerror or exc}") from None
    except ValueError:
        raise SettingsError(f"{name}={str(path)!r}: not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise SettingsError(f"{name}={str(path)!r}: an RSA key needs 2048 bits or more")
        return key, ("RS256",)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, ("ES256",)
    raise SettingsError(f"{name}={str(path)!r}: only RSA (RS256) and P-256 (ES256) keys are "
                        "supported")


def mint(settings: Settings, user_id: str, ttl_s: float = 3600.0,
         now: float | None = None, scope: str | None = None) -> str:
    """A token for ``user_id`` signed with the HS256 secret, with the configured iss and aud.

    Raises:
        SettingsError: no HS256 secret is set (a public key cannot sign).
    """
    if settings.auth_jwt_secret is None:
        raise SettingsError("FLASHFLOW_AUTH_JWT_SECRET is not set: only an HS256 secret "
                            "can sign tokens here")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": user_id, "iat": issued, "exp": issued + int(ttl_s)}
    if settings.auth_jwt_issuer is not None:
        claims["iss"] = settings.auth_jwt_issuer
    if settings.auth_jwt_audience is not None:
        claims["aud"] = settings.auth_jwt_audience
    if scope is not None:
        claims["scope"] = scope
    return jwt.encode(claims, settings.auth_jwt_secret, algorithm="HS256")
