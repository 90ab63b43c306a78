"""OAuth 2.0 bearer tokens (JWT access tokens) checked against the identity provider's keys:
signature, issuer, audience, expiry and scope, and the device a token may be bound to.

The keys come from the provider's JWKS, fetched once and cached; a token signed with a key the
cache does not know makes one refetch, at most every `refetch_interval_s`, so a key rotated at
the provider is picked up without a restart and a stream of forged key ids cannot make us fetch
on every request.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from libs.common.errors import Forbidden, KeysUnavailable, Unauthenticated

# Asymmetric only: HS* would let anyone who knows a shared secret (or a public key used as one)
# sign tokens, and `none` signs nothing at all.
ALGORITHMS = ("RS256", "ES256")
DEVICE_CLAIM = "device_id"
REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for: its subject, the client it was issued to, its scopes,
    and the one device it is bound to (None: a fleet token, any device); for a user's token its
    user name (preferred_username) and realm roles (realm_access.roles)."""

    subject: str
    client_id: str | None
    scopes: frozenset[str]
    device_id: str | None = None
    username: str | None = None
    roles: frozenset[str] = frozenset()


def jwks_url_of(issuer: str) -> str:
    """Keycloak's JWKS address for a realm (its issuer)."""
    return f"{issuer.rstrip('/')}/protocol/openid-connect/certs"


class TokenVerifier:
    """Checks one access token at a time; share one instance, so the key cache is shared."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        required_scope: str | None,
        jwks_url: str,
        verify: ssl.SSLContext | bool = True,
        leeway_s: float = 30.0,
        refetch_interval_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.required_scope = required_scope
        self.jwks_url = jwks_url
        self.verify = verify
        self.leeway_s = leeway_s
        self.refetch_interval_s = refetch_interval_s
        self.timeout_s = timeout_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        # Why the last fetch failed (None: it worked); until the next may be made, a token of
        # an unknown key is answered with it (try again later), not refused as forged.
        self._fetch_error: KeysUnavailable | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def verify_token(self, token: str) -> Principal:
        """The token's principal; Unauthenticated (401) or Forbidden (403) with the reason.
        With `required_scope` None no scope is asked for (the admin API checks roles instead)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"malformed token: {exc}") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise Unauthenticated(
                f"signing algorithm {algorithm!r} is not accepted (only {', '.join(ALGORITHMS)})"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("token names no signing key (kid)")
        key = await self._key(kid)
        if key.algorithm_name != algorithm:
            raise Unauthenticated(f"key {kid} signs with {key.algorithm_name}, not {algorithm}")
        claims = self._decode(token, key, algorithm)
        return self._principal(claims)

    def _decode(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"token is not for audience {self.audience}") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"token is not from issuer {self.issuer}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token has no {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        scope = claims.get("scope", "")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        if self.required_scope is not None and self.required_scope not in scopes:
            raise Forbidden(f"token lacks scope {self.required_scope}", scope=self.required_scope)
        device = claims.get(DEVICE_CLAIM)
        if device is not None and (not isinstance(device, str) or not device):
            raise Unauthenticated(f"claim {DEVICE_CLAIM} is not a device id")
        client = claims.get("azp", claims.get("client_id"))
        username = claims.get("preferred_username")
        return Principal(
            subject=str(claims["sub"]),
            client_id=client if isinstance(client, str) else None,
            scopes=scopes,
            device_id=device,
            username=username if isinstance(username, str) and username else None,
            roles=realm_roles(claims),
        )

    async def _key(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            # Another request may have fetched while this one waited for the lock.
            if kid not in self._keys and self._may_fetch():
                await self._fetch()
        key = self._keys.get(kid)
        if key is None and self._fetch_error is not None:
            raise self._fetch_error
        if key is None:
            raise Unauthenticated(f"signing key {kid} is not one of the issuer's keys")
        return key

    def _may_fetch(self) -> bool:
        if self._fetched_at is None:
            return True
        return time.monotonic() - self._fetched_at >= self.refetch_interval_s

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        self.fetches += 1
        try:
            self._keys = await self._fetch_keys()
        except KeysUnavailable as exc:
            self._fetch_error = exc
            raise
        self._fetch_error = None

    async def _fetch_keys(self) -> dict[str, jwt.PyJWK]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, verify=self.verify) as http:
                response = await http.get(self.jwks_url)
        except httpx.HTTPError as exc:
            raise KeysUnavailable(
                f"cannot fetch the signing keys at {self.jwks_url}: {exc}"
            ) from exc
        if response.status_code != 200:
            raise KeysUnavailable(
                f"the signing keys at {self.jwks_url} answered {response.status_code}"
            )
        try:
            entries = response.json()["keys"]
        except (ValueError, KeyError, TypeError) as exc:
            raise KeysUnavailable(f"{self.jwks_url} is not a JWKS: {exc}") from exc
        return signing_keys(entries)


def realm_roles(claims: dict[str, Any]) -> frozenset[str]:
    """Keycloak's realm roles of a token (realm_access.roles); none when the claim is absent or
    not a list of strings."""
    access = claims.get("realm_access")
    roles = access.get("roles") if isinstance(access, dict) else None
    if not isinstance(roles, list):
        return frozenset()
    return frozenset(role for role in roles if isinstance(role, str))


def signing_keys(entries: Any) -> dict[str, jwt.PyJWK]:
    """The JWKS's signature keys we accept, by kid; encryption keys and other algorithms are
    left out (Keycloak publishes an RSA-OAEP key beside its RS256 one)."""
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str):
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if key.algorithm_name in ALGORITHMS:
            keys[kid] = key
    return keys
