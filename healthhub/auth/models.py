"""Tables of the authorization server: registered clients and users.

A client is an application or a hospital system (RFC 6749 §2); a user is a person who logs in
(a clinician, a public-health official, an administrator). Secrets and passwords are stored
only as hashes.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..storage.models import Base, BigIntKey, JsonDocument


class OAuthClient(Base):
    """A registered OAuth client (``healthhub client create``)."""

    __tablename__ = "oauth_clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    #: ``client_credentials`` or ``authorization_code`` (which brings ``refresh_token``).
    grant_type: Mapped[str] = mapped_column(String(32), nullable=False)
    #: ``client_secret_basic``, ``private_key_jwt`` or ``none`` (a public app: PKCE only).
    auth_method: Mapped[str] = mapped_column(String(32), nullable=False)
    #: The most the client may ask for (space-separated SMART scopes).
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    #: SHA-256 of the secret (the secret is 256 random bits: a slow hash adds nothing).
    secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: Public keys of a ``private_key_jwt`` client (a JWK Set).
    jwks: Mapped[Any | None] = mapped_column(JsonDocument, nullable=True)
    redirect_uris: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    #: ``Organization/{id}`` of a hospital system: what it writes carries it as its source.
    organization: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class User(Base):
    """A person who logs in at ``/auth/authorize`` (``healthhub user create``)."""

    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: A salted, deliberately slow hash (werkzeug's scrypt).
    password_hash: Mapped[str] = mapped_column(Text, nullable=False)
    #: ``clinician``, ``public-health`` or ``admin``.
    role: Mapped[str] = mapped_column(String(32), nullable=False)
    #: The user's FHIR resource (``Practitioner/{id}``): the ``fhirUser`` claim.
    fhir_user: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class RevokedToken(Base):
    """An access token revoked before its expiry (RFC 7009): refused until ``expires_at``.
    Web processes keep the live list in memory and re-read it every few seconds."""

    __tablename__ = "oauth_revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)


class AssertionJti(Base):
    """The ``jti`` of each client assertion accepted (SMART Backend Services): a replay of the
    same assertion hits the primary key. Rows are kept until the assertion expires."""

    __tablename__ = "oauth_assertion_jtis"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)


class AuthorizationCode(Base):
    """An authorization code (one use, ten minutes), stored as its SHA-256. ``token_jtis`` lists
    what was issued from it: a second use revokes those (RFC 6749 §4.1.2)."""

    __tablename__ = "oauth_authorization_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), nullable=False)
    username: Mapped[str] = mapped_column(String(128), nullable=False)
    redirect_uri: Mapped[str] = mapped_column(Text, nullable=False)
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    patient: Mapped[str | None] = mapped_column(String(64), nullable=True)
    nonce: Mapped[str | None] = mapped_column(Text, nullable=True)
    code_challenge: Mapped[str] = mapped_column(String(128), nullable=False)
    code_challenge_method: Mapped[str] = mapped_column(String(8), nullable=False)
    auth_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    token_jtis: Mapped[Any] = mapped_column(JsonDocument, nullable=False, default=list)
    refresh_family: Mapped[str | None] = mapped_column(String(64), nullable=True)


class RefreshToken(Base):
    """A refresh token (``offline_access``), stored as its SHA-256. Each use rotates it: the
    answer carries a new one and this one is spent; presenting a spent one again revokes the
    whole ``family`` (OAuth 2.0 Security BCP, refresh token rotation)."""

    __tablename__ = "oauth_refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    client_id: Mapped[str] = mapped_column(String(64), nullable=False)
    username: Mapped[str] = mapped_column(String(128), nullable=False)
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    patient: Mapped[str | None] = mapped_column(String(64), nullable=True)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: The access token issued together with this refresh token (revoked with the family).
    access_jti: Mapped[str | None] = mapped_column(String(64), nullable=True)


class LoginFailure(Base):
    """A failed password at the login page: recent rows per user and per address throttle
    guessing (shared by every web process)."""

    __tablename__ = "oauth_login_failures"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    address: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
