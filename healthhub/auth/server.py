"""The OAuth 2.0 authorization server, built on authlib's grants and endpoints.

- ``client_credentials`` for hospital systems and bulk clients (SMART Backend Services,
  https://hl7.org/fhir/smart-app-launch/backend-services.html): the client authenticates with a
  JWT assertion signed by a key of its registered JWK Set (``private_key_jwt``: RS384 or ES384,
  ``aud`` = the token endpoint, ``exp`` at most five minutes out, each ``jti`` once) or, when
  registered with a secret, with ``client_secret_basic``;
- ``authorization_code`` with PKCE S256 and ``refresh_token`` for SMART apps (:mod:`.code_flow`);
- token introspection (RFC 7662) and revocation (RFC 7009).

Access tokens are the hub's signed JWTs (:mod:`.tokens`). A client gets at most the scopes it
was registered with; what it asks beyond them is left out of the answer's ``scope``.
"""
from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError, InvalidRequestError, InvalidScopeError
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import g
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..clock import aware, utcnow
from .models import AssertionJti, OAuthClient, RefreshToken, RevokedToken
from .registry import hash_secret
from .scopes import Grant, ScopeError
from .tokens import LIFETIME, TokenService

#: Client assertion algorithms (SMART Backend Services: RS384 and ES384).
ASSERTION_ALGS = ("RS384", "ES384")
#: Longest a client assertion may live (SMART: ``exp`` no more than five minutes in the future).
ASSERTION_MAX_LIFETIME = 300
AUTH_METHODS = ("client_secret_basic", "private_key_jwt")


class Client(ClientMixin):
    """authlib's view of a registered client."""

    def __init__(self, row: OAuthClient) -> None:
        self.row = row
        self.client_id = row.client_id

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.row.redirect_uris or []
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return self.narrow(scope or "").text

    def narrow(self, scope: str) -> Grant:
        """The requested scopes the registration covers (ScopeError for a malformed one)."""
        return Grant.parse(self.row.scope).narrow(Grant.parse(scope))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in (self.row.redirect_uris or [])  # exact match, no prefix or pattern

    def check_client_secret(self, client_secret: str) -> bool:
        return self.row.secret_hash is not None and hmac.compare_digest(self.row.secret_hash,
                                                                        hash_secret(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.row.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and self.row.grant_type == "authorization_code"

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == "refresh_token":
            return self.row.grant_type == "authorization_code"
        return grant_type == self.row.grant_type


def session() -> Session:
    """The database session of the current auth request (opened by the view)."""
    return g.auth_session


def query_client(client_id: Any) -> Client | None:
    if not isinstance(client_id, str) or len(client_id) > 64:
        return None
    row = session().get(OAuthClient, client_id)
    return Client(row) if row is not None and not row.disabled else None


class PrivateKeyJwt(JWTBearerClientAssertion):
    """``private_key_jwt`` as SMART Backend Services profiles it."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, token_url: str) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.audience = token_url

    def get_audiences(self) -> list[str]:
        return [self.audience]

    def resolve_client_public_key(self, client: Client) -> KeySet:
        if not client.row.jwks:
            raise InvalidClientError(description="The client has no registered JWK Set")
        return KeySet.import_key_set(client.row.jwks)

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            alg = jws.extract_compact(assertion.encode("ascii")).protected.get("alg")
        except (JoseError, ValueError, UnicodeError):
            raise InvalidClientError(description="The client assertion is not a JWS") from None
        if alg not in ASSERTION_ALGS:
            raise InvalidClientError(description=f"Client assertions must be signed with {' or '.join(ASSERTION_ALGS)}")
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(ASSERTION_ALGS))
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description=f"The client assertion is invalid: {exc}") from None
        claims: dict[str, Any] = dict(token.claims)
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise InvalidClientError(description="The client assertion has no numeric 'exp'")
        if exp > time.time() + ASSERTION_MAX_LIFETIME + self.leeway:
            raise InvalidClientError(description="The client assertion's 'exp' is more than five minutes away")
        self.verify_claims(token.claims)
        return claims

    def validate_jti(self, claims: Any, jti: Any) -> bool:
        """Each assertion once: the ``jti`` is stored until the assertion expires; a replay hits
        the primary key (also across processes)."""
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            return False
        db = session()
        expires = datetime.fromtimestamp(float(claims["exp"]), tz=utcnow().tzinfo) + timedelta(seconds=self.leeway)
        try:
            with db.begin_nested():
                db.add(AssertionJti(client_id=str(claims["sub"]), jti=jti, expires_at=expires))
        except IntegrityError:
            return False
        return True


class BackendGrant(ClientCredentialsGrant):
    """``client_credentials``: system scopes for a registered backend; ``scope`` is required."""

    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)

    def validate_token_request(self) -> None:
        super().validate_token_request()
        if not self.request.payload.scope:
            raise InvalidScopeError(description="scope is required (SMART Backend Services)")
        grant = self.request.client.narrow(self.request.payload.scope)
        if not grant.resource_scopes and not grant.other:
            raise InvalidScopeError(description="None of the requested scopes is registered for this client")


@dataclass
class IssuedToken:
    """A token presented to introspection or revocation: an access token (its claims, even
    when expired or revoked) or a refresh token (its row)."""

    kind: str
    claims: dict[str, Any]
    refresh: RefreshToken | None = None
    revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return self.claims.get("client_id") == client.get_client_id()

    def get_client_id(self) -> str:
        return str(self.claims.get("client_id", ""))

    def is_expired(self) -> bool:
        exp = self.claims.get("exp")
        return not isinstance(exp, int | float) or exp < time.time()

    def is_revoked(self) -> bool:
        return self.revoked


class TokenLookup:
    """Shared by introspection and revocation: what a token string is."""

    tokens: TokenService

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        if token_string.count(".") == 2:
            return self._access(token_string)
        row = session().get(RefreshToken, hash_secret(token_string)) if len(token_string) < 200 else None
        if row is None:
            return None
        claims = {"client_id": row.client_id, "sub": row.username, "scope": row.scope,
                  "exp": aware(row.expires_at).timestamp(), "iat": aware(row.issued_at).timestamp()}
        if row.patient:
            claims["patient"] = row.patient
        return IssuedToken("refresh_token", claims, row, revoked=row.revoked or row.used_at is not None)

    def _access(self, token_string: str) -> IssuedToken | None:
        # Signature and issuer here; expiry by IssuedToken; revocation from the database itself
        # (this request's transaction), not the per-process list.
        claims = self.tokens.claims_if_signed(token_string)
        if claims is None:
            return None
        revoked = session().get(RevokedToken, str(claims.get("jti", ""))) is not None
        return IssuedToken("access_token", claims, revoked=revoked)


class Introspection(TokenLookup, IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = [*AUTH_METHODS, "none"]

    def __init__(self, server: Any, tokens: TokenService) -> None:
        super().__init__(server)
        self.tokens = tokens

    def check_permission(self, token: IssuedToken, client: Client, request: Any) -> bool:
        return token.check_client(client)  # a client introspects its own tokens

    def introspect_token(self, token: IssuedToken) -> dict[str, Any]:
        keep = ("scope", "client_id", "sub", "exp", "iat", "iss", "aud", "jti", "patient", "fhirUser")
        out = {k: token.claims[k] for k in keep if k in token.claims}
        out.update({"active": True, "token_type": "Bearer" if token.kind == "access_token" else "refresh_token"})
        out["username"] = str(token.claims.get("sub", ""))
        return out


class Revocation(TokenLookup, RevocationEndpoint):
    CLIENT_AUTH_METHODS = [*AUTH_METHODS, "none"]

    def __init__(self, server: Any, tokens: TokenService, revoke_access: Any) -> None:
        super().__init__(server)
        self.tokens = tokens
        self.revoke_access = revoke_access

    def revoke_token(self, token: IssuedToken, request: Any) -> None:
        if token.kind == "access_token":
            exp = token.claims.get("exp")
            if isinstance(exp, int | float):
                self.revoke_access(str(token.claims.get("jti", "")), datetime.fromtimestamp(exp, tz=utcnow().tzinfo))
        elif token.refresh is not None:
            token.refresh.revoked = True


def build_server(app: Any, tokens: TokenService, token_url: str, revoke_access: Any) -> AuthorizationServer:
    """The authlib server with the hub's grants, client authentication and endpoints."""
    server = AuthorizationServer(app, query_client=query_client, save_token=lambda token, request: None)

    def validate_requested_scope(scope: str | None) -> None:
        try:
            Grant.parse(scope or "")
        except ScopeError as exc:
            raise InvalidScopeError(description=str(exc)) from None

    server.validate_requested_scope = validate_requested_scope

    def generate(grant_type: str, client: Client, user: Any = None, scope: str | None = None,
                 expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:
        if grant_type != "client_credentials":
            raise InvalidRequestError(description=f"{grant_type} tokens come from the code flow")
        granted = client.narrow(scope or "").text
        extra = {"organization": client.row.organization} if client.row.organization else None
        access = tokens.issue(client_id=client.get_client_id(), subject=client.get_client_id(), scope=granted,
                              extra=extra)
        return {"access_token": access, "token_type": "Bearer", "expires_in": LIFETIME, "scope": granted}

    server.register_token_generator("default", generate)
    server.register_client_auth_method("private_key_jwt", PrivateKeyJwt(token_url))
    server.register_grant(BackendGrant)
    server.register_endpoint(Introspection(server, tokens))
    server.register_endpoint(Revocation(server, tokens, revoke_access))
    return server
