"""libs.common.auth.TokenVerifier with keys made here: the JWKS is served by a real tiny HTTP
server of the test (our code's fetching and caching are what is tested), the tokens signed
with those keys or forged in the ways an attacker would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from libs.common.auth import Principal, TokenVerifier, signing_keys
from libs.common.errors import Forbidden, KeysUnavailable, Unauthenticated

ISSUER = "http://127.0.0.1:8180/realms/test"
AUDIENCE = "ingest-api"
SCOPE = "readings:write"


class Keys:
    """Signing keys by kid, and the JWKS of the ones published."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}
        self.published: list[str] = []

    def add(self, kid: str, kind: str = "RS256", publish: bool = True) -> None:
        if kind == "RS256":
            self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.private[kid] = ec.generate_private_key(ec.SECP256R1())
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            key = self.private[kid]
            algorithm = jwt.get_algorithm_by_name(
                "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
            )
            entry = json.loads(algorithm.to_jwk(key.public_key()))
            keys.append(entry | {"kid": kid, "use": "sig"})
        return {"keys": keys}


class JwksServer:
    """A real HTTP server answering GET with the keys' JWKS; counts the fetches."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.fetches = 0
        self.status = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps(owner.keys.jwks()).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/certs"


@pytest.fixture
def keys() -> Keys:
    keys = Keys()
    keys.add("k1")
    return keys


@pytest.fixture
def jwks(keys: Keys) -> Iterator[JwksServer]:
    server = JwksServer(keys)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def verifier(jwks: JwksServer, refetch_interval_s: float = 30.0) -> TokenVerifier:
    return TokenVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        required_scope=SCOPE,
        jwks_url=jwks.url,
        refetch_interval_s=refetch_interval_s,
    )


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": [AUDIENCE, "account"],
        "sub": "service-account-fleet",
        "azp": "fleet-simulator",
        "scope": f"profile {SCOPE}",
        "iat": now,
        "exp": now + 300,
    }
    return {k: v for k, v in (base | changes).items() if v is not None}


def sign(keys: Keys, payload: dict[str, Any], kid: str = "k1", algorithm: str = "RS256") -> str:
    return jwt.encode(payload, keys.private[kid], algorithm=algorithm, headers={"kid": kid})


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_a_fleet_token_gives_its_subject_client_scopes_and_no_device(keys, jwks):
    principal = await verifier(jwks).verify_token(sign(keys, claims()))
    assert principal == Principal(
        subject="service-account-fleet",
        client_id="fleet-simulator",
        scopes=frozenset({"profile", SCOPE}),
        device_id=None,
    )


async def test_a_device_bound_token_names_its_device(keys, jwks):
    principal = await verifier(jwks).verify_token(sign(keys, claims(device_id="dev-7")))
    assert principal.device_id == "dev-7"


async def test_a_device_claim_that_is_not_text_is_refused(keys, jwks):
    with pytest.raises(Unauthenticated, match="device_id"):
        await verifier(jwks).verify_token(sign(keys, claims(device_id=["dev-1", "dev-2"])))


async def test_an_es256_token_verifies_with_its_key(keys, jwks):
    keys.add("e1", "ES256")
    principal = await verifier(jwks).verify_token(sign(keys, claims(), "e1", "ES256"))
    assert principal.subject == "service-account-fleet"


async def test_an_expired_token_is_refused(keys, jwks):
    now = int(time.time())
    with pytest.raises(Unauthenticated, match="expired"):
        await verifier(jwks).verify_token(sign(keys, claims(iat=now - 600, exp=now - 31)))


async def test_a_token_expired_within_the_leeway_still_verifies(keys, jwks):
    now = int(time.time())
    assert await verifier(jwks).verify_token(sign(keys, claims(iat=now - 600, exp=now - 20)))


async def test_a_token_not_valid_yet_is_refused(keys, jwks):
    with pytest.raises(Unauthenticated, match="not valid yet"):
        await verifier(jwks).verify_token(sign(keys, claims(nbf=int(time.time()) + 120)))


async def test_a_token_without_expiry_is_refused(keys, jwks):
    with pytest.raises(Unauthenticated, match="exp"):
        await verifier(jwks).verify_token(sign(keys, claims(exp=None)))


async def test_another_issuer_s_token_is_refused(keys, jwks):
    with pytest.raises(Unauthenticated, match="issuer"):
        await verifier(jwks).verify_token(sign(keys, claims(iss="http://evil.example/realms/x")))


async def test_a_token_for_another_audience_is_refused(keys, jwks):
    with pytest.raises(Unauthenticated, match="audience ingest-api"):
        await verifier(jwks).verify_token(sign(keys, claims(aud="account")))


async def test_a_token_without_the_scope_is_forbidden_naming_the_scope(keys, jwks):
    with pytest.raises(Forbidden) as refused:
        await verifier(jwks).verify_token(sign(keys, claims(scope="profile email")))
    assert refused.value.scope == SCOPE
    with pytest.raises(Forbidden):
        await verifier(jwks).verify_token(sign(keys, claims(scope=None)))


async def test_a_scope_is_a_whole_word_not_a_prefix(keys, jwks):
    with pytest.raises(Forbidden):
        await verifier(jwks).verify_token(sign(keys, claims(scope="readings:writer")))


async def test_an_unsigned_alg_none_token_is_refused(keys, jwks):
    token = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{b64(claims())}."
    with pytest.raises(Unauthenticated, match="'none' is not accepted"):
        await verifier(jwks).verify_token(token)


async def test_an_hs256_token_signed_with_the_public_key_is_refused(keys, jwks):
    """The classic confusion: the RSA public key (which anyone has) used as an HMAC secret."""
    public_pem = (
        keys.private["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # By hand: PyJWT itself refuses to sign with a PEM key as an HMAC secret.
    signed = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'})}.{b64(claims())}"
    mac = hmac.new(public_pem, signed.encode(), hashlib.sha256).digest()
    token = f"{signed}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(Unauthenticated, match="'HS256' is not accepted"):
        await verifier(jwks).verify_token(token)


async def test_a_token_whose_payload_was_changed_is_refused(keys, jwks):
    header, _, signature = sign(keys, claims(device_id="dev-1")).split(".")
    forged = f"{header}.{b64(claims(device_id='dev-2'))}.{signature}"
    with pytest.raises(Unauthenticated, match="signature"):
        await verifier(jwks).verify_token(forged)


async def test_a_token_of_a_key_the_issuer_does_not_publish_is_refused(keys, jwks):
    keys.add("stranger", publish=False)
    with pytest.raises(Unauthenticated, match="stranger is not one of the issuer's keys"):
        await verifier(jwks).verify_token(sign(keys, claims(), "stranger"))


async def test_a_token_signed_by_another_key_under_a_published_kid_is_refused(keys, jwks):
    keys.add("other", publish=False)
    token = jwt.encode(claims(), keys.private["other"], algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(Unauthenticated, match="signature"):
        await verifier(jwks).verify_token(token)


async def test_garbage_is_refused_as_malformed(jwks):
    with pytest.raises(Unauthenticated, match="malformed"):
        await verifier(jwks).verify_token("not-a-token")


async def test_the_keys_are_fetched_once_and_cached(keys, jwks):
    check = verifier(jwks)
    for _ in range(5):
        await check.verify_token(sign(keys, claims()))
    assert jwks.fetches == 1


async def test_a_rotated_key_is_fetched_once_then_unknown_kids_wait_for_the_interval(keys, jwks):
    check = verifier(jwks, refetch_interval_s=0.5)
    await check.verify_token(sign(keys, claims()))
    # The provider rotates: k2 is published after the first fetch.
    keys.add("k2")
    time.sleep(0.5)
    assert await check.verify_token(sign(keys, claims(), "k2"))
    assert jwks.fetches == 2
    # A burst of forged key ids within the interval fetches nothing more; after it, one does.
    keys.add("forged", publish=False)
    for _ in range(10):
        with pytest.raises(Unauthenticated, match="not one of the issuer's keys"):
            await check.verify_token(sign(keys, claims(), "forged"))
    assert jwks.fetches == 2
    time.sleep(0.5)
    for _ in range(3):
        with pytest.raises(Unauthenticated, match="not one of the issuer's keys"):
            await check.verify_token(sign(keys, claims(), "forged"))
    assert jwks.fetches == check.fetches == 3


async def test_an_unreachable_jwks_is_unavailable_not_a_forged_token(keys, jwks):
    jwks.status = 503
    with pytest.raises(KeysUnavailable):
        await verifier(jwks).verify_token(sign(keys, claims()))
    assert KeysUnavailable.retriable


def test_encryption_keys_and_other_algorithms_are_left_out_of_the_signing_keys(keys):
    published = keys.jwks()["keys"]
    encryption = published[0] | {"kid": "enc", "use": "enc", "alg": "RSA-OAEP"}
    hmac = {"kty": "oct", "kid": "oct", "k": "c2VjcmV0", "alg": "HS256"}
    assert set(signing_keys([*published, encryption, hmac, "junk"])) == {"k1"}
