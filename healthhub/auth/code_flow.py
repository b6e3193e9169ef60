"""SMART App Launch for people: authorization code + PKCE (S256 only), refresh tokens that rotate,
ID tokens, and the scope ceiling of each user role.
https://hl7.org/fhir/smart-app-launch/app-launch.html

- A code is good once, for ten minutes, for the client and redirect URI it was issued to, with
  the verifier of its S256 challenge. A second use revokes what the first one got (RFC 6749
  §4.1.2).
- ``offline_access`` (30 days) or ``online_access`` (12 hours) brings a refresh token. Each use
  spends it and returns a new one of the same family; a spent token presented again revokes the
  family and its last access token (refresh token rotation, OAuth 2.0 Security BCP §4.14).
- What a user gets is the intersection of what the app asked, what the app is registered for,
  what the user's role allows (``ROLE_SCOPES``) and what the user ticked on the consent page.
"""
from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc7636 import CodeChallenge
from sqlalchemy import select, update

from ..clock import aware, utcnow
from .models import AuthorizationCode, RefreshToken, User
from .registry import hash_secret
from .scopes import Grant
from .server import AUTH_METHODS, Client, session
from .tokens import LIFETIME, TokenService

CODE_LIFETIME = timedelta(minutes=10)
OFFLINE_LIFETIME = timedelta(days=30)
ONLINE_LIFETIME = timedelta(hours=12)
_IDENTITY = "openid fhirUser profile offline_access online_access"
#: The most each role may be granted, whatever the app asks (CONTRACT §5 "Roles").
ROLE_SCOPES = {
    "clinician": Grant.parse(f"patient/*.cruds user/*.cruds launch/patient {_IDENTITY}"),
    "public-health": Grant.parse(f"stats.read {_IDENTITY}"),
    "admin": Grant.parse(f"user/AuditEvent.rs {_IDENTITY}"),
}


@dataclass(frozen=True)
class Approval:
    """What the user approved on the consent page (authlib's ``grant_user``)."""

    user: User
    scope: str
    patient: str | None
    auth_time: datetime

    def get_user_id(self) -> str:
        return self.user.username


def ceiling(client: Client, user: User, requested: str) -> Grant:
    """The requested scopes this client and this user's role both allow."""
    role = ROLE_SCOPES.get(user.role, Grant((), frozenset()))
    return role.narrow(client.narrow(requested))


class S256Only(CodeChallenge):
    """PKCE is required of every client, with S256 (SMART App Launch 2.x)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge and code_challenge_method=S256")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class UserTokens:
    """Issue an app's tokens for a user: access (with patient/fhirUser), ID, refresh."""

    def __init__(self, tokens: TokenService, fhir_base: str) -> None:
        self.tokens = tokens
        self.fhir_base = fhir_base

    def issue(self, client: Client, user: User, scope: str, patient: str | None, auth_time: datetime,
              nonce: str | None = None, family: str | None = None) -> tuple[dict[str, Any], str, str | None]:
        """(token response, access jti, refresh family or None)."""
        grant = Grant.parse(scope)
        fhir_user = f"{self.fhir_base}/{user.fhir_user}" if user.fhir_user and grant.has("fhirUser") else None
        jti = uuid.uuid4().hex
        access = self.tokens.issue(client_id=client.get_client_id(), subject=user.username, scope=scope,
                                   patient=patient, fhir_user=fhir_user,
                                   jti=jti)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": LIFETIME,
                                "scope": scope}
        if patient and grant.has("launch/patient"):
            body["patient"] = patient
            body["need_patient_banner"] = True
        if grant.has("openid"):
            body["id_token"] = self.tokens.id_token(client_id=client.get_client_id(), subject=user.username,
                                                    auth_time=int(aware(auth_time).timestamp()), nonce=nonce,
                                                    fhir_user=fhir_user)
        lifetime = OFFLINE_LIFETIME if grant.has("offline_access") else ONLINE_LIFETIME \
            if grant.has("online_access") else None
        if lifetime is None:
            return body, jti, None
        refresh = secrets.token_urlsafe(32)
        family = family or uuid.uuid4().hex
        now = utcnow()
        session().add(RefreshToken(token_hash=hash_secret(refresh), family=family, client_id=client.get_client_id(),
                                   username=user.username, scope=scope, patient=patient, issued_at=now,
                                   expires_at=now + lifetime, used_at=None, revoked=False, access_jti=jti))
        body["refresh_token"] = refresh
        return body, jti, family


class _CodeView:
    """authlib's view of a stored authorization code."""

    def __init__(self, row: AuthorizationCode) -> None:
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope


class SmartCodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [*AUTH_METHODS, "none"]

    def __init__(self, request: Any, server: Any) -> None:
        super().__init__(request, server)
        self.user_tokens: UserTokens = server.user_tokens
        self.revoke_access = server.revoke_access

    def save_authorization_code(self, code: str, request: Any) -> None:
        approval: Approval = request.user
        data = request.payload.data
        session().add(AuthorizationCode(
            code_hash=hash_secret(code), client_id=request.client.get_client_id(), username=approval.user.username,
            redirect_uri=request.payload.redirect_uri, scope=approval.scope, patient=approval.patient,
            nonce=data.get("nonce"), code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"], auth_time=approval.auth_time,
            expires_at=utcnow() + CODE_LIFETIME, used_at=None, token_jtis=[], refresh_family=None))

    def query_authorization_code(self, code: str, client: Client) -> _CodeView | None:
        row = session().get(AuthorizationCode, hash_secret(code)) if len(code) < 200 else None
        if row is None or row.client_id != client.get_client_id():
            return None
        if row.used_at is not None:
            self._revoke_issued(row)  # a replayed code: whatever the first use got is void
            return None
        if aware(row.expires_at) < utcnow():
            return None
        return _CodeView(row)

    def delete_authorization_code(self, authorization_code: _CodeView) -> None:
        authorization_code.row.used_at = utcnow()  # kept, to recognise a replay

    def authenticate_user(self, authorization_code: _CodeView) -> User | None:
        user = session().get(User, authorization_code.row.username)
        return user if user is not None and not user.disabled else None

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        code: _CodeView = self.request.authorization_code
        user = self.authenticate_user(code)
        if user is None:
            raise InvalidGrantError("The user of this code is no longer active")
        row = code.row
        body, jti, family = self.user_tokens.issue(self.request.client, user, row.scope, row.patient,
                                                   aware(row.auth_time), nonce=row.nonce)
        row.used_at = utcnow()
        row.token_jtis = [jti]
        row.refresh_family = family
        return 200, body, self.TOKEN_RESPONSE_HEADER

    def _revoke_issued(self, row: AuthorizationCode) -> None:
        expires = utcnow() + timedelta(seconds=LIFETIME + 60)
        for jti in row.token_jtis or []:
            self.revoke_access(jti, expires)
        if row.refresh_family:
            revoke_family(row.refresh_family, self.revoke_access)


class SmartRefreshGrant(RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [*AUTH_METHODS, "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def __init__(self, request: Any, server: Any) -> None:
        super().__init__(request, server)
        self.user_tokens: UserTokens = server.user_tokens
        self.revoke_access = server.revoke_access

    def authenticate_refresh_token(self, refresh_token: str) -> _RefreshView | None:
        row = session().get(RefreshToken, hash_secret(refresh_token)) if len(refresh_token) < 200 else None
        if row is None or row.revoked:
            return None
        if row.used_at is not None:
            revoke_family(row.family, self.revoke_access)  # a spent token again: stolen, or replayed
            return None
        if aware(row.expires_at) < utcnow():
            return None
        return _RefreshView(row)

    def authenticate_user(self, refresh_token: _RefreshView) -> User | None:
        user = session().get(User, refresh_token.row.username)
        return user if user is not None and not user.disabled else None

    def revoke_old_credential(self, refresh_token: _RefreshView) -> None:
        refresh_token.row.used_at = utcnow()

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        old: _RefreshView = self.request.refresh_token
        user = self.authenticate_user(old)
        if user is None:
            raise InvalidGrantError("The user of this token is no longer active")
        scope = self.request.payload.scope or old.row.scope  # a narrower scope may be asked (RFC 6749 §6)
        self.revoke_old_credential(old)
        body, _, _ = self.user_tokens.issue(self.request.client, user, scope, old.row.patient, aware(old.row.issued_at),
                                            family=old.row.family)
        return 200, body, self.TOKEN_RESPONSE_HEADER


class _RefreshView:
    def __init__(self, row: RefreshToken) -> None:
        self.row = row

    def check_client(self, client: Client) -> bool:
        return self.row.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.row.scope

    def is_expired(self) -> bool:
        return aware(self.row.expires_at) < utcnow()

    def is_revoked(self) -> bool:
        return self.row.revoked or self.row.used_at is not None


def revoke_family(family: str, revoke_access: Any) -> None:
    """Revoke every refresh token of a family and the access tokens issued with them."""
    db = session()
    expires = utcnow() + timedelta(seconds=LIFETIME + 60)
    for jti in db.scalars(select(RefreshToken.access_jti).where(RefreshToken.family == family)):
        if jti:
            revoke_access(jti, expires)
    db.execute(update(RefreshToken).where(RefreshToken.family == family).values(revoked=True))
