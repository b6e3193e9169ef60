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

from ..storage.models import Base, JsonDocument


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
