"""Access tokens: signed JWTs in the RFC 9068 profile, checked without a database read.

A token carries ``iss`` (the hub's base URL), ``aud`` (the FHIR base), ``sub`` (the user, or the
client for a backend), ``client_id``, ``scope``, ``jti``, ``iat``/``exp`` (one hour), and in SMART
context ``patient`` and ``fhirUser``. The header says ``typ: at+jwt`` and names the key
(``kid``). Verification accepts only the hub's own algorithm (no ``none``, no HS256 "signed"
with the public key: algorithm confusion), a known ``kid``, this issuer and audience, a live
``exp``; a revoked ``jti`` (RFC 7009 revocation) is refused through the ``revoked`` callback,
which answers from memory.
https://www.rfc-editor.org/rfc/rfc9068, https://hl7.org/fhir/smart-app-launch/app-launch.html
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError

from .keys import ALG, KeyRing
from .scopes import Grant, ScopeError

LIFETIME = 3600
#: Clock skew tolerated on ``exp``/``iat``/``nbf`` (seconds).
LEEWAY = 30
#: Longest token accepted, in bytes: a few scopes and ids need far less; a huge token is an
#: attack on the parser.
MAX_TOKEN_BYTES = 8192


class InvalidToken(Exception):
    """The bearer token cannot be used (the reason goes into ``WWW-Authenticate``)."""


@dataclass(frozen=True)
class AccessToken:
    """A verified access token."""

    claims: dict[str, Any]
    grant: Grant = field(compare=False)

    @property
    def subject(self) -> str:
        return str(self.claims.get("sub", ""))

    @property
    def client_id(self) -> str:
        return str(self.claims.get("client_id", ""))

    @property
    def jti(self) -> str:
        return str(self.claims.get("jti", ""))

    @property
    def patient(self) -> str | None:
        value = self.claims.get("patient")
        return value if isinstance(value, str) and value else None

    @property
    def fhir_user(self) -> str | None:
        value = self.claims.get("fhirUser")
        return value if isinstance(value, str) and value else None


class TokenService:
    """Issue and verify the hub's access tokens."""

    def __init__(self, keys: KeyRing, issuer: str, audience: str,
                 revoked: Callable[[str], bool] = lambda jti: False,
                 now: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.revoked = revoked
        self.now = now

    def issue(self, *, client_id: str, subject: str, scope: str, patient: str | None = None,
              fhir_user: str | None = None, lifetime: int = LIFETIME, extra: dict[str, Any] | None = None,
              jti: str | None = None) -> str:
        iat = int(self.now())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "sub": subject, "client_id": client_id,
            "scope": scope, "jti": jti or uuid.uuid4().hex, "iat": iat, "exp": iat + lifetime,
        }
        if patient:
            claims["patient"] = patient
        if fhir_user:
            claims["fhirUser"] = fhir_user
        if extra:
            claims.update(extra)
        key = self.keys.current()
        return jwt.encode({"alg": ALG, "typ": "at+jwt", "kid": key.thumbprint()}, claims, key, algorithms=[ALG])

    def id_token(self, *, client_id: str, subject: str, auth_time: int, nonce: str | None = None,
                 fhir_user: str | None = None, lifetime: int = LIFETIME) -> str:
        """An OpenID Connect ID token for the app (``aud`` is the client; ``fhirUser`` the user's
        FHIR resource URL, as SMART's ``fhirUser`` scope asks).
        https://openid.net/specs/openid-connect-core-1_0.html#IDToken"""
        iat = int(self.now())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": subject, "aud": client_id, "iat": iat,
                                  "exp": iat + lifetime, "auth_time": auth_time}
        if nonce:
            claims["nonce"] = nonce
        if fhir_user:
            claims["fhirUser"] = fhir_user
        key = self.keys.current()
        return jwt.encode({"alg": ALG, "typ": "JWT", "kid": key.thumbprint()}, claims, key, algorithms=[ALG])

    def verify(self, token: str) -> AccessToken:
        """The token's claims, or InvalidToken saying why not."""
        if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise InvalidToken("The access token is malformed")
        try:
            header = jws.extract_compact(token.encode("ascii")).protected  # unverified: to pick the key
        except (JoseError, ValueError, UnicodeError):
            raise InvalidToken("The access token is malformed") from None
        if header.get("alg") != ALG:
            raise InvalidToken(f"Tokens of this server are signed with {ALG}")
        if header.get("typ") not in ("at+jwt", "application/at+jwt"):
            raise InvalidToken("Not an access token (typ must be at+jwt)")
        key = self.keys.verification_key(header.get("kid"))
        if key is None:
            raise InvalidToken("The access token was not signed by this server")
        try:
            decoded = jwt.decode(token, key, algorithms=[ALG])
        except (JoseError, ValueError):
            raise InvalidToken("The access token's signature is invalid") from None
        claims = decoded.claims
        self._check_claims(claims)
        try:
            grant = Grant.parse(str(claims.get("scope", "")), patient=claims.get("patient"))
        except ScopeError:
            raise InvalidToken("The access token's scope is invalid") from None
        return AccessToken(claims, grant)

    def claims_if_signed(self, token: str) -> dict[str, Any] | None:
        """The claims of a token this server signed, whatever its times or revocation (for
        introspection and revocation, which answer "inactive" or do nothing for those); None
        for anything else."""
        if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            return None
        try:
            header = jws.extract_compact(token.encode("ascii")).protected
            key = self.keys.verification_key(header.get("kid")) if header.get("alg") == ALG else None
            if key is None:
                return None
            claims = jwt.decode(token, key, algorithms=[ALG]).claims
        except (JoseError, ValueError, UnicodeError):
            return None
        if claims.get("iss") != self.issuer:
            return None
        return dict(claims)

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = self.now()
        for name in ("iss", "aud", "sub", "client_id", "jti", "iat", "exp", "scope"):
            if name not in claims:
                raise InvalidToken(f"The access token has no {name!r} claim")
        for name in ("iss", "sub", "client_id", "jti", "scope", "patient", "fhirUser", "organization"):
            # This server writes these as strings; another JSON type (a forged token, a bug) went on
            # into SQL: a "patient" list made an export kick-off fail with a 500 (test_hostile_input).
            if name in claims and not isinstance(claims[name], str):
                raise InvalidToken(f"The access token's {name!r} claim is not a string")
        if claims["iss"] != self.issuer:
            raise InvalidToken("The access token was issued by another server")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if self.audience not in audiences:
            raise InvalidToken("The access token is for another audience")
        exp, iat = claims["exp"], claims["iat"]
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise InvalidToken("The access token's times are not numbers")
        if exp + LEEWAY < now:
            raise InvalidToken("The access token has expired")
        if iat - LEEWAY > now or (isinstance(claims.get("nbf"), int | float) and claims["nbf"] - LEEWAY > now):
            raise InvalidToken("The access token is not valid yet")
        if self.revoked(str(claims["jti"])):
            raise InvalidToken("The access token has been revoked")
