"""Registering OAuth clients and users (``healthhub client create``, ``healthhub user create``).

What a client may ask for is fixed here, by its kind (SMART App Launch 2.x):

- a **backend** (``client_credentials``, SMART Backend Services) gets ``system/`` scopes (and
  ``stats.read``); it authenticates with a JWT signed by a key of its JWK Set
  (``private_key_jwt``, RS384 or ES384) or, without a JWK Set, with a secret
  (``client_secret_basic``). A hospital system is bound to its ``Organization``;
- an **app** (``authorization_code``) gets ``patient/`` and ``user/`` scopes and the launch and
  identity scopes; without a JWK Set it is a public client (no secret: PKCE protects its code),
  with one it is confidential. It needs at least one exact redirect URI.
https://hl7.org/fhir/smart-app-launch/backend-services.html, https://hl7.org/fhir/smart-app-launch/app-launch.html
"""
from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy.orm import Session
from werkzeug.security import generate_password_hash

from ..resources import ID_PATTERN
from .models import OAuthClient, User
from .scopes import Grant, ScopeError

GRANTS = ("client_credentials", "authorization_code")
ROLES = ("clinician", "public-health", "admin")
_BACKEND_OTHER = frozenset({"stats.read"})
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")
MIN_PASSWORD = 10
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class RegistrationError(ValueError):
    """A client or user that cannot be registered as asked (the message says why)."""


@dataclass(frozen=True)
class NewClient:
    client_id: str
    client_secret: str | None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_client(session: Session, *, name: str, grant: str, scope: str, now: datetime,
                  jwks: Any = None, redirect_uris: tuple[str, ...] = (),
                  organization: str | None = None) -> NewClient:
    name = name.strip()
    if not name or len(name) > 200:
        raise RegistrationError("--name must be 1 to 200 characters")
    if grant not in GRANTS:
        raise RegistrationError(f"--grant must be one of {', '.join(GRANTS)}")
    granted = _scopes(scope)
    if grant == "client_credentials":
        _check_backend(granted, redirect_uris)
    else:
        _check_app(granted, redirect_uris, organization)
    keys = _check_jwks(jwks) if jwks is not None else None
    org = _organization(organization) if organization else None
    secret = None
    if keys is not None:
        method = "private_key_jwt"
    elif grant == "client_credentials":
        method, secret = "client_secret_basic", secrets.token_urlsafe(32)
    else:
        method = "none"
    client = OAuthClient(client_id=str(uuid.uuid4()), name=name, grant_type=grant, auth_method=method,
                         scope=granted.text, secret_hash=hash_secret(secret) if secret else None, jwks=keys,
                         redirect_uris=list(redirect_uris), organization=org, created_at=now, disabled=False)
    session.add(client)
    session.flush()
    return NewClient(client.client_id, secret)


def create_user(session: Session, *, username: str, password: str, role: str, now: datetime,
                practitioner: str | None = None) -> User:
    if not _USERNAME.match(username):
        raise RegistrationError("--username must be 1 to 128 letters, digits or . _ @ -")
    if role not in ROLES:
        raise RegistrationError(f"--role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise RegistrationError(f"--password must be at least {MIN_PASSWORD} characters")
    if session.get(User, username) is not None:
        raise RegistrationError(f"user {username!r} exists already")
    fhir_user = None
    if practitioner:
        fhir_user = practitioner if practitioner.startswith("Practitioner/") else f"Practitioner/{practitioner}"
        if not ID_PATTERN.match(fhir_user.split("/", 1)[1]):
            raise RegistrationError(f"--practitioner {practitioner!r} is not Practitioner/<id>")
    user = User(username=username, password_hash=generate_password_hash(password), role=role,
                fhir_user=fhir_user, created_at=now, disabled=False)
    session.add(user)
    session.flush()
    return user


def _scopes(scope: str) -> Grant:
    try:
        granted = Grant.parse(scope)
    except ScopeError as exc:
        raise RegistrationError(f"--scope: {exc}") from None
    if not granted.resource_scopes and not granted.other:
        raise RegistrationError("--scope is empty")
    return granted


def _check_backend(granted: Grant, redirect_uris: tuple[str, ...]) -> None:
    wrong = [s.text for s in granted.resource_scopes if s.context != "system"]
    wrong += sorted(granted.other - _BACKEND_OTHER)
    if wrong:
        raise RegistrationError(f"a client_credentials client takes system/ scopes (and stats.read), "
                                f"not {' '.join(wrong)}")
    if redirect_uris:
        raise RegistrationError("a client_credentials client has no redirect URI")


def _check_app(granted: Grant, redirect_uris: tuple[str, ...], organization: str | None) -> None:
    wrong = [s.text for s in granted.resource_scopes if s.context == "system"]
    if wrong:
        raise RegistrationError(f"an authorization_code client takes patient/ and user/ scopes, not {' '.join(wrong)}")
    if not redirect_uris:
        raise RegistrationError("an authorization_code client needs at least one --redirect-uri")
    for uri in redirect_uris:
        parts = urlsplit(uri)
        local = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if parts.fragment or not parts.netloc or not (parts.scheme == "https" or (parts.scheme == "http" and local)):
            raise RegistrationError(f"--redirect-uri {uri!r} must be an absolute https URL (http only for "
                                    "localhost) without a fragment")
    if organization:
        raise RegistrationError("--organization is for client_credentials (hospital system) clients")


def _organization(ref: str) -> str:
    org = ref if ref.startswith("Organization/") else f"Organization/{ref}"
    if not ID_PATTERN.match(org.split("/", 1)[1]):
        raise RegistrationError(f"--organization {ref!r} is not Organization/<id>")
    return org


def _check_jwks(jwks: Any) -> dict[str, Any]:
    """A JWK Set of public signing keys usable for RS384 (RSA ≥ 2048 bits) or ES384 (P-384),
    each with a ``kid`` (SMART Backend Services names the key in the assertion header)."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise RegistrationError("the JWKS file must hold a JWK Set: {\"keys\": [ … ]}")
    for i, jwk in enumerate(keys):
        if not isinstance(jwk, dict):
            raise RegistrationError(f"key {i} of the JWK Set is not an object")
        if _PRIVATE_MEMBERS & set(jwk):
            raise RegistrationError(f"key {i} of the JWK Set holds private key material: register public keys only")
        if not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            raise RegistrationError(f"key {i} of the JWK Set has no kid")
        try:
            if jwk.get("kty") == "RSA":
                n = jwk.get("n")
                if not isinstance(n, str) or _bits(n) < 2048:
                    raise RegistrationError(f"key {i} of the JWK Set is an RSA key shorter than 2048 bits")
                RSAKey.import_key(jwk)
            elif jwk.get("kty") == "EC":
                if jwk.get("crv") != "P-384":
                    raise RegistrationError(f"key {i} of the JWK Set is an EC key on {jwk.get('crv')}, not P-384 (ES384)")
                ECKey.import_key(jwk)
            else:
                raise RegistrationError(f"key {i} of the JWK Set is {jwk.get('kty')!r}: RSA (RS384) or EC P-384 (ES384)")
        except (JoseError, ValueError, TypeError) as exc:
            if isinstance(exc, RegistrationError):
                raise
            raise RegistrationError(f"key {i} of the JWK Set is not a valid key: {exc}") from None
    return {"keys": keys}


def _bits(b64url: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(b64url + "=" * (-len(b64url) % 4))
    except ValueError:
        return 0
    return int.from_bytes(raw, "big").bit_length()


def disable_client(session: Session, client_id: str) -> None:
    """Refuse the client from now on: no new tokens; its refresh tokens are revoked (access
    tokens already issued run out within the hour)."""
    from sqlalchemy import update

    from .models import RefreshToken

    client = session.get(OAuthClient, client_id)
    if client is None:
        raise RegistrationError(f"no client {client_id!r}")
    client.disabled = True
    session.execute(update(RefreshToken).where(RefreshToken.client_id == client_id).values(revoked=True))


def disable_user(session: Session, username: str) -> None:
    """Refuse the user's sign-in and refresh tokens from now on (access tokens already issued
    run out within the hour)."""
    from sqlalchemy import update

    from .models import RefreshToken

    user = session.get(User, username)
    if user is None:
        raise RegistrationError(f"no user {username!r}")
    user.disabled = True
    session.execute(update(RefreshToken).where(RefreshToken.username == username).values(revoked=True))
