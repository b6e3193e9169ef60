"""CORS for SMART apps that run in a browser (https://fetch.spec.whatwg.org/#http-cors-protocol).

An origin may call the API when it is the origin of a redirect URI of an enabled client that
signs users in (the SMART app's own page: ``https://app.example.org/callback`` →
``https://app.example.org``), or listed in ``HEALTHHUB_CORS_ORIGINS``. A request that carries an
access token is answered to its own client's origins only: a token leaked to another site's
script is not readable there. Preflights (``OPTIONS`` with ``Access-Control-Request-Method``) are
answered before authentication, as browsers send them without credentials.

Only the data endpoints take part (FHIR, statistics, Bulk Data status and files, the token,
revocation and discovery endpoints); the sign-in pages are navigations, and hospital-system
endpoints (ingest, metrics) are never called from browsers. No ``Allow-Credentials``: the API
authenticates with bearer tokens, never cookies.

The origins are read from the database and kept for ``CACHE_SECONDS`` in each process, so a
newly registered app works everywhere within that time (a cache of shared state, not state).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from flask import Flask, Response, g, request
from sqlalchemy import select

from ..auth.models import OAuthClient as Client
from ..config import Config
from ..db import Database
from ..outcome import FhirError, Issue

CACHE_SECONDS = 30.0
PREFIXES = ("/fhir", "/stats/", "/bulk/", "/auth/token", "/auth/revoke", "/auth/jwks", "/.well-known/")
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = ("Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist, "
                 "If-Modified-Since, X-Request-ID")
EXPOSE_HEADERS = ("Location, Content-Location, ETag, Last-Modified, X-Progress, Retry-After, Expires, "
                  "X-Request-ID, WWW-Authenticate")


def origin_of(uri: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URI, lower-cased (RFC 6454)."""
    parts = urlsplit(uri.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}{port}"


class Origins:
    """Allowed origins by client, from the clients table, refreshed every ``CACHE_SECONDS``."""

    def __init__(self, db: Database, configured: Iterable[str]) -> None:
        self.db = db
        self.configured = frozenset(filter(None, (origin_of(o) for o in configured)))
        self._lock = threading.Lock()
        self._by_client: dict[str, frozenset[str]] = {}
        self._any: frozenset[str] = frozenset()
        self._loaded_at = float("-inf")

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._loaded_at < CACHE_SECONDS:
                return
            by_client: dict[str, frozenset[str]] = {}
            with self.db.read_transaction() as session:
                for client_id, uris in session.execute(select(Client.client_id, Client.redirect_uris)
                                                       .where(Client.disabled.is_(False))):
                    found = frozenset(filter(None, (origin_of(u) for u in uris or [] if isinstance(u, str))))
                    if found:
                        by_client[client_id] = found
            self._by_client = by_client
            self._any = frozenset().union(*by_client.values()) if by_client else frozenset()
            self._loaded_at = time.monotonic()

    def allowed(self, origin: str, client_id: str | None) -> bool:
        if origin in self.configured:
            return True
        self._refresh()
        if client_id is not None:
            return origin in self._by_client.get(client_id, frozenset())
        return origin in self._any


def init_app(app: Flask, config: Config, db: Database) -> None:
    origins = app.extensions["healthhub.cors"] = Origins(db, config.cors_origins)

    @app.before_request
    def _preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = _origin()
        if origin is None or not origins.allowed(origin, None):
            raise FhirError(403, [Issue("error", "forbidden", "This origin may not call the API from a browser; "
                                        "register the app's redirect URI, or list the origin in "
                                        "HEALTHHUB_CORS_ORIGINS")])
        return Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS, "Access-Control-Max-Age": "600", "Vary": "Origin"})

    @app.after_request
    def _actual(response: Response) -> Response:
        if not request.path.startswith(PREFIXES) or "Access-Control-Allow-Origin" in response.headers:
            return response
        response.vary.add("Origin")
        origin = _origin()
        token = g.get("access_token")
        if origin is not None and origins.allowed(origin, getattr(token, "client_id", None)):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response


def _origin() -> str | None:
    raw = request.headers.get("Origin")
    return origin_of(raw) if raw and request.path.startswith(PREFIXES) else None

