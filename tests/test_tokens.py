"""Token keys and minting: the key decides the algorithm, and ``flashflow token`` signs."""

from __future__ import annotations

import time

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from actors.errors import Unauthorized
from flashflow.cli import main
from flashflow.settings import Settings, SettingsError
from flashflow.tokens import load_verifier, mint

SECRET = "cli-secret-for-hs256-0123456789abcdef"


def pem(private_key) -> bytes:
    """The public half of ``private_key`` as PEM."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_the_token_command_prints_a_token_the_server_accepts():
    """``flashflow token USER --ttl`` prints an HS256 token for the NFC form of USER."""
    env = {"FLASHFLOW_AUTH_JWT_SECRET": SECRET, "FLASHFLOW_AUTH_JWT_AUDIENCE": "shop"}
    result = CliRunner().invoke(main, ["token", "jose\u0301", "--ttl", "60"], env=env)
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    verifier = load_verifier(Settings.from_env(env))
    assert verifier.subject(token) == "jos\u00e9"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="shop")
    assert claims["exp"] - claims["iat"] == 60


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["token", "alice"], {}, "FLASHFLOW_AUTH_JWT_SECRET is not set"),
    (["token", "\u202eadmin"], {"FLASHFLOW_AUTH_JWT_SECRET": SECRET}, "invisible"),
    (["token", "ab"], {"FLASHFLOW_AUTH_JWT_SECRET": SECRET}, "at least 3"),
])
def test_the_token_command_refuses_what_it_cannot_sign(args, env, needle):
    """No secret, or a user the userId rule refuses: a usage error saying why, no token."""
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2 and needle in result.output, result.output


def test_a_public_key_cannot_mint():
    """Minting needs the HS256 secret: with only a public key it is a SettingsError."""
    with pytest.raises(SettingsError, match="FLASHFLOW_AUTH_JWT_SECRET"):
        mint(Settings(), "alice")


def test_the_key_kind_decides_the_algorithms(tmp_path):
    """An HS256 secret allows HS256 only, an RSA key RS256 only, a P-256 key ES256 only."""
    rsa_file, ec_file = tmp_path / "rsa.pem", tmp_path / "ec.pem"
    rsa_file.write_bytes(pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    ec_file.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    assert load_verifier(Settings(auth_jwt_secret=SECRET)).algorithms == ("HS256",)
    assert load_verifier(Settings(auth_jwt_public_key_file=rsa_file)).algorithms == ("RS256",)
    assert load_verifier(Settings(auth_jwt_public_key_file=ec_file)).algorithms == ("ES256",)
    assert load_verifier(Settings()) is None


@pytest.mark.parametrize("content", [b"not a key", None, "p384", "rsa1024"])
def test_an_unusable_public_key_file_is_a_settings_error(tmp_path, content):
    """A missing, non-PEM, P-384 or short RSA key file stops start-up, naming the variable."""
    path = tmp_path / "key.pem"
    if content == "p384":
        content = pem(ec.generate_private_key(ec.SECP384R1()))
    elif content == "rsa1024":
        content = pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SettingsError, match="FLASHFLOW_AUTH_JWT_PUBLIC_KEY_FILE"):
        load_verifier(Settings(auth_jwt_public_key_file=path))


def test_leeway_lets_a_just_expired_token_through():
    """A token expired less than the leeway ago still passes; past the leeway it is refused."""
    settings = Settings(auth_jwt_secret=SECRET, auth_jwt_leeway_s=30)
    verifier = load_verifier(settings)
    assert verifier.subject(mint(settings, "alice", ttl_s=1, now=time.time() - 10)) == "alice"
    with pytest.raises(Unauthorized, match="expired"):
        verifier.subject(mint(settings, "alice", ttl_s=1, now=time.time() - 60))


def test_serve_warns_once_that_buyers_are_not_authenticated(caplog):
    """Without a key, ``serve`` logs one warning before it starts serving."""
    from flashflow import cli

    with caplog.at_level("WARNING", logger="flashflow"):
        cli._check_auth(Settings())
    warnings = [r for r in caplog.records if "not authenticated" in r.getMessage()]
    assert len(warnings) == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="flashflow"):
        cli._check_auth(Settings(auth_jwt_secret=SECRET))
    assert not [r for r in caplog.records if "not authenticated" in r.getMessage()]
