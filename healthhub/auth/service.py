"""The authorization pieces of one app: keys, token service, revocation list, authlib server."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Flask, current_app

from ..config import Config
from ..db import Database
from .code_flow import S256Only, SmartCodeGrant, SmartRefreshGrant, UserTokens
from .keys import KeyRing
from .revocation import RevocationList
from .server import build_server
from .tokens import TokenService


@dataclass
class AuthService:
    config: Config
    keys: KeyRing
    tokens: TokenService
    revocations: RevocationList
    server: Any

    @property
    def token_url(self) -> str:
        return f"{self.config.base_url}/auth/token"


def init_app(app: Flask, config: Config, db: Database) -> AuthService:
    keys = KeyRing(config.signing_key)
    revocations = RevocationList(db, config.redis_url)
    tokens = TokenService(keys, issuer=config.base_url, audience=config.fhir_base, revoked=revocations)

    def revoke_access(jti: str, expires_at: datetime) -> None:
        from .server import session
        revocations.revoke(session(), jti, expires_at)

    service = AuthService(config, keys, tokens, revocations, None)
    server = build_server(app, tokens, service.token_url, revoke_access)
    server.user_tokens = UserTokens(tokens, config.fhir_base)
    server.revoke_access = revoke_access
    server.register_grant(SmartCodeGrant, [S256Only(required=True)])
    server.register_grant(SmartRefreshGrant)
    service.server = server
    app.extensions["healthhub.auth"] = service
    return service


def auth_service() -> AuthService:
    service: AuthService = current_app.extensions["healthhub.auth"]
    return service
